package maps

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

func TestCheckPrefix(t *testing.T) {
	for prefix, ok := range map[string]bool{
		"": true, "{shardmap}": true, "app:{x}": true, "{x}:y": true, "a{b}c}": true,
		"shardmap": false, "{}x": false, "{x": false, "x}{": false, "}{x": false,
	} {
		err := CheckPrefix(prefix, true)
		if (err == nil) != ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("CheckPrefix(%q, cluster) = %v, want ok %v", prefix, err, ok)
		}
		if err := CheckPrefix(prefix, false); err != nil {
			t.Errorf("CheckPrefix(%q, not cluster) = %v", prefix, err)
		}
	}
}

// TestReplicaWait: with WithReplicaWait each assignment write is followed by
// WAIT on its connection; too few replicas fail it with a ReplicaWaitError
// (the write stays on the primary), enough make it succeed.
func TestReplicaWait(t *testing.T) {
	ctx := context.Background()
	s, r := newTestStore(t)
	alone := s.WithReplicaWait(1, 50*time.Millisecond)
	id, err := alone.Set(ctx, Assignment{"alice", "shard1"})
	var we *ReplicaWaitError
	if !errors.As(err, &we) || we.Want != 1 || we.Got != 0 || id == "" {
		t.Fatalf("Set with no replica = %q, %v; want a ReplicaWaitError and the ID", id, err)
	}
	if sh, ok, _ := s.Get(ctx, "alice"); !ok || sh != "shard1" {
		t.Errorf("the write is on the primary: %q %v", sh, ok)
	}
	if _, _, err := alone.Del(ctx, "alice"); !errors.As(err, &we) {
		t.Errorf("Del with no replica: %v", err)
	}
	var be *BatchError
	if _, err := alone.Import(ctx, []Assignment{{"a", "s"}, {"b", "s"}}, 1, nil); !errors.As(err, &be) || !errors.As(err, &we) || be.Done != 2 {
		t.Errorf("Import with no replica: %v", err)
	}
	if _, err := s.Set(ctx, Assignment{"carol", "shard1"}); err != nil {
		t.Errorf("the store without the wait: %v", err)
	}

	replica := testenv.StartRedis(t, "--replicaof", "127.0.0.1", fmt.Sprint(r.Port))
	testenv.WaitFor(t, 10*time.Second, "the replica in sync", func() error {
		info := replica.Client(t).Info(ctx, "replication").Val()
		if !strings.Contains(info, "master_link_status:up") {
			return errors.New(info)
		}
		return nil
	})
	two := s.WithReplicaWait(1, 5*time.Second)
	if _, err := two.Set(ctx, Assignment{"dave", "shard2"}); err != nil {
		t.Fatalf("Set with a replica: %v", err)
	}
	if sh, err := replica.Client(t).HGet(ctx, s.UsersKey(), "dave").Result(); err != nil || sh != "shard2" {
		t.Errorf("acknowledged write not on the replica: %q %v", sh, err)
	}
	if _, found, err := two.Del(ctx, "dave"); err != nil || !found {
		t.Errorf("Del with a replica: %v %v", found, err)
	}
	if _, err := two.Import(ctx, []Assignment{{"e", "s"}, {"f", "s"}}, 1, nil); err != nil {
		t.Errorf("Import with a replica: %v", err)
	}
	if _, err := two.Fill(ctx, []Assignment{{"g", "s"}}, 0, nil); err != nil {
		t.Errorf("Fill with a replica: %v", err)
	}
	if _, err := s.WithReplicaWait(2, 50*time.Millisecond).Set(ctx, Assignment{"h", "s"}); !errors.As(err, &we) || we.Got != 1 {
		t.Errorf("2 replicas asked, 1 there: %v", err)
	}
}

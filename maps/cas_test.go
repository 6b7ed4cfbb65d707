package maps

import (
	"context"
	"errors"
	"testing"
)

func TestSetIfDelIf(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	var ce *ChangedError
	// Absent expected: writes.
	id1, err := s.SetIf(ctx, Assignment{"alice", "shard1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	// Wrong expectation: nothing written, the error says what is there.
	if _, err := s.SetIf(ctx, Assignment{"alice", "shard2"}, ""); !errors.As(err, &ce) || ce.Current != "shard1" || ce.Expected != "" {
		t.Fatalf("absent expected on a set user: %v", err)
	}
	if _, err := s.SetIf(ctx, Assignment{"alice", "shard2"}, "shard3"); !errors.As(err, &ce) || ce.Current != "shard1" {
		t.Fatalf("wrong expected: %v", err)
	}
	id2, err := s.SetIf(ctx, Assignment{"alice", "shard2"}, "shard1")
	if err != nil || CompareIDs(id2, id1) <= 0 {
		t.Fatalf("cas: %s after %s: %v", id2, id1, err)
	}
	// Already the value: no write, the log's last ID.
	if id, err := s.SetIf(ctx, Assignment{"alice", "shard2"}, "shard2"); err != nil || id != id2 {
		t.Fatalf("no-op cas: %s %v", id, err)
	}
	if _, err := s.DelIf(ctx, "alice", "shard1"); !errors.As(err, &ce) || ce.Current != "shard2" {
		t.Fatalf("del wrong expected: %v", err)
	}
	id3, err := s.DelIf(ctx, "alice", "shard2")
	if err != nil || CompareIDs(id3, id2) <= 0 {
		t.Fatalf("del: %s %v", id3, err)
	}
	if _, ok, _ := s.Get(ctx, "alice"); ok {
		t.Fatal("alice still assigned")
	}
	if _, err := s.SetIf(ctx, Assignment{"bob", "bad shard"}, ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad shard: %v", err)
	}
	if _, err := s.SetIf(ctx, Assignment{"bob", "shard1"}, "bad shard"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad expected: %v", err)
	}
	// The log holds exactly the writes, in order.
	if got := replay(t, s); len(got) != 0 {
		t.Fatalf("replay: %v", got)
	}
	changes, _, err := s.ReadLog(ctx, ZeroID, 100, -1)
	if err != nil || len(changes) != 3 || changes[1].Shard != "shard2" || changes[2].Op != OpDel {
		t.Fatalf("log: %+v %v", changes, err)
	}
}

// A fenced compare-and-set writes only while the fence key holds the token.
func TestSetIfFenced(t *testing.T) {
	s, r := newTestStore(t)
	rdb := r.Client(t)
	ctx := context.Background()
	fence := Fence{Key: s.prefix + ":move:owner:x", Token: "me"}
	if err := rdb.Set(ctx, fence.Key, "someone-else", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetIfFenced(ctx, Assignment{"bob", "shard1"}, "", fence); !errors.Is(err, ErrFenced) {
		t.Fatalf("set under another's fence: %v, want ErrFenced", err)
	}
	if _, ok, _ := s.Get(ctx, "bob"); ok {
		t.Fatal("written under another's fence")
	}
	if err := rdb.Set(ctx, fence.Key, "me", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetIfFenced(ctx, Assignment{"bob", "shard1"}, "", fence); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, fence.Key).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DelIfFenced(ctx, "bob", "shard1", fence); !errors.Is(err, ErrFenced) {
		t.Fatalf("del with the fence gone: %v, want ErrFenced", err)
	}
	if sh, _, _ := s.Get(ctx, "bob"); sh != "shard1" {
		t.Fatalf("bob: %q", sh)
	}
}

package maps

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestWaitApplied(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	id, err := s.Set(ctx, Assignment{"alice", "shard1"})
	if err != nil {
		t.Fatal(err)
	}
	var na *NotAppliedError
	err = s.WaitApplied(ctx, id, 50*time.Millisecond)
	if !errors.As(err, &na) || !na.NoSyncer || na.ID != id || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("no syncer: %v, want a NotAppliedError with NoSyncer", err)
	}
	// A live syncer behind, and a standby one that never counts.
	if err := s.ReportSyncer(ctx, SyncerState{Name: "s1", Applied: ZeroID, Seen: time.Now(), Ready: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.ReportSyncer(ctx, SyncerState{Name: "s2", Applied: ZeroID, Seen: time.Now(), Standby: true}); err != nil {
		t.Fatal(err)
	}
	err = s.WaitApplied(ctx, id, 50*time.Millisecond)
	if !errors.As(err, &na) || na.NoSyncer || len(na.Lagging) != 1 || !strings.HasPrefix(na.Lagging[0], "s1 (at 0-0") {
		t.Fatalf("lagging: %v (%+v)", err, na)
	}
	if !strings.Contains(err.Error(), "after 50ms these syncers have not applied it: s1") {
		t.Errorf("message: %v", err)
	}
	// The syncer catches up while we wait.
	go func() {
		time.Sleep(20 * time.Millisecond) // not synchronisation: the wait polls either way
		s.ReportSyncer(context.Background(), SyncerState{Name: "s1", Applied: id, Seen: time.Now(), Ready: true})
	}()
	if err := s.WaitApplied(ctx, id, 10*time.Second); err != nil {
		t.Fatalf("caught up: %v", err)
	}
	// A target of a multi-target syncer lacking it is named with its address.
	if err := s.ReportSyncer(ctx, SyncerState{Name: "s1", Applied: ZeroID, Seen: time.Now(), Ready: true, Targets: []TargetState{
		{Address: "a:1", Applied: id, Ready: true}, {Address: "b:2", Applied: ZeroID, Problem: "down"}}}); err != nil {
		t.Fatal(err)
	}
	err = s.WaitApplied(ctx, id, 50*time.Millisecond)
	if !errors.As(err, &na) || len(na.Lagging) != 1 || na.Lagging[0] != "s1 target b:2 (at 0-0, problem: down)" {
		t.Fatalf("targets: %v", err)
	}
}

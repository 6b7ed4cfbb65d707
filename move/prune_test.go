package move

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

// Prune deletes old finished moves (done, aborted) with their index entry,
// never an unfinished one (running, failed), however old, nor a young one.
func TestPrune(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m := New(f.cfg)
	for _, u := range []string{"done", "aborted", "failed", "running"} {
		f.set(t, f.users, u, "shard0")
	}
	done, err := m.Start(ctx, Request{Subject: "done", To: "shard1"})
	if err != nil {
		t.Fatal(err)
	}
	failed, err := m.Start(ctx, Request{Subject: "failed", To: "shard1", Hooks: Hooks{Copy: "exit 3"}})
	if err == nil || failed == nil || failed.State != StateFailed {
		t.Fatalf("failing move: %+v %v", failed, err)
	}
	aborted, err := m.Start(ctx, Request{Subject: "aborted", To: "shard1", Hooks: Hooks{Copy: "exit 3"}})
	if err == nil || aborted == nil {
		t.Fatalf("move to abort: %+v %v", aborted, err)
	}
	if aborted, err = m.Abort(ctx, aborted.ID); err != nil || aborted.State != StateAborted {
		t.Fatalf("abort: %+v %v", aborted, err)
	}
	cfg := f.cfg
	cfg.crash = func(s Step, after bool) bool { return s == StepCopy && !after }
	if _, err := New(cfg).Start(ctx, Request{Subject: "running", To: "shard1"}); !errors.Is(err, errCrashed) {
		t.Fatalf("crashed move: %v", err)
	}
	ids := func() []string {
		t.Helper()
		l, err := m.List(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, mv := range l {
			out = append(out, mv.Subject)
		}
		return out
	}
	subjects := func(l []Move) []string {
		var out []string
		for _, mv := range l {
			out = append(out, mv.Subject)
		}
		return out
	}
	all := ids()

	// Young: nothing is older than a cutoff before every move.
	if got, err := m.Prune(ctx, done.Created.Add(-time.Hour), false); err != nil || len(got) != 0 {
		t.Fatalf("young moves pruned: %v %v", subjects(got), err)
	}
	// Dry run: lists the old finished ones, deletes nothing.
	future := time.Now().Add(time.Hour)
	got, err := m.Prune(ctx, future, true)
	if err != nil || !slices.Equal(subjects(got), []string{"done", "aborted"}) {
		t.Fatalf("dry run: %v %v, want done and aborted", subjects(got), err)
	}
	if now := ids(); !slices.Equal(now, all) {
		t.Fatalf("dry run deleted: %v, had %v", now, all)
	}
	// A finished move that changed since it was read is kept (the script
	// checks updated).
	stale := *done
	stale.Updated = stale.Updated.Add(-time.Second)
	if ok, err := m.pruneOne(ctx, &stale); ok || err != nil {
		t.Fatalf("stale read pruned: %v %v", ok, err)
	}
	// The crashed move's lease runs out: a stalled running move is still
	// never pruned.
	testenv.WaitFor(t, 10*time.Second, "the crashed move's lease to expire", func() error {
		l, err := m.List(ctx, false)
		if err != nil {
			return err
		}
		for _, mv := range l {
			if mv.Subject == "running" && mv.Driven {
				return errors.New("still driven")
			}
		}
		return nil
	})
	// Old: done and aborted go, record and index entry; running and failed
	// stay, still resumable.
	got, err = m.Prune(ctx, future, false)
	if err != nil || !slices.Equal(subjects(got), []string{"done", "aborted"}) {
		t.Fatalf("prune: %v %v, want done and aborted", subjects(got), err)
	}
	if now := ids(); !slices.Equal(now, []string{"failed", "running"}) {
		t.Fatalf("left after prune: %v, want failed and running", now)
	}
	for _, id := range []string{done.ID, aborted.ID} {
		if _, err := m.Get(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("pruned %s: Get %v, want ErrNotFound", id, err)
		}
		if _, err := f.rdb.ZScore(ctx, m.indexKey(), id).Result(); err == nil {
			t.Errorf("pruned %s still in the index", id)
		}
	}
	if _, err := m.Start(ctx, Request{Subject: "failed", To: "shard2"}); !errors.Is(err, ErrBusy) {
		t.Errorf("failed move's lock after prune: %v, want ErrBusy", err)
	}
	if mv, err := m.Abort(ctx, failed.ID); err != nil || mv.State != StateAborted {
		t.Errorf("abort the failed move after prune: %+v %v", mv, err)
	}
}

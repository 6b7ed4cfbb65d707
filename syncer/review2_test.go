package syncer

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// newFoldLoop is a syncer with one target in the delta layout whose dialer
// hands out two clients of one fake HAProxy (the main one and the delta's),
// reconciled with hash.
func newFoldLoop(t *testing.T, hash map[string]string, deltaMax int) (*Syncer, *fakeStore, *target, *gatedRT, *sync.Mutex, *fakeRuntime) {
	t.Helper()
	st := newFakeStore(hash)
	fake := &fakeRuntime{live: map[string]string{}, delta: map[string]string{}}
	var mu sync.Mutex
	var gate chan struct{}
	dials := 0
	var mainRT *gatedRT
	dial := func(string) (Runtime, error) {
		dials++
		g := &gatedRT{fakeRuntime: fake, mu: &mu, main: dials == 1, gate: &gate, entered: make(chan struct{}, 1)}
		if g.main {
			mainRT = g
		}
		return g, nil
	}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/test.sock"}, MaxDeleteShare: DefaultMaxDeleteShare,
		ClaimTTL: time.Hour, DeltaMax: deltaMax, Logger: slog.New(slog.NewTextHandler(&logCapture{}, nil))}, st, dial)
	if err != nil {
		t.Fatal(err)
	}
	fake.mapName = s.cfg.MapName
	tg := s.targets[0]
	if !tg.holdLease(context.Background()) {
		t.Fatal("no lease")
	}
	if tg.rtDelta == nil {
		t.Fatal("the target has no second client for the delta")
	}
	if err := s.fullSync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, st, tg, mainRT, &mu, fake
}

// readAll publishes what the fake store's log holds past the state.
func readAll(t *testing.T, s *Syncer, st *fakeStore) {
	t.Helper()
	_, applied, _ := s.state.position()
	changes, _, err := st.ReadLog(context.Background(), applied, 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) > 0 {
		if err := s.publish(changes); err != nil {
			t.Fatal(err)
		}
	}
}

// stepAll applies what the target's loop would (as step does), until the
// target is at the state and no fold runs.
func stepAll(t *testing.T, s *Syncer, tg *target) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < 10 && (tg.folding != nil || tg.seq != s.state.seq); i++ {
		if tg.folding != nil {
			<-tg.folding.done
		}
		if err := tg.step(ctx); err != nil {
			t.Fatal(err)
		}
		if tg.needFull {
			t.Fatal("the target fell into a full sync")
		}
	}
	if tg.folding != nil || tg.seq != s.state.seq {
		t.Fatalf("target at seq %d, state at %d, folding %v", tg.seq, s.state.seq, tg.folding != nil)
	}
}

// The background fold's swap takes its snapshot of the state (position S)
// whenever its goroutine gets there; the target meanwhile reads every batch
// published since the fold began, and may take, in one apply, a batch at or
// before S and one after it. A user changed in both whose value ends where
// it started (flip: s1 -> s2 -> s1), or who came and went (gone: none ->
// s2 -> none), is no edit over the two batches; yet the new base holds its
// value at S (s2), and the delta entry that would hide it is only kept for
// users written after S. Once the fold ends, the maps must route as the
// state says at the target's position.
func TestBackgroundFoldSnapshotBetweenBatchesOfOneApply(t *testing.T) {
	s, st, tg, mainRT, _, _ := newFoldLoop(t, users(100, "s1"), 20)
	ctx := context.Background()
	// What startFold does, with the goroutine's snapshot taken by hand
	// between the two publishes below (where the scheduler may put it).
	job := &foldJob{done: make(chan struct{}), why: reasonLargeBatch, written: map[string]deltaWrite{}}
	job.deltaSeq, job.deltaLogID, _ = s.state.position()
	tg.folding = job
	st.set("u1", "s2")
	st.set("gone", "s2")
	readAll(t, s, st)
	job.seq, job.logID, job.err = tg.swap(ctx, tg.gen) // the base now holds u1 and gone at s2
	st.set("u1", "s1")
	st.del("gone")
	readAll(t, s, st)
	bs, ok, _ := s.state.since(job.deltaSeq)
	if !ok || len(bs) != 2 {
		t.Fatalf("want the two batches in reach, got %d (ok %v)", len(bs), ok)
	}
	close(job.done) // the swap ends, after step looked for its end
	if err := tg.apply(ctx, bs); err != nil {
		t.Fatal(err)
	}
	stepAll(t, s, tg)
	if got, want := mainRT.routes(), stateMap(s); !equalMaps(got, want) {
		t.Fatalf("after the fold, at the state's position, the maps route u1 to %q (state %q) and gone to %q (state %q)",
			got["u1"], want["u1"], got["gone"], want["gone"])
	}
}

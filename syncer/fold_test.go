package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/shardmap/shardmap/runtime"
)

// gatedRT is one client of a fakeRuntime shared by two (the target's main
// client and its delta client), safe for concurrent use; the main client's
// swaps of the base wait for gate when it is not nil, after signalling
// entered.
type gatedRT struct {
	*fakeRuntime
	mu      *sync.Mutex
	main    bool
	gate    *chan struct{}
	entered chan struct{}
}

func (g *gatedRT) Replace(ctx context.Context, name string, es []runtime.Entry) error {
	if g.main && !isDelta(name) && *g.gate != nil {
		g.entered <- struct{}{}
		<-*g.gate
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fakeRuntime.Replace(ctx, name, es)
}

func (g *gatedRT) AddFrom(ctx context.Context, name string, es runtime.Entries) error {
	return addVia(ctx, g.Apply, name, es)
}

func (g *gatedRT) ReplaceFrom(ctx context.Context, name string, es runtime.Entries) error {
	return g.Replace(ctx, name, listOf(es))
}

func (g *gatedRT) Apply(ctx context.Context, name string, ops []runtime.Op) ([]error, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fakeRuntime.Apply(ctx, name, ops)
}

func (g *gatedRT) Dump(ctx context.Context, name string, fn func(k, v string) error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fakeRuntime.Dump(ctx, name, fn)
}

func (g *gatedRT) MapEntryCount(ctx context.Context, name string) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fakeRuntime.MapEntryCount(ctx, name)
}

// routesLocked is routes under the fake's lock.
func (g *gatedRT) routes() map[string]string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return routes(g.fakeRuntime)
}

// In the delta layout a fold swaps the base in the background: a change
// published meanwhile is live in the delta before the swap ends, a delete
// waits for it, and once it ends the delta holds only what changed since
// the swap's position and the maps route as the state says.
func TestDeltaFoldInBackground(t *testing.T) {
	st := newFakeStore(users(1000, "s1"))
	fake := &fakeRuntime{live: map[string]string{}, delta: map[string]string{}}
	var mu sync.Mutex
	var gate chan struct{}
	entered := make(chan struct{}, 1)
	dials := 0
	var mainRT *gatedRT
	dial := func(string) (Runtime, error) {
		dials++
		g := &gatedRT{fakeRuntime: fake, mu: &mu, main: dials == 1, gate: &gate, entered: entered}
		if g.main {
			mainRT = g
		}
		return g, nil
	}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/test.sock"}, MaxDeleteShare: DefaultMaxDeleteShare,
		ClaimTTL: time.Hour, DeltaMax: 20, Logger: slog.New(slog.NewTextHandler(&logCapture{}, nil))}, st, dial)
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
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	swaps := fake.replaced
	publish := func() {
		t.Helper()
		_, applied, _ := s.state.position()
		changes, _, err := st.ReadLog(ctx, applied, 1000, 0)
		if err != nil {
			t.Fatal(err)
		}
		s.publish(changes)
	}
	// apply does what the target's step does with the batches published.
	apply := func() error {
		from := tg.seq
		if tg.folding != nil {
			from = tg.folding.deltaSeq
		}
		bs, ok, _ := s.state.since(from)
		if !ok {
			return fmt.Errorf("state out of reach")
		}
		if len(bs) == 0 {
			return nil
		}
		return tg.apply(ctx, bs)
	}
	for i := 0; i < 19; i++ { // to the delta, one short of DeltaMax
		st.set(fmt.Sprintf("u%d", i), "s3")
	}
	publish()
	if err := apply(); err != nil {
		t.Fatal(err)
	}
	if len(tg.deltaKeys) != 19 || fake.replaced != swaps {
		t.Fatalf("19 sets: delta %d keys, %d swaps", len(tg.deltaKeys), fake.replaced-swaps)
	}
	gate = make(chan struct{})
	for i := 0; i < 62; i++ { // past four times DeltaMax: a fold at once
		st.set(fmt.Sprintf("u%d", 100+i), "s4")
	}
	publish()
	if err := apply(); err != nil {
		t.Fatal(err)
	}
	<-entered // the swap took its snapshot and waits at the base
	if tg.folding == nil {
		t.Fatal("no fold running past four times DeltaMax")
	}
	st.set("probe", "s7")
	st.set("u5", "s8")
	publish()
	applied := make(chan error, 1)
	go func() { applied <- apply() }()
	select {
	case err := <-applied:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second): // a bound on a failure, not a timing assertion
		close(gate)
		t.Fatal("a set made during the fold waited for the fold's swap")
	}
	if r := mainRT.routes(); r["probe"] != "s7" || r["u5"] != "s8" {
		t.Fatalf("changes made during the fold are not live before it ends: probe %q u5 %q", r["probe"], r["u5"])
	}
	// The delta's entries from before the fold do not count against
	// the limit meanwhile (they leave it at the end): 19 + 62 + 2 went in.
	// A delete waits for the fold: apply returns once it ended.
	st.del("u6")
	publish()
	done := make(chan error, 1)
	go func() { done <- apply() }()
	if _, ok := mainRT.routes()["u6"]; !ok {
		t.Fatal("u6 deleted from the maps while the base swap was pending")
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if tg.folding != nil {
		t.Fatal("the fold did not end")
	}
	mu.Lock()
	delta := fmt.Sprint(fake.delta)
	replaced := fake.replaced
	mu.Unlock()
	if replaced != swaps+1 || delta != "map[probe:s7 u5:s8]" {
		t.Fatalf("after the fold: %d base swaps (want 1), delta %s (want what changed since the swap's position)", replaced-swaps, delta)
	}
	gate = nil
	if err := apply(); err != nil { // the delete, after the fold
		t.Fatal(err)
	}
	if !equalMaps(mainRT.routes(), stateMap(s)) {
		t.Fatal("the live maps do not route as the state says")
	}
	if tg.seq != s.state.seq || len(tg.deltaKeys) != 2 {
		t.Fatalf("target at seq %d (state %d), delta keys %d", tg.seq, s.state.seq, len(tg.deltaKeys))
	}

	// Sets of users the delta holds whose walks of it, with those since
	// the fold began, pass ReplaceAbove walks at DeltaMax entries wait
	// for the fold too: HAProxy is loading the base.
	for i := 0; i < 15; i++ { // the delta: 2 + 15, under DeltaMax
		st.set(fmt.Sprintf("u%d", 300+i), "s5")
	}
	publish()
	if err := apply(); err != nil || tg.folding != nil || len(tg.deltaKeys) != 17 {
		t.Fatalf("15 new delta entries: err %v, folding %v, delta keys %d", err, tg.folding != nil, len(tg.deltaKeys))
	}
	gate = make(chan struct{})
	for i := 0; i < 62; i++ { // a second fold
		st.set(fmt.Sprintf("u%d", 400+i), "s4")
	}
	publish()
	if err := apply(); err != nil {
		t.Fatal(err)
	}
	<-entered
	// During the fold the sets of delta users may walk it ReplaceAbove
	// times at DeltaMax entries in all: here 2 x 20 = 40.
	s.cfg.ReplaceAbove = 2
	st.set("u300", "s6") // 1 x 17 walked: to the delta at once
	publish()
	if err := apply(); err != nil || tg.folding == nil || mainRT.routes()["u300"] != "s6" {
		t.Fatalf("one set within the fold's walk budget: err %v, folding %v, u300 %q", err, tg.folding != nil, mainRT.routes()["u300"])
	}
	for i := 1; i < 3; i++ { // 17 + 2 x 17 walked > 40
		st.set(fmt.Sprintf("u%d", 300+i), "s6")
	}
	publish()
	waited := make(chan error, 1)
	go func() { waited <- apply() }()
	select {
	case err := <-waited:
		close(gate)
		t.Fatalf("sets walking the delta past the fold's budget did not wait for the fold (err %v)", err)
	case <-time.After(time.Second): // it waits for the gate; a wrong apply returns at once
	}
	close(gate)
	if err := <-waited; err != nil || tg.folding != nil {
		t.Fatalf("after the fold: err %v, folding %v", err, tg.folding != nil)
	}
	gate = nil
	if err := apply(); err != nil { // the sets, after the fold
		t.Fatal(err)
	}
	if !equalMaps(mainRT.routes(), stateMap(s)) || tg.seq != s.state.seq {
		t.Fatal("the live maps do not route as the state says after the second fold")
	}
}

// A target that fell behind the ring, with the state of the load it
// reconciled with, catches up with one fold of the whole state, not a full
// sync (a dump of the live maps and a diff).
func TestBehindTheRingFolds(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprint("delta=", delta), func(t *testing.T) {
			s, st, rt, _ := newLoop(t, users(100, "s1"), nil)
			if delta {
				rt.delta = map[string]string{}
			}
			ctx := context.Background()
			if err := s.fullSync(ctx); err != nil {
				t.Fatal(err)
			}
			tg := s.targets[0]
			swaps, fulls := rt.replaced, s.Status().Targets[0].FullSyncs
			outrunRing(t, s, st)
			if _, ok, _ := s.state.since(tg.seq); ok {
				t.Fatal("the target is still within the ring's reach")
			}
			if err := tg.step(ctx); err != nil {
				t.Fatal(err)
			}
			if tg.needFull || s.Status().Targets[0].FullSyncs != fulls {
				t.Fatal("behind the ring: a full sync, want a fold")
			}
			if rt.replaced != swaps+1 || !equalMaps(routes(rt), stateMap(s)) || tg.seq != s.state.seq {
				t.Fatalf("after catching up: %d swaps (want 1), target seq %d, state %d", rt.replaced-swaps, tg.seq, s.state.seq)
			}
		})
	}
}

// A target out of the ring's reach while a bulk stream is still being read
// (the reader's last read was full) waits for the stream's end and then
// catches up with one fold, rather than fold in the middle of it and fall
// behind again.
func TestBehindTheRingWaitsForTheStreamsEnd(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(100, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg := s.targets[0]
	swaps := rt.replaced
	outrunRing(t, s, st)
	s.state.streaming.Store(true)
	for range 3 {
		if err := tg.step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if rt.replaced != swaps || tg.needFull {
		t.Fatalf("behind the ring during a stream: %d swaps, full sync %v; want to wait", rt.replaced-swaps, tg.needFull)
	}
	s.state.streaming.Store(false)
	if err := tg.step(ctx); err != nil {
		t.Fatal(err)
	}
	if rt.replaced != swaps+1 || !equalMaps(routes(rt), stateMap(s)) || tg.seq != s.state.seq {
		t.Fatalf("after the stream: %d swaps (want 1), target seq %d, state %d", rt.replaced-swaps, tg.seq, s.state.seq)
	}
}

// The reader counts a bulk stream as under way from a full read (BatchMax
// changes) until streamQuiet has passed without one: a single short read
// (the reader caught up with the writer for a moment) does not end it.
func TestStreamingEndsOnlyAfterAQuietSpell(t *testing.T) {
	s, st, _, _ := newLoop(t, users(10, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	s.cfg.BatchMax = 10
	for i := 0; i < 15; i++ {
		st.set(fmt.Sprintf("n%d", i), "s2")
	}
	read := func(want bool, what string) {
		t.Helper()
		if err := s.readStep(ctx); err != nil {
			t.Fatal(err)
		}
		if got := s.state.streaming.Load(); got != want {
			t.Fatalf("%s: streaming %v, want %v", what, got, want)
		}
	}
	read(true, "a full read")
	read(true, "a short read right after it")
	s.lastFullRead = time.Now().Add(-2 * streamQuiet)
	read(false, "a short read after a quiet spell")
}

// outrunRing publishes changes to users u0..u149 in more batches than the
// ring keeps, so that a target at the position before is out of its reach.
func outrunRing(t *testing.T, s *Syncer, st *fakeStore) {
	t.Helper()
	for i := 0; i < 4100; i++ {
		st.set(fmt.Sprintf("u%d", i%150), fmt.Sprint("s", 2+i%3))
		readLog(t, s, st)
	}
}

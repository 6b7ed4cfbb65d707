package syncer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shardmap/shardmap/maps"
)

func TestTreeMaps(t *testing.T) {
	for v, want := range map[string]bool{
		"2.6.12-1+deb12u4": false, "2.8.5-1ubuntu3": false, "2.9.0": true, "3.0.11-1": true, "3.2.0": true,
		"": false, "dev": false, "10.0": true,
	} {
		if got := treeMaps(v); got != want {
			t.Errorf("treeMaps(%q) = %v, want %v", v, got, want)
		}
	}
}

// routes is what the fake's maps route each user to: the delta first.
func routes(rt *fakeRuntime) map[string]string {
	out := map[string]string{}
	for k, v := range rt.live {
		out[k] = v
	}
	for k, v := range rt.delta {
		out[k] = v
	}
	return out
}

// With a delta map loaded on HAProxy before 2.9, changes go to the delta
// and the base stays as loaded; a delete goes to both; past DeltaMax the
// delta is folded into the base.
func TestDeltaLayout(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(1000, "s1"), nil)
	rt.delta = map[string]string{}
	s.cfg.DeltaMax = 20
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg := s.targets[0]
	if !tg.useDelta || len(rt.live) != 1000 || len(rt.delta) != 0 {
		t.Fatalf("after the full sync: delta layout %v, base %d, delta %d", tg.useDelta, len(rt.live), len(rt.delta))
	}
	swaps, folds := rt.replaced, s.Status().Targets[0].Folds // the full sync into an empty base folded
	next := func() {
		t.Helper()
		readLog(t, s, st)
		follow(t, s)
		if !equalMaps(routes(rt), stateMap(s)) {
			t.Fatal("the live maps do not route as the state says")
		}
	}
	st.set("u1", "s2")   // a change: to the delta
	st.set("new1", "s3") // a new user: added to the base
	st.del("u2")         // a delete: from the base
	next()
	if rt.live["u1"] != "s1" || rt.delta["u1"] != "s2" || rt.live["new1"] != "s3" || rt.delta["new1"] != "" {
		t.Fatalf("sets did not go to the delta: base u1=%q delta %v", rt.live["u1"], rt.delta)
	}
	if _, ok := rt.live["u2"]; ok {
		t.Fatal("u2 deleted in Redis is still in the base")
	}
	if rt.replaced != swaps {
		t.Fatal("a small batch swapped the base")
	}
	st.del("u1") // in the base and the delta
	next()
	if _, ok := routes(rt)["u1"]; ok {
		t.Fatal("u1 still routed after its delete")
	}
	for i := 0; i < 25; i++ { // past DeltaMax: a fold
		st.set(fmt.Sprintf("u%d", 100+i), "s4")
	}
	next()
	if rt.replaced != swaps+1 || len(rt.delta) != 0 || len(tg.deltaKeys) != 0 || s.Status().Targets[0].Folds != folds+1 {
		t.Fatalf("no fold past DeltaMax: swaps %d, delta %d entries, folds %d", rt.replaced-swaps, len(rt.delta), s.Status().Targets[0].Folds-folds)
	}
	if rt.live["u110"] != "s4" {
		t.Fatalf("the fold's base lacks u110: %q", rt.live["u110"])
	}
}

// HAProxy 2.9 and later set and delete by key cheaply: a delta map it has
// is emptied (folded) at the full sync and changes go to the single map.
func TestDeltaMapOnTreeVersionIsEmptied(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(10, "s1"), users(10, "s1"))
	rt.version = "3.0.11-1"
	rt.delta = map[string]string{"u3": "s9"} // left over from a 2.6 process
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	if s.targets[0].useDelta || len(rt.delta) != 0 || rt.live["u3"] != "s1" {
		t.Fatalf("delta layout %v, delta %v, base u3 %q", s.targets[0].useDelta, rt.delta, rt.live["u3"])
	}
	st.set("u4", "s2")
	_, applied, _ := s.state.position()
	changes, _, _ := st.ReadLog(ctx, applied, 10, 0)
	s.publish(changes)
	follow(t, s)
	if rt.live["u4"] != "s2" || len(rt.delta) != 0 {
		t.Fatalf("single layout: base u4 %q, delta %v", rt.live["u4"], rt.delta)
	}
}

// A restarted HAProxy that loaded a stale delta file: the full sync diffs
// what both maps route against the state and writes the difference into
// the delta.
func TestDeltaFullSyncRepairsStaleDelta(t *testing.T) {
	s, _, rt, _ := newLoop(t, users(100, "s1"), users(100, "s1"))
	rt.delta = map[string]string{"u5": "s7", "ghost": "s2"}
	if err := s.fullSync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !equalMaps(routes(rt), stateMap(s)) || rt.replaced != 0 {
		t.Fatalf("routes differ from the state, or a swap (%d) for 2 edits", rt.replaced)
	}
	if _, ok := rt.delta["ghost"]; ok {
		t.Fatal("ghost still in the delta")
	}
	_ = maps.ZeroID
}

// The state moves on while a full sync reads the live map (the reader
// publishes changes meanwhile): the users it changed are looked at again,
// so the live map ends as the state says at the end, not at the start.
func TestFullSyncWhileStateMoves(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprint("delta=", delta), func(t *testing.T) {
			hash := users(20_000, "s1")
			live := users(20_000, "s1")
			live["u5"] = "s9" // drift the full sync must repair
			s, st, rt, _ := newLoop(t, hash, live)
			if delta {
				rt.delta = map[string]string{"u6": "s8"}
			}
			ctx := context.Background()
			if err := s.load(ctx); err != nil {
				t.Fatal(err)
			}
			rt.midDump = func() {
				// Compared already or not yet: either way the end must hold.
				for i := 0; i < 20_000; i += 997 {
					st.set(fmt.Sprintf("u%d", i), "s2")
				}
				st.del("u7")
				st.set("brand-new", "s3")
				_, applied, _ := s.state.position()
				changes, _, err := st.ReadLog(ctx, applied, 1000, 0)
				if err != nil {
					t.Error(err)
				}
				s.publish(changes)
			}
			if err := s.targets[0].fullSync(ctx); err != nil {
				t.Fatal(err)
			}
			if !equalMaps(routes(rt), stateMap(s)) {
				t.Fatalf("live maps differ from the state after a full sync during which it moved")
			}
			if s.targets[0].seq != s.state.seq {
				t.Fatalf("target at seq %d, state at %d", s.targets[0].seq, s.state.seq)
			}
		})
	}
}

// reload installs entries as a load of Redis at logID (for tests).
func (st *state) reload(entries map[string]string, logID string) {
	l := newLoading(len(entries))
	for u, sh := range entries {
		l.add(u, sh)
	}
	st.install(l, logID)
}

// A slow map-file write spaces the next ones out: changes wait eight times
// the last write's duration when that is longer than FlushDelay.
func TestFileDelayFollowsWriteTime(t *testing.T) {
	s, _, _, _ := newLoop(t, users(3, "s1"), nil)
	f := &s.file
	if got := f.delay(s); got != s.cfg.FlushDelay {
		t.Fatalf("delay %s before any write, want FlushDelay %s", got, s.cfg.FlushDelay)
	}
	f.done(s, context.Background(), fileWrite{id: "1-0", took: time.Second})
	if got := f.delay(s); got != 8*time.Second {
		t.Fatalf("delay %s after a 1 s write, want 8 s", got)
	}
}

// New users are added to the base in payloads, whatever their number: an
// add walks nothing, so a bulk import needs no swap of the whole map (it
// did past ReplaceAbove edits). Existing users changed past ReplaceAbove
// on HAProxy 2.6 still make one swap.
func TestNewUsersAreAddedNotSwapped(t *testing.T) {
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
			swaps := rt.replaced
			for i := 0; i < 500; i++ { // far past ReplaceAbove (64)
				st.set(fmt.Sprintf("new%d", i), "s2")
			}
			readLog(t, s, st)
			follow(t, s)
			if rt.replaced != swaps {
				t.Fatalf("500 new users: %d swaps, want 0", rt.replaced-swaps)
			}
			if len(rt.live) != 600 || rt.live["new499"] != "s2" || len(rt.delta) != 0 {
				t.Fatalf("base %d entries (new499=%q), delta %d: want the new users in the base", len(rt.live), rt.live["new499"], len(rt.delta))
			}
			if !delta {
				for i := 0; i < 100; i++ { // existing users past ReplaceAbove: one swap
					st.set(fmt.Sprintf("u%d", i), "s3")
				}
				readLog(t, s, st)
				follow(t, s)
				if rt.replaced != swaps+1 || !equalMaps(rt.live, stateMap(s)) {
					t.Fatalf("100 sets on 2.6: %d swaps, want 1", rt.replaced-swaps)
				}
			}
		})
	}
}

// From HAProxy 2.9 on, set and del use a tree: a batch of sets under an
// eighth of the map is sent as sets, not as a swap of the whole map.
func TestTreeMapsSetRatherThanSwap(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(2000, "s1"), nil)
	rt.version = "3.0.11-1"
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	swaps := rt.replaced
	for i := 0; i < 200; i++ { // > ReplaceAbove (64), < 2000/8
		st.set(fmt.Sprintf("u%d", i), "s2")
	}
	readLog(t, s, st)
	follow(t, s)
	if rt.replaced != swaps || !equalMaps(rt.live, stateMap(s)) {
		t.Fatalf("200 sets of 2000 users on 3.0: %d swaps, want 0 (and the map as the state)", rt.replaced-swaps)
	}
}

// In the delta layout a bulk stream of changes to existing users goes on
// into the delta past DeltaMax (up to eight times it) and the fold waits for
// the end of the stream: the step that finds nothing new starts it. Under
// steady churn (reads not full) the delta is folded at DeltaMax.
func TestDeltaFoldsAtTheEndOfAStream(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(1000, "s1"), nil)
	rt.delta = map[string]string{}
	s.cfg.DeltaMax = 20
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg := s.targets[0]
	tg.rtDelta = &lockedRuntime{f: rt} // a second client: the fold runs in the background
	swaps := rt.replaced
	for i := 0; i < 70; i++ { // past DeltaMax (20), under 8x (160)
		st.set(fmt.Sprintf("u%d", i), "s2")
	}
	readLog(t, s, st)
	s.state.streaming.Store(true) // the reader's reads are full: a bulk stream
	follow(t, s)
	if rt.replaced != swaps || len(rt.delta) != 70 || tg.folding != nil {
		t.Fatalf("70 changes in a stream: %d swaps, delta %d, folding %v: want all in the delta, no fold yet", rt.replaced-swaps, len(rt.delta), tg.folding != nil)
	}
	s.state.streaming.Store(false) // the stream ended
	if err := tg.step(ctx); err != nil {
		t.Fatal(err)
	}
	if tg.folding == nil {
		t.Fatal("caught up with a delta past DeltaMax: no fold started")
	}
	if err := tg.waitFold(ctx); err != nil {
		t.Fatal(err)
	}
	if rt.replaced <= swaps || len(rt.delta) != 0 || !equalMaps(routes(rt), stateMap(s)) {
		t.Fatalf("after the fold: %d swaps, delta %d entries, maps as the state: %v", rt.replaced-swaps, len(rt.delta), equalMaps(routes(rt), stateMap(s)))
	}
	for i := 100; i < 125; i++ { // not a stream now: past DeltaMax folds at once
		st.set(fmt.Sprintf("u%d", i), "s3")
	}
	readLog(t, s, st)
	swaps = rt.replaced
	follow(t, s)
	if tg.folding != nil {
		if err := tg.waitFold(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if rt.replaced <= swaps || !equalMaps(routes(rt), stateMap(s)) {
		t.Fatalf("25 changes past DeltaMax under churn: %d swaps, want a fold", rt.replaced-swaps)
	}
}

// In the delta layout on 2.6 a set of a user already in the delta walks
// the delta: a batch whose walks would cost more than ReplaceAbove walks of
// a DeltaMax delta is a fold instead.
func TestDeltaSetsThatWalkTooMuchFold(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(1000, "s1"), nil)
	rt.delta = map[string]string{}
	s.cfg.DeltaMax, s.cfg.ReplaceAbove = 20, 2 // a budget of 40 walked entries
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	step := func(users []int, shard string) {
		t.Helper()
		for _, i := range users {
			st.set(fmt.Sprintf("u%d", i), shard)
		}
		readLog(t, s, st)
		follow(t, s)
		if tg := s.targets[0]; tg.folding != nil {
			if err := tg.waitFold(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	step([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, "s2") // 15 in the delta
	swaps := rt.replaced
	step([]int{0, 1}, "s3") // 2 sets x 15 = 30 walked: sets
	if rt.replaced != swaps || rt.delta["u0"] != "s3" {
		t.Fatalf("2 sets in a delta of 15: %d swaps, delta u0=%q; want sets", rt.replaced-swaps, rt.delta["u0"])
	}
	step([]int{2, 3, 4}, "s4") // 3 x 15 = 45 > 40: a fold
	if rt.replaced == swaps || !equalMaps(routes(rt), stateMap(s)) {
		t.Fatalf("3 sets in a delta of 15: %d swaps, want a fold", rt.replaced-swaps)
	}
}

// readLog publishes to the state what the store's log holds after the
// state's position, as the reader does.
func readLog(t *testing.T, s *Syncer, st *fakeStore) {
	t.Helper()
	_, applied, _ := s.state.position()
	changes, _, err := st.ReadLog(context.Background(), applied, 1000, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) > 0 {
		s.publish(changes)
	}
}

// A target far behind (here 120,000 new users, more than applyMax) catches
// up in steps of about applyMax changes, each its own payload adds: the
// per-user index apply builds stays bounded, and no step swaps the map.
// Each change's user name is read back from its batch (batch.user).
func TestLaggingTargetCatchesUpInSteps(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(100, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg := s.targets[0]
	swaps := rt.replaced
	const n = 120_000
	for i := 0; i < n; i++ {
		st.set(fmt.Sprintf("new%06d", i), fmt.Sprint("s", 2+i%3))
	}
	for s.state.pendingAfter(tg.seq) < n {
		readLog(t, s, st)
	}
	steps := 0
	for tg.seq != s.state.seq {
		if steps++; steps > 10 {
			t.Fatalf("not caught up after %d steps", steps)
		}
		before := s.state.pendingAfter(tg.seq)
		if err := tg.step(ctx); err != nil {
			t.Fatal(err)
		}
		if took := before - s.state.pendingAfter(tg.seq); took > applyMax+1000 {
			t.Fatalf("one step applied %d changes, want about applyMax (%d) at most", took, applyMax)
		}
	}
	if steps < 3 || rt.replaced != swaps || !equalMaps(rt.live, stateMap(s)) {
		t.Fatalf("caught up in %d steps (want 3), %d swaps (want 0), live map as the state: %v", steps, rt.replaced-swaps, equalMaps(rt.live, stateMap(s)))
	}
}

func TestFirstChanges(t *testing.T) {
	b := func(n int) *batch { return &batch{changes: make([]change, n)} }
	bs := []*batch{b(30), b(30), b(50), b(10)}
	for _, tc := range []struct{ max, want int }{{100, 2}, {60, 2}, {59, 1}, {10, 1}, {120, 4}, {0, 1}} {
		if got := len(firstChanges(bs, tc.max)); got != tc.want {
			t.Errorf("firstChanges(30,30,50,10; max %d): %d batches, want %d", tc.max, got, tc.want)
		}
	}
	if firstChanges(nil, 10) != nil {
		t.Error("firstChanges(nil) is not empty")
	}
}

// A target at least applyMax changes behind works through them as through
// a bulk stream, even once the reader has read the stream's end: changes to
// existing users go on into the delta past DeltaMax (up to eight times it),
// and the fold waits until the target has caught up. Before, the tail of a
// reassignment after the stream ended made a second fold at once.
func TestBacklogCountsAsAStream(t *testing.T) {
	const n = applyMax + 5_000 // a tail under BatchMax after the first step
	s, st, rt, _ := newLoop(t, users(n, "s1"), nil)
	rt.delta = map[string]string{}
	s.cfg.DeltaMax = n / 4 // n is past it, under eight times it
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg := s.targets[0]
	tg.rtDelta = &lockedRuntime{f: rt}
	swaps := rt.replaced
	for i := 0; i < n; i++ {
		st.set(fmt.Sprintf("u%d", i), "s2")
	}
	for s.state.pendingAfter(tg.seq) < n {
		readLog(t, s, st)
	}
	s.state.streaming.Store(false) // the reader has read the stream's end
	for tg.seq != s.state.seq {
		if err := tg.step(ctx); err != nil {
			t.Fatal(err)
		}
		if rt.replaced != swaps || tg.folding != nil {
			t.Fatalf("a backlog of %d changes: %d swaps, folding %v after %d in the delta: want all in the delta, no fold yet", n, rt.replaced-swaps, tg.folding != nil, len(rt.delta))
		}
	}
	if len(rt.delta) != n {
		t.Fatalf("delta %d entries, want %d", len(rt.delta), n)
	}
	if err := tg.step(ctx); err != nil { // caught up with a delta past DeltaMax: the fold
		t.Fatal(err)
	}
	if err := tg.waitFold(ctx); err != nil {
		t.Fatal(err)
	}
	if rt.replaced != swaps+1 || len(rt.delta) != 0 || !equalMaps(routes(rt), stateMap(s)) {
		t.Fatalf("after catching up: %d swaps (want 1), delta %d, maps as the state %v", rt.replaced-swaps, len(rt.delta), equalMaps(routes(rt), stateMap(s)))
	}
}

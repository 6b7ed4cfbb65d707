package syncer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// failRT is a walkRT whose swaps of the base fail at random (after being
// held open like the others: HAProxy gave up on the version being loaded),
// when fail says so.
type failRT struct {
	*walkRT
	fail func() bool
}

var errReview5Swap = errors.New("review5: the swap of the base failed")

func (c *failRT) ReplaceFrom(ctx context.Context, name string, es runtime.Entries) error {
	m := c.m
	if name == m.base && c.fail() {
		c.w.mu.Lock()
		c.w.now = 0 // a swap begins, as walkRT.Replace counts
		c.w.mu.Unlock()
		m.mu.Lock()
		m.pending[name] = true
		gate := m.gate
		m.mu.Unlock()
		if gate != nil {
			gate()
		}
		m.mu.Lock()
		m.pending[name] = false
		m.mu.Unlock()
		return errReview5Swap
	}
	return c.walkRT.ReplaceFrom(ctx, name, es)
}

// newReview5Loop is newWalkLoop with swaps of the base that fail when fail
// says so and a metrics registry (for the apply latency's observations).
func newReview5Loop(t *testing.T, hash map[string]string, deltaMax, replaceAbove, batchMax int, fail func() bool) (*Syncer, *fakeStore, *lagModel, *walks, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(c *walkRT) Runtime { return &failRT{c, fail} }
	s, st, m, w := newWalkLoopWith(t, hash, deltaMax, replaceAbove, batchMax, wrap, metrics)
	return s, st, m, w, reg
}

// latencyObservations is the apply latency histogram's sample count (-1:
// none yet).
func latencyObservations(t *testing.T, reg *prometheus.Registry) int {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "shardmap_syncer_apply_latency_seconds" {
			n := 0
			for _, m := range f.GetMetric() {
				n += int(m.GetHistogram().GetSampleCount())
			}
			return n
		}
	}
	return 0
}

// logIndex is N of a log ID "N-0" (0 for none).
func logIndex(t *testing.T, id string) int {
	t.Helper()
	if id == "" || id == maps.ZeroID {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSuffix(id, "-0"))
	if err != nil {
		t.Fatalf("log ID %q: %v", id, err)
	}
	return n
}

// positionFaults checks the target's reported position against what
// HAProxy routes: every user is routed to its value at that position or a
// later one (the position is a lower bound: --wait never returns before a
// change is live); exact, when no fold runs and the maps are not in doubt,
// the live maps route as the state said at that position.
func positionFaults(t *testing.T, st *fakeStore, hash map[string]string, m *lagModel, tg *target) []string {
	t.Helper()
	n := logIndex(t, tg.applied)
	exact := tg.folding == nil && !tg.needFull
	st.mu.Lock()
	log := append([]maps.Change(nil), st.log[:n]...)
	st.mu.Unlock()
	at := map[string]string{}
	for u, v := range hash {
		at[u] = v
	}
	count := map[string]int{}
	for _, c := range log {
		count[c.User]++
		if c.Op == maps.OpSet {
			at[c.User] = c.Shard
		} else {
			delete(at, c.User)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var faults []string
	for u, h := range m.hist {
		v := m.route(u)
		if exact && v != at[u] {
			faults = append(faults, fmt.Sprintf("%s routed to %q, the state at the position %d says %q (no fold running)", u, v, n, at[u]))
			continue
		}
		ok := false
		for j := count[u]; j < len(h); j++ {
			if h[j] == v {
				ok = true
				break
			}
		}
		if !ok {
			faults = append(faults, fmt.Sprintf("%s routed to %q, older than its value at the reported position %d (#%d of %v)", u, v, n, count[u], h))
		}
		if len(faults) > 10 {
			break
		}
	}
	return faults
}

// review5Seeds is how many seeds each case of TestReview5FoldModel runs.
var review5Seeds = 2

// Hot users always in the delta set again and again (past the fold's walk
// budget: the batch waits for the fold), some flipping back to where they
// began, some deleted (a delete waits for the fold: the fold ends inside
// apply), bulk moves past BatchMax, with the
// base's swaps held open at random and, in one case, failing at random (a
// full sync follows): after every step no user is routed to an older value
// than one it was routed to, and none to a value older than its value at
// the target's reported position (exactly that value when no fold runs);
// the sets sent during a fold stay within the walk budget; the apply
// latency is observed once per change at most, exactly once when no swap
// failed; the live maps end as the state says.
func TestReview5FoldModel(t *testing.T) {
	// REVIEW5_SEEDS=n runs n seeds per case.
	seeds := review5Seeds
	if n, err := strconv.Atoi(os.Getenv("REVIEW5_SEEDS")); err == nil && n > 0 {
		seeds = n
	}
	for _, failing := range []bool{false, true} {
		for seed := range uint64(seeds) {
			t.Run(fmt.Sprintf("failing=%v/seed=%d", failing, seed), func(t *testing.T) {
				runReview5Model(t, seed, failing)
			})
		}
	}
}

func runReview5Model(t *testing.T, seed uint64, failing bool) {
	const (
		old                              = 200
		hotN                             = 12
		deltaMax, replaceAbove, batchMax = 16, 2, 30
	)
	r := rand.New(rand.NewPCG(seed, 5))
	var failMu sync.Mutex
	fr := rand.New(rand.NewPCG(seed, 55))
	fail := func() bool {
		failMu.Lock()
		defer failMu.Unlock()
		return failing && fr.IntN(3) == 0
	}
	hash := users(old, "s0")
	s, st, m, w, reg := newReview5Loop(t, hash, deltaMax, replaceAbove, batchMax, fail)
	tg := s.targets[0]
	ctx := context.Background()
	failures := 0
	// A failed swap puts the maps in doubt: a full sync follows.
	step, release := heldStepsTolerating(t, ctx, m, tg, 3, func(err error) bool {
		if errors.Is(err, errReview5Swap) && tg.needFull {
			failures++
			return true
		}
		return false
	})
	hot := func() string { return fmt.Sprintf("u%d", r.IntN(hotN)) }
	check := func(round int) {
		if f := m.faults(); len(f) > 0 {
			t.Fatalf("round %d: %v", round, f)
		}
		if f := positionFaults(t, st, hash, m, tg); len(f) > 0 {
			t.Fatalf("round %d: %v", round, f)
		}
	}
	published := 0
	for round := range 80 {
		switch {
		case round%12 == 5:
			for range batchMax + r.IntN(2*batchMax) {
				st.set(fmt.Sprintf("u%d", r.IntN(old)), fmt.Sprint("s", r.IntN(4)))
			}
		case round%12 == 9:
			// Deletes, of hot users too (set during a fold, maybe).
			for range 1 + r.IntN(2) {
				st.del(hot())
			}
			st.del(fmt.Sprintf("u%d", hotN+r.IntN(old-hotN)))
		default:
			for range r.IntN(16) {
				u := hot()
				switch r.IntN(3) {
				case 0: // back to where it began within the batch
					st.set(u, "s7")
					st.set(u, "s1")
				case 1:
					st.set(u, fmt.Sprint("s", 1+r.IntN(3)))
				default: // a user new to the delta
					st.set(fmt.Sprintf("n%d", r.IntN(40)), fmt.Sprint("s", r.IntN(3)))
				}
			}
		}
		if r.IntN(3) == 0 {
			release(false)
		}
		s.state.streaming.Store(r.IntN(5) == 0)
		publishLog(t, s, st, m, r, batchMax)
		for range r.IntN(3) + 1 {
			tg.lastCheck = time.Now()
			step()
			check(round)
		}
	}
	// Catch up, tolerating failures (full syncs take more steps).
	catchUpHeld(t, s, tg, func() { step(); check(-1) }, release, 300)
	if got, want := m.routes(), stateMap(s); !equalMaps(got, want) {
		t.Fatalf("routes differ from the state: %d routed, %d in the state", len(got), len(want))
	}
	w.mu.Lock()
	most := w.most
	w.mu.Unlock()
	if most > replaceAbove*deltaMax {
		t.Fatalf("a fold let sets walk %d delta entries, more than ReplaceAbove x DeltaMax (%d)", most, replaceAbove*deltaMax)
	}
	st.mu.Lock()
	for _, c := range st.log {
		if c.Op != "" {
			published++
		}
	}
	st.mu.Unlock()
	obs := latencyObservations(t, reg)
	st0 := s.Status().Targets[0]
	// Exactly once without failures (a failed fold's batches are not
	// observed: the full sync after brings them live).
	if obs > published || (failures == 0 && obs != published) {
		t.Fatalf("%d apply latency observations for %d changes (%d swaps failed)", obs, published, failures)
	}
	if failures == 0 && (st0.FullSyncs != 1 || tg.needFull) {
		t.Fatalf("full syncs %d (want 1), in doubt %v", st0.FullSyncs, tg.needFull)
	}
	t.Logf("most walked %d, folds %d, swaps %d, swap failures %d, full syncs %d, observations %d/%d",
		most, st0.Folds, st0.Swaps, failures, st0.FullSyncs, obs, published)
}

// A fold decided on a prefix of the batches published (step's firstChanges)
// starts its delta after the state's position, so the batches between the
// prefix and that position are brought live by the swap alone: their apply
// latency is observed at the fold's end like the prefix's, once.
func TestReview5FoldObservesBatchesItsSwapBringsLive(t *testing.T) {
	s, st, m, _, reg := newReview5Loop(t, users(200, "s0"), 16, 2, 1000, func() bool { return false })
	tg := s.targets[0]
	ctx := context.Background()
	for i := range 30 { // past the delta's limit: a fold
		st.set(fmt.Sprintf("u%d", i), "s1")
	}
	publish := func() { t.Helper(); publishAll(t, s, st) }
	publish()
	first, ok, _ := s.state.since(tg.seq)
	if !ok || len(first) != 1 {
		t.Fatalf("%d batches, want 1", len(first))
	}
	st.set("u100", "s2")
	publish()
	st.set("u101", "s3")
	st.set("u102", "s3")
	publish()
	if err := tg.apply(ctx, first); err != nil || tg.folding == nil {
		t.Fatalf("apply: err %v, folding %v", err, tg.folding != nil)
	}
	if err := tg.waitFold(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := tg.seq, s.state.seq; got != want || !equalMaps(m.routes(), stateMap(s)) {
		t.Fatalf("after the fold: position %d, want %d (or routes differ)", got, want)
	}
	if got := latencyObservations(t, reg); got != 33 {
		t.Fatalf("%d apply latency observations, want 33 (30 in the prefix, 3 after it)", got)
	}
}

// The same in the single layout, whose fold is not in the background: a
// fold decided on a prefix swaps the state as it is, the batches after the
// prefix included, and observes their apply latency too, once.
func TestReview5SingleFoldObservesBatchesItsSwapBringsLive(t *testing.T) {
	s, st, m := newLagLoop(t, users(200, "s0"), lagConfig{noDelta: true, version: "2.6.12"}, 16)
	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s.cfg.Metrics = metrics // no goroutine runs yet
	tg := s.targets[0]
	ctx := context.Background()
	for i := range 100 { // past ReplaceAbove (64) sets: a fold
		st.set(fmt.Sprintf("u%d", i), "s1")
	}
	publish := func() { t.Helper(); publishAll(t, s, st) }
	publish()
	first, ok, _ := s.state.since(tg.seq)
	if !ok || len(first) != 1 {
		t.Fatalf("%d batches, want 1", len(first))
	}
	st.set("u150", "s2")
	st.set("u151", "s2")
	publish()
	if err := tg.apply(ctx, first); err != nil {
		t.Fatal(err)
	}
	if got, want := tg.seq, s.state.seq; got != want || !equalMaps(m.routes(), stateMap(s)) {
		t.Fatalf("after the fold: position %d, want %d (or routes differ)", got, want)
	}
	if got := latencyObservations(t, reg); got != 102 {
		t.Fatalf("%d apply latency observations, want 102 (100 in the prefix, 2 after it)", got)
	}
}

// publishAll publishes everything the store's log holds past the state's
// position, as one batch.
func publishAll(t *testing.T, s *Syncer, st *fakeStore) {
	t.Helper()
	_, applied, _ := s.state.position()
	st.mu.Lock()
	changes := append([]maps.Change(nil), st.log[logIndex(t, applied):]...)
	st.mu.Unlock()
	if err := s.publish(changes); err != nil {
		t.Fatal(err)
	}
}

package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardmap/shardmap/runtime"
)

// walkRT is a lagRT that also counts, per swap of the base, the delta
// entries walked by the sets sent to the delta while the base's new version
// is pending (HAProxy 2.6 loading it): the walks a background fold lets
// through.
type walkRT struct {
	*lagRT
	w *walks
}

type walks struct {
	mu   sync.Mutex
	now  int // since the base's last swap began
	most int // the most any fold let through
}

func (c *walkRT) Apply(ctx context.Context, name string, ops []runtime.Op) ([]error, error) {
	m := c.m
	m.mu.Lock()
	if name == m.delta() && m.pending[m.base] {
		c.w.mu.Lock()
		for _, op := range ops {
			if op.Kind == runtime.Set {
				c.w.now += len(m.maps[name])
			}
		}
		c.w.most = max(c.w.most, c.w.now)
		c.w.mu.Unlock()
	}
	m.mu.Unlock()
	return c.lagRT.Apply(ctx, name, ops)
}

func (c *walkRT) Replace(ctx context.Context, name string, es []runtime.Entry) error {
	if name == c.m.base {
		c.w.mu.Lock()
		c.w.now = 0
		c.w.mu.Unlock()
	}
	return c.lagRT.Replace(ctx, name, es)
}

func (c *walkRT) ReplaceFrom(ctx context.Context, name string, es runtime.Entries) error {
	return c.Replace(ctx, name, listOf(es))
}

// newWalkLoop is newLagLoop (delta layout on 2.6, two clients) with small
// DeltaMax, ReplaceAbove and BatchMax, on walkRTs.
func newWalkLoop(t *testing.T, hash map[string]string, deltaMax, replaceAbove, batchMax int) (*Syncer, *fakeStore, *lagModel, *walks) {
	return newWalkLoopWith(t, hash, deltaMax, replaceAbove, batchMax, nil, nil)
}

// newWalkLoopWith is newWalkLoop with each client wrapped by wrap (nil:
// as is) and metrics (nil: none).
func newWalkLoopWith(t *testing.T, hash map[string]string, deltaMax, replaceAbove, batchMax int, wrap func(*walkRT) Runtime, metrics *Metrics) (*Syncer, *fakeStore, *lagModel, *walks) {
	t.Helper()
	st := newFakeStore(hash)
	m := &lagModel{version: "2.6.12", maps: map[string]map[string][]string{},
		pending: map[string]bool{}, hist: map[string][]string{}, cur: map[string]int{}}
	w := &walks{}
	dial := func(string) (Runtime, error) {
		c := &walkRT{&lagRT{m}, w}
		if wrap == nil {
			return c, nil
		}
		return wrap(c), nil
	}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/test.sock"}, MaxDeleteShare: 1,
		ClaimTTL: time.Hour, Heartbeat: 5 * time.Millisecond, DeltaMax: deltaMax, ReplaceAbove: replaceAbove, BatchMax: batchMax,
		CheckEvery: time.Hour, ReconcileEvery: time.Hour, Metrics: metrics,
		Logger: slog.New(slog.NewTextHandler(modelLog, &slog.HandlerOptions{Level: slog.LevelDebug}))}, st, dial)
	if err != nil {
		t.Fatal(err)
	}
	m.base = s.cfg.MapName
	m.maps[m.base] = map[string][]string{}
	m.maps[m.delta()] = map[string][]string{}
	for u, v := range hash {
		m.maps[m.base][u] = []string{v}
		m.hist[u] = []string{v}
	}
	if s.targets[0].rtDelta == nil {
		t.Fatal("no second client")
	}
	if !s.targets[0].holdLease(context.Background()) {
		t.Fatal("no lease")
	}
	if err := s.fullSync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, st, m, w
}

// Churn on a few hot users (always in the delta, flipping back and forth
// within the batches in hand), bulk moves past BatchMax (a backlog), deletes,
// with the base's swaps held open at random, at a small DeltaMax,
// ReplaceAbove and BatchMax: no user is ever routed to an older value than
// one it was routed to, the sets sent to the delta during a fold never walk
// it more than ReplaceAbove times DeltaMax entries in all, and the live maps
// end as the state says, with no full sync.
func TestReview4FoldWalkBudgetModel(t *testing.T) {
	for seed := range uint64(review4Seeds) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runWalkModel(t, seed) })
	}
}

func runWalkModel(t *testing.T, seed uint64) {
	const (
		old                              = 400
		deltaMax, replaceAbove, batchMax = 20, 3, 40
	)
	r := rand.New(rand.NewPCG(seed, 4))
	s, st, m, w := newWalkLoop(t, users(old, "s0"), deltaMax, replaceAbove, batchMax)
	tg := s.targets[0]
	ctx := context.Background()
	step, release := heldSteps(t, ctx, m, tg, 4)
	hot := func() string { return fmt.Sprintf("u%d", r.IntN(8)) }
	for round := range 150 {
		switch {
		case round%10 == 3:
			// A reassignment past BatchMax: a backlog.
			for range batchMax + r.IntN(3*batchMax) {
				st.set(fmt.Sprintf("u%d", r.IntN(old)), fmt.Sprint("s", r.IntN(4)))
			}
		case round%10 == 7:
			for range 1 + r.IntN(3) {
				st.del(fmt.Sprintf("u%d", 8+r.IntN(old-8)))
			}
		default:
			// Hot users flipping: a user's span often ends where it began.
			for range r.IntN(12) {
				u := hot()
				st.set(u, "s1")
				st.set(u, fmt.Sprint("s", 1+r.IntN(2)))
			}
		}
		if r.IntN(3) == 0 {
			release(false)
		}
		s.state.streaming.Store(r.IntN(4) == 0)
		publishLog(t, s, st, m, r, batchMax)
		for range r.IntN(3) + 1 {
			tg.lastCheck = time.Now()
			step()
			if f := m.faults(); len(f) > 0 {
				t.Fatalf("round %d: %v", round, f)
			}
		}
	}
	catchUpHeld(t, s, tg, step, release, 200)
	if f := m.faults(); len(f) > 0 {
		t.Fatal(f)
	}
	if got, want := m.routes(), stateMap(s); !equalMaps(got, want) {
		t.Fatalf("routes differ from the state: %d routed, %d in the state", len(got), len(want))
	}
	w.mu.Lock()
	most := w.most
	w.mu.Unlock()
	st0 := s.Status().Targets[0]
	if st0.FullSyncs != 1 || tg.needFull {
		t.Fatalf("full syncs %d (want 1), in doubt %v", st0.FullSyncs, tg.needFull)
	}
	if most > replaceAbove*deltaMax {
		t.Fatalf("a fold let sets walk %d delta entries, more than ReplaceAbove x DeltaMax (%d)", most, replaceAbove*deltaMax)
	}
	t.Logf("most walked in a fold %d, folds %d, swaps %d", most, st0.Folds, st0.Swaps)
}

// DeltaMax and ReplaceAbove so large that the delta's limits overflow int
// (8 x DeltaMax, ReplaceAbove x DeltaMax: a negative limit makes every batch
// fold, or wait for a fold) are refused with an error naming them.
func TestReview4HugeDeltaLimitsRefused(t *testing.T) {
	for _, c := range []struct{ deltaMax, replaceAbove int }{
		{math.MaxInt/8 + 1, 1},
		{1 << 31, 1 << 33},
	} {
		_, err := New(Config{Name: "t", MapName: "/tmp/users.map", Targets: []string{"/run/test.sock"},
			DeltaMax: c.deltaMax, ReplaceAbove: c.replaceAbove}, newFakeStore(nil), func(string) (Runtime, error) { return &fakeRuntime{}, nil })
		if err == nil || !strings.Contains(err.Error(), "DeltaMax") {
			t.Errorf("DeltaMax %d, ReplaceAbove %d: err %v, want one naming DeltaMax", c.deltaMax, c.replaceAbove, err)
		}
	}
	if _, err := New(Config{Name: "t", MapName: "/tmp/users.map", Targets: []string{"/run/test.sock"}, DeltaMax: 50_000, ReplaceAbove: 64},
		newFakeStore(nil), func(string) (Runtime, error) { return &fakeRuntime{}, nil }); err != nil {
		t.Errorf("the defaults refused: %v", err)
	}
}

// review4Seeds is how many seeds TestReview4FoldWalkBudgetModel runs.
var review4Seeds = 4

package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// hapModel is HAProxy 2.6's map semantics as RUNTIME-API.md measured them,
// for two maps (the base and the delta), shared by the target's two
// clients: a map is a list (an add appends, never replaces; the FIRST
// entry of a key routes), set and del hit every entry of a key in every
// version, and a plain add to the live version while another version is
// pending is lost at its commit. It records what HAProxy would have done
// wrong: a key added twice, an add lost at a commit.
type hapModel struct {
	mu      sync.Mutex
	base    string
	live    map[string][]runtime.Entry // map name -> live entries, in order
	pending map[string]bool            // a version of the map is being loaded
	lost    map[string]bool            // an add went to the live version while pending
	errs    []string
	// gate, when set, holds each swap of the base between its load and its
	// commit until it is closed.
	gate    func()
	noDelta bool   // HAProxy has no delta map: the single layout
	version string // show info's Version
	// fail, when set, is asked before each write call: true makes the call
	// apply half of its entries and fail.
	fail func() bool
}

func (m *hapModel) fault(format string, args ...any) {
	m.errs = append(m.errs, fmt.Sprintf(format, args...))
}

func (m *hapModel) faults() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.errs)
}

func (m *hapModel) has(name, k string) bool {
	return slices.ContainsFunc(m.live[name], func(e runtime.Entry) bool { return e.Key == k })
}

func (m *hapModel) add(name, k, v string) {
	if m.has(name, k) {
		m.fault("duplicate: %s added to %s, which holds it", k, name)
	}
	if m.pending[name] {
		m.lost[name] = true
		m.fault("lost: %s added to the live %s while a version is pending", k, name)
	}
	m.live[name] = append(m.live[name], runtime.Entry{Key: k, Value: v})
}

// routes is what a request for each user gets: the delta's first entry,
// else the base's first.
func (m *hapModel) routes() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for _, name := range []string{maps.DeltaPath(m.base), m.base} {
		for _, e := range m.live[name] {
			if _, ok := out[e.Key]; !ok {
				out[e.Key] = e.Value
			}
		}
	}
	return out
}

// modelRT is one client of a hapModel.
type modelRT struct{ m *hapModel }

func (c modelRT) Apply(_ context.Context, name string, ops []runtime.Op) ([]error, error) {
	m := c.m
	m.mu.Lock()
	defer m.mu.Unlock()
	res := make([]error, len(ops))
	if m.fail != nil && m.fail() {
		ops = ops[:len(ops)/2]
		defer func() {}()
		c.applyLocked(name, ops, res)
		return res[:len(ops)], errors.New("connection reset (injected)")
	}
	c.applyLocked(name, ops, res)
	return res, nil
}

func (c modelRT) applyLocked(name string, ops []runtime.Op, res []error) {
	m := c.m
	for i, op := range ops {
		switch op.Kind {
		case runtime.Add:
			m.add(name, op.Key, op.Value)
		case runtime.Set:
			if !m.has(name, op.Key) {
				res[i] = fmt.Errorf("%s: %w", op, runtime.ErrNotFound)
				continue
			}
			for j := range m.live[name] {
				if m.live[name][j].Key == op.Key {
					m.live[name][j].Value = op.Value
				}
			}
		case runtime.Del:
			if !m.has(name, op.Key) {
				res[i] = fmt.Errorf("%s: %w", op, runtime.ErrNotFound)
				continue
			}
			m.live[name] = slices.DeleteFunc(m.live[name], func(e runtime.Entry) bool { return e.Key == op.Key })
		}
	}
}

func (c modelRT) AddFrom(_ context.Context, name string, es runtime.Entries) error {
	m := c.m
	m.mu.Lock()
	defer m.mu.Unlock()
	n := es.Len()
	failed := m.fail != nil && m.fail()
	if failed {
		n /= 2
	}
	for i := range n {
		k, v := es.At(i)
		m.add(name, k, v)
	}
	if failed {
		return errors.New("payload: connection reset (injected)")
	}
	return nil
}

func (c modelRT) Replace(ctx context.Context, name string, es []runtime.Entry) error {
	m := c.m
	m.mu.Lock()
	m.pending[name] = true
	gate := m.gate
	m.mu.Unlock()
	if gate != nil && name == m.base {
		gate()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil && m.fail() {
		m.pending[name] = false // cleared, not committed
		return errors.New("replace: connection reset (injected)")
	}
	// The commit: the live version's adds made meanwhile are gone. (Sets
	// and dels made meanwhile touched the new version too; the syncer sends
	// none to a map being swapped, so they are not modelled.)
	m.live[name] = slices.Clone(es)
	m.pending[name] = false
	return nil
}

func (c modelRT) ReplaceFrom(ctx context.Context, name string, es runtime.Entries) error {
	return c.Replace(ctx, name, listOf(es))
}

func (c modelRT) Dump(_ context.Context, name string, fn func(k, v string) error) error {
	m := c.m
	m.mu.Lock()
	es := slices.Clone(m.live[name])
	m.mu.Unlock()
	for _, e := range es {
		if err := fn(e.Key, e.Value); err != nil {
			return err
		}
	}
	return nil
}

func (c modelRT) MapEntryCount(_ context.Context, name string) (int, error) {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	return len(c.m.live[name]), nil
}

func (c modelRT) Maps(context.Context) ([]runtime.MapStatus, error) {
	if c.m.noDelta {
		return []runtime.MapStatus{{Path: c.m.base}}, nil
	}
	return []runtime.MapStatus{{Path: c.m.base}, {Path: maps.DeltaPath(c.m.base)}}, nil
}
func (c modelRT) ClearUncommitted(context.Context, string) (int, error) { return 0, nil }
func (c modelRT) Close() error                                          { return nil }
func (c modelRT) Backends(context.Context) ([]string, error)            { return nil, nil }
func (c modelRT) Info(context.Context) (runtime.Info, error) {
	return runtime.Info{Pid: 1, Version: c.m.version}, nil
}

// newModelLoop is a syncer with one target in the delta layout, with two
// clients (background folds) on a hapModel, after its first full sync.
func newModelLoop(t *testing.T, hash map[string]string, deltaMax, replaceAbove int, noDelta bool, version string) (*Syncer, *fakeStore, *hapModel) {
	t.Helper()
	st := newFakeStore(hash)
	m := &hapModel{live: map[string][]runtime.Entry{}, pending: map[string]bool{}, lost: map[string]bool{}, noDelta: noDelta, version: version}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/test.sock"}, MaxDeleteShare: 1,
		ClaimTTL: time.Hour, DeltaMax: deltaMax, ReplaceAbove: replaceAbove, CheckEvery: time.Millisecond, Logger: slog.New(slog.NewTextHandler(modelLog, nil))},
		st, func(string) (Runtime, error) { return &modelRT{m}, nil })
	if err != nil {
		t.Fatal(err)
	}
	m.base = s.cfg.MapName
	if s.targets[0].rtDelta == nil {
		t.Fatal("no second client")
	}
	if !s.targets[0].holdLease(context.Background()) {
		t.Fatal("no lease")
	}
	if err := s.fullSync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, st, m
}

// Churn of every kind (new users, moves, deletes, users deleted and added
// back) through the target's own step, with background folds whose swaps
// are held open at random while changes go on: HAProxy never gets a key
// added twice nor an add lost at a commit, and in the end routes as the
// state says.
func TestModelChurnNeverDuplicatesNorLosesAdds(t *testing.T) {
	for seed := range uint64(48) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			failRate := 0
			if seed%2 == 1 {
				failRate = 6 // one write call in six fails half-way
			}
			r := rand.New(rand.NewPCG(seed, 7))
			layouts := []struct {
				noDelta bool
				version string
			}{{false, "2.6.12"}, {true, "2.6.12"}, {false, "3.0.11"}, {true, "3.0.11"}}
			lay := layouts[seed/2%4]
			s, st, m := newModelLoop(t, users(30, "s0"), 4, 3, lay.noDelta, lay.version)
			tg := s.targets[0]
			ctx := context.Background()
			var held []chan struct{}
			var heldMu sync.Mutex
			m.gate = func() {
				ch := make(chan struct{})
				heldMu.Lock()
				held = append(held, ch)
				heldMu.Unlock()
				<-ch
			}
			release := func(all bool) {
				heldMu.Lock()
				defer heldMu.Unlock()
				for len(held) > 0 && (all || r.IntN(2) == 0) {
					close(held[0])
					held = held[1:]
				}
			}
			publish := func() {
				_, applied, _ := s.state.position()
				changes, _, err := st.ReadLog(ctx, applied, int64(1+r.IntN(20)), 0)
				if err != nil {
					t.Fatal(err)
				}
				if len(changes) > 0 {
					s.publish(changes)
				}
			}
			var failMu sync.Mutex
			rf := rand.New(rand.NewPCG(seed, 8))
			m.fail = func() bool {
				failMu.Lock()
				defer failMu.Unlock()
				return failRate > 0 && rf.IntN(failRate) == 0
			}
			step := func() {
				done := make(chan error, 1)
				go func() {
					if tg.needFull {
						done <- tg.fullSync(ctx)
						return
					}
					done <- tg.step(ctx)
				}()
				for {
					select {
					case err := <-done:
						// With failures injected (odd seeds), a fold that
						// failed before they stopped may end in a later step.
						if err != nil && seed%2 == 0 {
							t.Fatalf("step: %v", err)
						}
						return
					default:
					}
					release(false)
					heldMu.Lock()
					n := len(held)
					heldMu.Unlock()
					if n == 0 {
						select {
						case err := <-done:
							done <- err
						case <-time.After(time.Millisecond): // perturbation only
						}
					}
				}
			}
			for round := 0; round < 150; round++ {
				if round == 75 && seed%8 == 0 { // the target falls out of the ring's reach
					for i := range 4100 {
						st.set(fmt.Sprintf("u%d", r.IntN(45)), fmt.Sprint("s", i%4))
						_, applied, _ := s.state.position()
						changes, _, err := st.ReadLog(ctx, applied, 1, 0)
						if err != nil {
							t.Fatal(err)
						}
						s.publish(changes)
					}
					s.state.streaming.Store(r.IntN(2) == 0)
				}
				if round == 90 {
					s.state.streaming.Store(false)
				}
				for range r.IntN(8) {
					u := fmt.Sprintf("u%d", r.IntN(45))
					if r.IntN(4) == 0 {
						st.del(u)
					} else {
						st.set(u, fmt.Sprint("s", r.IntN(4)))
					}
				}
				publish()
				tg.lastCheck = time.Now()
				if r.IntN(10) != 0 {
					tg.lastLive = time.Now()
				} else {
					tg.lastLive = time.Time{} // a drift check this step
				}
				step()
				if f := m.faults(); len(f) > 0 {
					t.Fatalf("round %d: %v", round, f)
				}
			}
			failMu.Lock()
			failRate = 0
			failMu.Unlock()
			for range 200 {
				publish()
				release(true)
				step()
				release(true)
				if tg.folding == nil && tg.seq == s.state.seq && st.lastID() == tg.applied {
					break
				}
			}
			release(true)
			if err := tg.waitFold(ctx); err != nil {
				t.Fatal(err)
			}
			if f := m.faults(); len(f) > 0 {
				t.Fatalf("%v", f)
			}
			if got, want := m.routes(), stateMap(s); !equalMaps(got, want) {
				t.Fatalf("routes differ from the state:\n got %v\nwant %v", got, want)
			}
			st0 := s.Status().Targets[0]
			t.Logf("folds %d swaps %d full syncs %d drift %d", st0.Folds, st0.Swaps, st0.FullSyncs, st0.Drift)
			if seed%2 == 0 && st0.Drift != 0 { // no write failed: the drift checks must find none
				t.Fatalf("drift %d reported, with no write failed", st0.Drift)
			}
		})
	}
}

// A drift check that runs while the target has batches to apply (the reader
// published them after the target's last step) takes those changes for what
// the loop applies next, not for drift: no full sync, no drift counted.
func TestDriftCheckSkipsChangesNotYetApplied(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprint("delta=", delta), func(t *testing.T) {
			s, st, rt, _ := newLoop(t, users(200, "s1"), nil)
			if delta {
				rt.delta = map[string]string{}
			}
			ctx := context.Background()
			if err := s.fullSync(ctx); err != nil {
				t.Fatal(err)
			}
			tg := s.targets[0]
			st.set("new1", "s2") // a new user
			st.del("u1")         // a delete
			st.set("u2", "s3")   // a move
			for i := range 100 { // more moves than a drift check puts back one by one (ReplaceAbove)
				st.set(fmt.Sprintf("u%d", 10+i), "s4")
			}
			_, applied, _ := s.state.position()
			changes, _, err := st.ReadLog(ctx, applied, 100, 0)
			if err != nil {
				t.Fatal(err)
			}
			s.publish(changes) // published, not yet applied by the target
			tg.forceLive.Store(true)
			if err := tg.checkLive(ctx); err != nil {
				t.Fatal(err)
			}
			if d := s.Status().Targets[0].Drift; tg.needFull || d != 0 {
				t.Fatalf("pending changes taken for drift: full sync due %v, drift %d", tg.needFull, d)
			}
			follow(t, s)
			if !equalMaps(routes(rt), stateMap(s)) {
				t.Fatal("the live maps do not route as the state says")
			}
		})
	}
}

// A drift check due while the target is out of the ring's reach (waiting
// for a bulk stream's end) is put off: what the live maps lack then is not
// drift, and the target catches up with one fold, not a full sync.
func TestDriftCheckWaitsWhileBehindTheRing(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(100, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg := s.targets[0]
	swaps, fulls := rt.replaced, s.Status().Targets[0].FullSyncs
	outrunRing(t, s, st)
	s.state.streaming.Store(true)
	tg.forceLive.Store(true) // a drift check is due
	if err := tg.step(ctx); err != nil {
		t.Fatal(err)
	}
	if tg.needFull || s.Status().Targets[0].Drift != 0 {
		t.Fatalf("behind the ring, a drift check: full sync due %v, drift %d; want to wait for the stream's end", tg.needFull, s.Status().Targets[0].Drift)
	}
	s.state.streaming.Store(false)
	if err := tg.step(ctx); err != nil {
		t.Fatal(err)
	}
	if tg.needFull || s.Status().Targets[0].FullSyncs != fulls || rt.replaced != swaps+1 || !equalMaps(routes(rt), stateMap(s)) {
		t.Fatalf("after the stream: full sync due %v, %d full syncs, %d swaps (want 0, 1)", tg.needFull, s.Status().Targets[0].FullSyncs-fulls, rt.replaced-swaps)
	}
	if !tg.forceLive.Load() {
		t.Fatal("the drift check put off is not due any more")
	}
}

// A wait for a bulk stream's end that a full sync cut short (HAProxy
// restarted meanwhile) does not count against a later wait: the next time
// the target falls out of the ring's reach during a stream, it waits again.
func TestBehindWaitEndsWithAFullSync(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(100, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg := s.targets[0]
	outrunRing(t, s, st)
	s.state.streaming.Store(true)
	if err := tg.step(ctx); err != nil {
		t.Fatal(err)
	}
	if tg.behindSince.IsZero() {
		t.Fatal("not waiting for the stream's end")
	}
	tg.behindSince = tg.behindSince.Add(-maxBehindWait) // the wait went on a while
	tg.doubt(reasonHAProxyRestart)                      // and HAProxy restarted
	if err := tg.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	swaps := rt.replaced
	outrunRing(t, s, st) // another stream, later
	if err := tg.step(ctx); err != nil {
		t.Fatal(err)
	}
	if rt.replaced != swaps || tg.needFull {
		t.Fatalf("behind the ring during a second stream: %d swaps, full sync %v; want to wait for its end", rt.replaced-swaps, tg.needFull)
	}
}

// modelLog is where the model tests' syncers log: MODEL_LOG=1 shows them.
var modelLog io.Writer = io.Discard

func init() {
	if os.Getenv("MODEL_LOG") != "" {
		modelLog = os.Stderr
	}
}

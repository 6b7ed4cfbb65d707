package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// lagModel is HAProxy's two maps for the lag tests, fast at 100k+ keys: per
// map, per key, its entries' values in order (the first routes; an add of
// a key held is a fault, and so is an add to the live version while a
// version is pending). Every write re-reads the routes of the keys it
// touched and checks each user is routed to a value it had at or after the
// value it was routed to before (hist: each user's values in log order).
type lagModel struct {
	mu      sync.Mutex
	base    string
	noDelta bool
	version string
	maps    map[string]map[string][]string
	pending map[string]bool
	gate    func()
	hist    map[string][]string // user -> its values in log order ("" absent)
	cur     map[string]int      // user -> index in hist of the value it routes to
	errs    []string
}

func (m *lagModel) delta() string { return maps.DeltaPath(m.base) }

func (m *lagModel) fault(format string, args ...any) {
	if len(m.errs) < 20 {
		m.errs = append(m.errs, fmt.Sprintf(format, args...))
	}
}

func (m *lagModel) faults() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.errs...)
}

func (m *lagModel) route(k string) string {
	if vs := m.maps[m.delta()][k]; len(vs) > 0 {
		return vs[0]
	}
	if vs := m.maps[m.base][k]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// record appends a value of user to its history (the caller holds mu).
func (m *lagModel) record(user, v string) {
	if _, ok := m.hist[user]; !ok {
		m.hist[user] = []string{""}
	}
	m.hist[user] = append(m.hist[user], v)
}

// observe checks user's route now against its history.
func (m *lagModel) observe(user string) {
	v := m.route(user)
	h, ok := m.hist[user]
	if !ok {
		h = []string{""}
	}
	for j := m.cur[user]; j < len(h); j++ {
		if h[j] == v {
			m.cur[user] = j
			return
		}
	}
	m.fault("%s routed to %q: not a value it had at or after the one it was routed to (%q, #%d of %v)", user, v, h[m.cur[user]], m.cur[user], h)
}

func (m *lagModel) add(name, k, v string) {
	if len(m.maps[name][k]) > 0 {
		m.fault("duplicate: %s added to %s, which holds it", k, name)
	}
	if m.pending[name] {
		m.fault("lost: %s added to the live %s while a version is pending", k, name)
	}
	m.maps[name][k] = append(m.maps[name][k], v)
}

func (m *lagModel) routes() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for _, name := range []string{m.base, m.delta()} {
		for k := range m.maps[name] {
			out[k] = m.route(k)
		}
	}
	return out
}

type lagRT struct{ m *lagModel }

func (c *lagRT) Apply(_ context.Context, name string, ops []runtime.Op) ([]error, error) {
	m := c.m
	m.mu.Lock()
	defer m.mu.Unlock()
	res := make([]error, len(ops))
	for i, op := range ops {
		vs := m.maps[name][op.Key]
		switch op.Kind {
		case runtime.Add:
			m.add(name, op.Key, op.Value)
		case runtime.Set:
			if len(vs) == 0 {
				res[i] = fmt.Errorf("%s: %w", op, runtime.ErrNotFound)
				continue
			}
			for j := range vs {
				vs[j] = op.Value
			}
		case runtime.Del:
			if len(vs) == 0 {
				res[i] = fmt.Errorf("%s: %w", op, runtime.ErrNotFound)
				continue
			}
			delete(m.maps[name], op.Key)
		}
		m.observe(op.Key)
	}
	return res, nil
}

func (c *lagRT) AddFrom(_ context.Context, name string, es runtime.Entries) error {
	m := c.m
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range es.Len() {
		k, v := es.At(i)
		m.add(name, k, v)
		m.observe(k)
	}
	return nil
}

func (c *lagRT) Replace(_ context.Context, name string, es []runtime.Entry) error {
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
	old := m.maps[name]
	next := make(map[string][]string, len(es))
	for _, e := range es {
		next[e.Key] = append(next[e.Key], e.Value)
	}
	m.maps[name] = next
	m.pending[name] = false
	for k := range old {
		m.observe(k)
	}
	for k := range next {
		if _, ok := old[k]; !ok {
			m.observe(k)
		}
	}
	return nil
}

func (c *lagRT) ReplaceFrom(ctx context.Context, name string, es runtime.Entries) error {
	return c.Replace(ctx, name, listOf(es))
}

func (c *lagRT) Dump(_ context.Context, name string, fn func(k, v string) error) error {
	c.m.mu.Lock()
	var es []runtime.Entry
	for k, vs := range c.m.maps[name] {
		for _, v := range vs {
			es = append(es, runtime.Entry{Key: k, Value: v})
		}
	}
	c.m.mu.Unlock()
	for _, e := range es {
		if err := fn(e.Key, e.Value); err != nil {
			return err
		}
	}
	return nil
}

func (c *lagRT) MapEntryCount(_ context.Context, name string) (int, error) {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	n := 0
	for _, vs := range c.m.maps[name] {
		n += len(vs)
	}
	return n, nil
}

func (c *lagRT) Maps(context.Context) ([]runtime.MapStatus, error) {
	if c.m.noDelta {
		return []runtime.MapStatus{{Path: c.m.base}}, nil
	}
	return []runtime.MapStatus{{Path: c.m.base}, {Path: c.m.delta()}}, nil
}
func (c *lagRT) ClearUncommitted(context.Context, string) (int, error) { return 0, nil }
func (c *lagRT) Close() error                                          { return nil }
func (c *lagRT) Backends(context.Context) ([]string, error)            { return nil, nil }
func (c *lagRT) Info(context.Context) (runtime.Info, error) {
	return runtime.Info{Pid: 1, Version: c.m.version}, nil
}

// lagConfig is one layout for the lag tests.
type lagConfig struct {
	noDelta    bool
	version    string
	twoClients bool
}

func (c lagConfig) String() string {
	return fmt.Sprintf("delta=%v,version=%s,rtDelta=%v", !c.noDelta, c.version, c.twoClients)
}

var lagConfigs = []lagConfig{
	{false, "2.6.12", true}, {false, "2.6.12", false},
	{true, "2.6.12", true}, {true, "2.6.12", false},
	{true, "3.0.11", true},
}

// newLagLoop is a syncer with one target on a lagModel that already routes
// hash, after its first full sync.
func newLagLoop(t *testing.T, hash map[string]string, cfg lagConfig, deltaMax int) (*Syncer, *fakeStore, *lagModel) {
	t.Helper()
	st := newFakeStore(hash)
	m := &lagModel{noDelta: cfg.noDelta, version: cfg.version, maps: map[string]map[string][]string{},
		pending: map[string]bool{}, hist: map[string][]string{}, cur: map[string]int{}}
	one := &lagRT{m}
	dial := func(string) (Runtime, error) {
		if cfg.twoClients {
			return &lagRT{m}, nil
		}
		return one, nil
	}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/test.sock"}, MaxDeleteShare: 1,
		ClaimTTL: time.Hour, Heartbeat: 5 * time.Millisecond, DeltaMax: deltaMax, ReplaceAbove: 64, CheckEvery: time.Hour, ReconcileEvery: time.Hour,
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
	if (s.targets[0].rtDelta != nil) != cfg.twoClients {
		t.Fatalf("second client: %v, want %v", s.targets[0].rtDelta != nil, cfg.twoClients)
	}
	if !s.targets[0].holdLease(context.Background()) {
		t.Fatal("no lease")
	}
	if err := s.fullSync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, st, m
}

// publishLog publishes the store's log after the state's position to the
// state in reads of up to max changes (as the reader does), recording each
// change in the model's history first. The log's IDs are "N-0", N its
// 1-based index.
func publishLog(t *testing.T, s *Syncer, st *fakeStore, m *lagModel, r *rand.Rand, max int) {
	t.Helper()
	for {
		_, applied, _ := s.state.position()
		n := 0
		if applied != maps.ZeroID {
			var err error
			if n, err = strconv.Atoi(strings.TrimSuffix(applied, "-0")); err != nil {
				t.Fatal(err)
			}
		}
		st.mu.Lock()
		k := min(1+r.IntN(max), len(st.log)-n)
		changes := append([]maps.Change(nil), st.log[n:n+k]...)
		st.mu.Unlock()
		if k == 0 {
			return
		}
		// Under the model's lock: a swap running meanwhile commits only
		// once the values it may have read are in the history.
		m.mu.Lock()
		for _, c := range changes {
			v := ""
			if c.Op == maps.OpSet {
				v = c.Shard
			}
			m.record(c.User, v)
		}
		err := s.publish(changes)
		m.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A target that lags by more than applyMax changes (bulk imports of new
// users mixed with moves and deletes), in every layout, with and without a
// second client (background folds), with the base's swaps held open at
// random while steps go on: it catches up in steps of about applyMax; no
// user is ever routed to an older value than one it was routed to, HAProxy
// never gets a key added twice nor an add lost at a commit, and in the end
// the live maps route as the state says, with no full sync and no drift.
func TestReview3LagAboveApplyMaxModel(t *testing.T) {
	// REVIEW3_SEEDS=n runs n seeds per layout (1 by default).
	seeds := uint64(1)
	if n, err := strconv.Atoi(os.Getenv("REVIEW3_SEEDS")); err == nil && n > 0 {
		seeds = uint64(n)
	}
	for _, cfg := range lagConfigs {
		for seed := range seeds {
			t.Run(fmt.Sprintf("%v/seed=%d", cfg, seed), func(t *testing.T) {
				runLagModel(t, cfg, seed)
			})
		}
	}
}

func runLagModel(t *testing.T, cfg lagConfig, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 3))
	const old = 3000
	s, st, m := newLagLoop(t, users(old, "s0"), cfg, 5000)
	tg := s.targets[0]
	ctx := context.Background()
	var held []chan struct{}
	var heldMu sync.Mutex
	m.gate = func() {
		if r2 := rand.N(3); r2 == 0 {
			return
		}
		ch := make(chan struct{})
		heldMu.Lock()
		held = append(held, ch)
		heldMu.Unlock()
		<-ch
	}
	release := func(all bool) {
		heldMu.Lock()
		defer heldMu.Unlock()
		for len(held) > 0 && (all || rand.N(2) == 0) {
			close(held[0])
			held = held[1:]
		}
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
		// Swaps held stay held across steps (changes go on meanwhile)
		// unless the step waits for one.
		for tick := 0; ; tick++ {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("step: %v", err)
				}
				return
			case <-time.After(time.Millisecond):
				if tick > 20 {
					release(false)
				}
			}
		}
	}
	newUsers := 0
	existing := func() string {
		if newUsers > 0 && r.IntN(2) == 0 {
			return fmt.Sprintf("n%d", r.IntN(newUsers))
		}
		return fmt.Sprintf("u%d", r.IntN(old+50))
	}
	churn := func(n int) {
		for range n {
			if u := existing(); r.IntN(5) == 0 {
				st.del(u)
			} else {
				st.set(u, fmt.Sprint("s", r.IntN(4)))
			}
		}
	}
	// A lag just past applyMax leaves a rest small enough to go to the
	// delta while a fold decided on the prefix runs.
	over := func() int {
		if r.IntN(2) == 0 {
			return applyMax + r.IntN(1500)
		}
		return applyMax + r.IntN(applyMax)
	}
	maxLag, prefixes := 0, 0
	for round := range 18 {
		switch round % 4 {
		case 0:
			// A bulk import: more than applyMax new users, some moves and
			// deletes of older ones in the middle.
			for i := range over() {
				st.set(fmt.Sprintf("n%d", newUsers), fmt.Sprint("s", r.IntN(4)))
				newUsers++
				if i%(50+r.IntN(200)) == 0 {
					churn(1 + r.IntN(100))
				}
			}
		case 2:
			// A reassignment: more than applyMax moves of users held.
			for range applyMax + r.IntN(1500) {
				st.set(existing(), fmt.Sprint("s", r.IntN(4)))
			}
		default:
			// Churn: sets only (they go to the delta during a background
			// fold), or with deletes (they wait for the fold).
			for range r.IntN(400) {
				if u := existing(); round%5 == 4 && r.IntN(12) == 0 {
					st.del(u)
				} else {
					st.set(u, fmt.Sprint("s", r.IntN(4)))
				}
			}
		}
		if r.IntN(3) == 0 {
			release(false)
		}
		s.state.streaming.Store(r.IntN(3) == 0)
		publishLog(t, s, st, m, r, 1000)
		for range r.IntN(4) + round%2 {
			if lag := s.state.pendingAfter(tg.seq); lag > applyMax+1000 {
				prefixes++
				maxLag = max(maxLag, lag)
			}
			tg.lastCheck = time.Now()
			step()
			if f := m.faults(); len(f) > 0 {
				t.Fatalf("round %d: %v", round, f)
			}
		}
	}
	s.state.streaming.Store(false)
	for i := 0; tg.folding != nil || tg.seq != s.state.seq || tg.needFull; i++ {
		if i > 200 {
			t.Fatalf("not caught up after %d steps", i)
		}
		tg.lastCheck = time.Now()
		step()
	}
	release(true)
	if f := m.faults(); len(f) > 0 {
		t.Fatal(f)
	}
	if got, want := m.routes(), stateMap(s); !equalMaps(got, want) {
		d := 0
		for k, v := range want {
			if got[k] != v && d < 10 {
				d++
				t.Errorf("%s routed to %q, state %q", k, got[k], v)
			}
		}
		t.Fatalf("routes differ from the state: %d routed, %d in the state", len(got), len(want))
	}
	// A drift check of the live maps finds nothing.
	tg.forceLive.Store(true)
	tg.lastCheck = time.Now()
	step()
	st0 := s.Status().Targets[0]
	if st0.Drift != 0 || st0.FullSyncs != 1 || tg.needFull {
		t.Fatalf("drift %d, full syncs %d (want 1), in doubt %v", st0.Drift, st0.FullSyncs, tg.needFull)
	}
	t.Logf("max lag %d, steps on a prefix %d, users %d, folds %d, swaps %d", maxLag, prefixes, len(stateMap(s)), st0.Folds, st0.Swaps)
}

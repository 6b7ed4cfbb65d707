package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	runtime2 "runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"weak"

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
	// deltaWrites counts the entries added or set in the delta.
	deltaWrites int
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
		if name == m.delta() && op.Kind != runtime.Del {
			m.deltaWrites++
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
		if name == m.delta() {
			m.deltaWrites++
		}
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

// heldSteps makes m hold the base swaps it is given open at random (one in
// free goes through at once) and returns step, which runs the target's step
// (its full sync when one is due), and release, which lets held swaps go
// (all, or each at random). Swaps held stay held across steps, changes going
// on meanwhile, unless a step waits for one: then they are let go at random.
func heldSteps(t *testing.T, ctx context.Context, m *lagModel, tg *target, free int) (step func(), release func(all bool)) {
	return heldStepsTolerating(t, ctx, m, tg, free, nil)
}

// heldStepsTolerating is heldSteps whose step does not fail on an error
// tolerate accepts (nil: none).
func heldStepsTolerating(t *testing.T, ctx context.Context, m *lagModel, tg *target, free int, tolerate func(error) bool) (step func(), release func(all bool)) {
	var held []chan struct{}
	var heldMu sync.Mutex
	m.gate = func() {
		if rand.N(free) == 0 {
			return
		}
		ch := make(chan struct{})
		heldMu.Lock()
		held = append(held, ch)
		heldMu.Unlock()
		<-ch
	}
	release = func(all bool) {
		heldMu.Lock()
		defer heldMu.Unlock()
		for len(held) > 0 && (all || rand.N(2) == 0) {
			close(held[0])
			held = held[1:]
		}
	}
	step = func() {
		done := make(chan error, 1)
		go func() {
			if tg.needFull {
				done <- tg.fullSync(ctx)
				return
			}
			done <- tg.step(ctx)
		}()
		for tick := 0; ; tick++ {
			select {
			case err := <-done:
				if err != nil && (tolerate == nil || !tolerate(err)) {
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
	return step, release
}

// catchUpHeld ends a stream and steps the target (see heldSteps) until it
// has caught up with the state and no fold runs, letting every held swap
// go, in at most maxSteps steps; then it lets go any swap still held.
func catchUpHeld(t *testing.T, s *Syncer, tg *target, step func(), release func(all bool), maxSteps int) {
	s.state.streaming.Store(false)
	for i := 0; tg.folding != nil || tg.seq != s.state.seq || tg.needFull; i++ {
		if i > maxSteps {
			t.Fatalf("not caught up after %d steps", i)
		}
		if tg.folding != nil { // a step waits for it only so long
			for done := tg.folding.done; ; {
				release(true)
				select {
				case <-done:
				case <-time.After(time.Millisecond):
					continue
				}
				break
			}
		}
		tg.lastCheck = time.Now()
		step()
	}
	release(true)
}

func runLagModel(t *testing.T, cfg lagConfig, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 3))
	const old = 3000
	s, st, m := newLagLoop(t, users(old, "s0"), cfg, 5000)
	tg := s.targets[0]
	ctx := context.Background()
	step, release := heldSteps(t, ctx, m, tg, 3)
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
	rounds := 10 // about 40 s under -race for the five layouts
	if os.Getenv("REVIEW3_SEEDS") != "" {
		rounds = 18
	}
	for round := range rounds {
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
	catchUpHeld(t, s, tg, step, release, 200)
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

// Hostile names through publish: multi-byte UTF-8, the longest name
// allowed, a user twice in one batch (a drift page may list one twice),
// deletes, no-ops (a set to the value held, a delete of a user absent):
// each effective change reads back its own user and values, the views stay
// the same after later batches, and a target applying the batches ends
// with its live map equal to the state.
func TestReview3BatchNamesHostile(t *testing.T) {
	s, _, rt, _ := newLoop(t, map[string]string{"keep": "s1", "gone": "s1", "same": "s2"}, nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("é", maps.MaxUserLen/2) // 256 bytes
	if len(long) != maps.MaxUserLen {
		t.Fatalf("long name of %d bytes", len(long))
	}
	ws := []want{
		{"日本語ユーザー", "s2"}, {long, "s3"}, {"same", "s2"}, {"absent", ""}, {"gone", ""},
		{"twice", "s1"}, {"keep", "s4"}, {"twice", "s2"}, {"x", "s1"}, {"twice", ""},
	}
	type rec struct {
		user       string
		prev, next string
	}
	exp := []rec{
		{"日本語ユーザー", "", "s2"}, {long, "", "s3"}, {"gone", "s1", ""},
		{"twice", "", "s1"}, {"keep", "s1", "s4"}, {"twice", "s1", "s2"}, {"x", "", "s1"}, {"twice", "s2", ""},
	}
	from := s.state.seq
	if n, err := s.state.publish(ws, "1-0", nil); err != nil || n != len(exp) {
		t.Fatalf("publish: %d changes, %v; want %d", n, err, len(exp))
	}
	bs, ok, _ := s.state.since(from)
	if !ok || len(bs) != 1 {
		t.Fatalf("%d batches, %v", len(bs), ok)
	}
	b := bs[0]
	shard := func(i int32) string {
		if i == none {
			return ""
		}
		var sh string
		s.state.read(func(v view) { sh = v.shard(i) })
		return sh
	}
	read := func() []rec {
		var got []rec
		for _, c := range b.changes {
			got = append(got, rec{b.user(c), shard(c.prev), shard(c.next)})
		}
		return got
	}
	got := read()
	if fmt.Sprint(got) != fmt.Sprint(exp) {
		t.Fatalf("batch reads back\n %q\nwant\n %q", got, exp)
	}
	// Later batches, a compaction of the state's table: the views hold.
	epoch := s.state.users.epoch
	for i := range 1000 {
		var set, del []want
		for j := range 10 {
			u := fmt.Sprintf("later%d-%d-%s", i, j, long[:200])
			set = append(set, want{u, "s1"})
			del = append(del, want{u, ""})
		}
		set = append(set, want{"twice", fmt.Sprint("s", i%3)})
		if _, err := s.state.publish(set, fmt.Sprintf("%d-0", i+2), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := s.state.publish(del, fmt.Sprintf("%d-1", i+2), nil); err != nil {
			t.Fatal(err)
		}
	}
	if s.state.users.epoch == epoch {
		t.Fatal("the state's table never compacted")
	}
	if again := read(); fmt.Sprint(again) != fmt.Sprint(exp) {
		t.Fatalf("batch changed after later batches:\n %q", again)
	}
	follow(t, s)
	if !equalMaps(rt.live, stateMap(s)) {
		t.Fatalf("live map %v, state %v", rt.live, stateMap(s))
	}
}

// A user's name held by the target past its batch (the delta's keys, the
// users written during a fold) is its own copy, not a view of its batch's
// names: one key must not keep a whole batch of names (up to BatchMax
// names of up to MaxUserLen bytes) alive after the ring dropped it.
func TestReview3DeltaKeysDoNotPinBatches(t *testing.T) {
	s, _, rt, _ := newLoop(t, users(10, "s1"), nil)
	rt.delta = map[string]string{}
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg := s.targets[0]
	ws := []want{{"u1", "s2"}} // a move: to the delta
	for i := range 1000 {
		ws = append(ws, want{fmt.Sprintf("%s-%d", strings.Repeat("n", 200), i), "s3"}) // new: added to the base
	}
	from := s.state.seq
	if _, err := s.state.publish(ws, "1-0", nil); err != nil {
		t.Fatal(err)
	}
	pinned := func() weak.Pointer[byte] {
		bs, _, _ := s.state.since(from)
		return weak.Make(&bs[0].names[0])
	}()
	follow(t, s)
	if _, ok := tg.deltaKeys["u1"]; !ok || !equalMaps(routes(rt), stateMap(s)) {
		t.Fatalf("u1 not in the delta (%v), or routes differ from the state", tg.deltaKeys)
	}
	// The fake HAProxy's maps hold copies, as a real one does.
	for _, m := range []*map[string]string{&rt.live, &rt.delta} {
		c := map[string]string{}
		for k, v := range *m {
			c[strings.Clone(k)] = strings.Clone(v)
		}
		*m = c
	}
	rt.applied = nil
	// The batch leaves the ring.
	for i := range 4100 {
		if _, err := s.state.publish([]want{{"u2", fmt.Sprint("s", i%3)}}, fmt.Sprintf("%d-0", i+2), nil); err != nil {
			t.Fatal(err)
		}
	}
	runtime2.GC()
	runtime2.GC()
	if pinned.Value() != nil {
		t.Fatalf("the batch's %d bytes of names are still alive, held by the delta's key u1", len(ws)*200)
	}
	runtime2.KeepAlive(tg)
}

// A fold decided on the first applyMax changes of a long lag (a background
// one: the delta layout with a second client) brings the whole state live,
// the batches past the prefix included; a change published during the swap
// goes to the delta and stays there after it; no user is routed backwards;
// the target ends at the state's position with the maps routing as the
// state says.
func TestReview3FoldOnPrefixThenRestToDelta(t *testing.T) {
	const n = 60_000
	s, st, m := newLagLoop(t, users(n, "s0"), lagConfig{false, "2.6.12", true}, 5000)
	tg := s.targets[0]
	ctx := context.Background()
	entered, open := make(chan struct{}, 1), make(chan struct{})
	m.gate = func() { entered <- struct{}{}; <-open }
	r := rand.New(rand.NewPCG(1, 1))
	for i := range applyMax {
		st.set(fmt.Sprintf("u%d", i), "s1") // 50 reads of 1000: the prefix
	}
	for i := range 100 {
		st.set(fmt.Sprintf("u%d", i), "s2")          // users of the prefix, again
		st.set(fmt.Sprintf("u%d", applyMax+i), "s2") // and others
	}
	publishLog(t, s, st, m, r, 1000)
	if s.state.pendingAfter(tg.seq) <= applyMax {
		t.Fatal("lag not past applyMax")
	}
	tg.lastCheck = time.Now()
	if err := tg.step(ctx); err != nil {
		t.Fatal(err)
	}
	if tg.folding == nil {
		t.Fatal("the prefix did not start a background fold")
	}
	<-entered // the swap holds the state after every batch published so far
	tg.lastCheck = time.Now()
	if err := tg.step(ctx); err != nil { // the rest: to the delta
		t.Fatal(err)
	}
	if tg.folding == nil {
		t.Fatal("the fold ended with its swap held")
	}
	st.set("u0", "s3")
	st.set("u1", "s1") // back to a value it had
	publishLog(t, s, st, m, r, 1000)
	tg.lastCheck = time.Now()
	if err := tg.step(ctx); err != nil {
		t.Fatal(err)
	}
	close(open)
	for i := 0; tg.folding != nil || tg.seq != s.state.seq; i++ {
		if i > 20 {
			t.Fatalf("not caught up: seq %d, state %d, folding %v", tg.seq, s.state.seq, tg.folding != nil)
		}
		if tg.folding != nil {
			<-tg.folding.done // a step waits for it only so long
		}
		tg.lastCheck = time.Now()
		if err := tg.step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if f := m.faults(); len(f) > 0 {
		t.Fatal(f)
	}
	if got, want := m.routes(), stateMap(s); !equalMaps(got, want) {
		t.Fatalf("routes differ from the state: u0 %q/%q, u1 %q/%q, u50000 %q/%q", got["u0"], want["u0"], got["u1"], want["u1"], got["u50000"], want["u50000"])
	}
	if len(tg.deltaKeys) != 2 || tg.needFull {
		t.Fatalf("delta keys %v (want u0 and u1), in doubt %v", tg.deltaKeys, tg.needFull)
	}
}

// Frozen lists sorted and read outside the state's lock (a swap's, in a
// background fold's goroutine; the map file's) while the reader publishes
// new users and deletes that make the table grow and compact: each list
// stays in key order with the names and shards it was taken with (run
// with -race).
func TestReview3SortedListsWhileReaderPublishes(t *testing.T) {
	st := newState()
	l := newLoading(0)
	for i := range 5000 {
		if err := l.add(fmt.Sprintf("base%05d-%s", i, strings.Repeat("x", 150)), fmt.Sprint("s", i%3)); err != nil {
			t.Fatal(err)
		}
	}
	st.install(l, "0-0")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // the reader
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			var set, del []want
			for j := range 50 {
				u := fmt.Sprintf("new%d-%d-%s", i, j, strings.Repeat("y", 150))
				set = append(set, want{u, fmt.Sprint("s", j%4)})
				del = append(del, want{u, ""})
			}
			if _, err := st.publish(set, fmt.Sprintf("%d-0", i+1), nil); err != nil {
				t.Error(err)
				return
			}
			if _, err := st.publish(del, fmt.Sprintf("%d-1", i+1), nil); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	epoch := func() uint64 {
		st.mu.RLock()
		defer st.mu.RUnlock()
		return st.users.epoch
	}
	var checkers sync.WaitGroup
	check := func(take func() *entryList) {
		defer checkers.Done()
		// Until the table compacted twice under the lists taken (a
		// deadline, not a timing: the reader compacts every few hundred
		// batches).
		deadline := time.Now().Add(30 * time.Second)
		for n := 0; n < 5 || epoch() < 2; n++ {
			if time.Now().After(deadline) {
				t.Errorf("the table compacted %d times in 30 s", epoch())
				return
			}
			el := take()
			before := make(map[string]string, el.Len())
			for i := range el.Len() {
				u, sh := el.At(i)
				before[strings.Clone(u)] = sh
			}
			el.sort()
			prev := ""
			for i := range el.Len() {
				u, sh := el.At(i)
				if i > 0 && u <= prev {
					t.Errorf("not in key order at %d: %.12q after %.12q", i, u, prev)
					return
				}
				if before[u] != sh {
					t.Errorf("%.12q: shard %q after the sort, %q before", u, sh, before[u])
					return
				}
				prev = u
			}
			if len(before) != el.Len() {
				t.Errorf("%d names, %d distinct", el.Len(), len(before))
				return
			}
		}
	}
	checkers.Add(2)
	go check(func() *entryList { l, _ := st.mapFile(); return l })
	go check(func() *entryList {
		var l *entryList
		st.read(func(v view) { l = v.entries() })
		return l
	})
	checkers.Wait()
	close(stop)
	wg.Wait()
}

// The same for the users written to the delta during a background fold
// (job.written), which become the delta's keys when the fold ends.
func TestReview3FoldWritesDoNotPinBatches(t *testing.T) {
	s, _, m := newLagLoop(t, users(10, "s1"), lagConfig{false, "2.6.12", true}, 5000)
	tg := s.targets[0]
	ctx := context.Background()
	entered, open := make(chan struct{}, 1), make(chan struct{})
	m.gate = func() { entered <- struct{}{}; <-open }
	tg.startFold(ctx, reasonLargeBatch, nil)
	<-entered // the swap holds the state before the batch below
	ws := []want{{"u1", "s2"}}
	for i := range 1000 {
		ws = append(ws, want{fmt.Sprintf("%s-%d", strings.Repeat("n", 200), i), "s3"})
	}
	from := s.state.seq
	if _, err := s.state.publish(ws, "1-0", nil); err != nil {
		t.Fatal(err)
	}
	pinned := func() weak.Pointer[byte] {
		bs, _, _ := s.state.since(from)
		return weak.Make(&bs[0].names[0])
	}()
	tg.lastCheck = time.Now()
	if err := tg.step(ctx); err != nil { // to the delta, during the fold
		t.Fatal(err)
	}
	close(open)
	<-tg.folding.done
	if err := tg.step(ctx); err != nil { // the fold ends
		t.Fatal(err)
	}
	if _, ok := tg.deltaKeys["u1"]; !ok || tg.folding != nil || !equalMaps(m.routes(), stateMap(s)) {
		t.Fatalf("after the fold: u1 not in the delta (%d keys), folding %v, or routes differ from the state", len(tg.deltaKeys), tg.folding != nil)
	}
	// The fake HAProxy's maps hold copies, as a real one does.
	m.mu.Lock()
	for name, es := range m.maps {
		c := map[string][]string{}
		for k, vs := range es {
			c[strings.Clone(k)] = vs
		}
		m.maps[name] = c
	}
	m.hist, m.cur = nil, nil
	m.mu.Unlock()
	for i := range 4100 {
		if _, err := s.state.publish([]want{{"u2", fmt.Sprint("s", i%3)}}, fmt.Sprintf("%d-0", i+2), nil); err != nil {
			t.Fatal(err)
		}
	}
	runtime2.GC()
	runtime2.GC()
	if pinned.Value() != nil {
		t.Fatal("the batch's names are still alive, held by the users written during the fold")
	}
	runtime2.KeepAlive(tg)
}

// A fold decided on the first applyMax changes of a lag swaps in the state
// as it is then, the changes past the prefix included: those are not sent
// to the delta meanwhile (HAProxy would insert each into the delta during
// the swap of the base, only for the delta's own swap to drop them), as
// they were not when apply took the whole lag.
func TestReview3PrefixFoldSendsNoRedundantDeltaWrites(t *testing.T) {
	const n = 80_000
	s, st, m := newLagLoop(t, users(n, "s0"), lagConfig{false, "2.6.12", true}, 5000)
	tg := s.targets[0]
	ctx := context.Background()
	entered, open := make(chan struct{}, 1), make(chan struct{})
	m.gate = func() { entered <- struct{}{}; <-open }
	defer func() {
		select {
		case <-open:
		default:
			close(open)
		}
	}()
	for i := range applyMax + 20_000 {
		st.set(fmt.Sprintf("u%d", i), "s1")
	}
	publishLog(t, s, st, m, rand.New(rand.NewPCG(1, 1)), 1000)
	s.state.streaming.Store(true) // the delta may take 8x DeltaMax: the rest fits
	for range 3 {
		tg.lastCheck = time.Now()
		if err := tg.step(ctx); err != nil {
			t.Fatal(err)
		}
		if tg.folding != nil {
			select {
			case <-entered:
			default:
			}
		}
	}
	m.mu.Lock()
	writes := m.deltaWrites
	m.mu.Unlock()
	if tg.folding == nil || writes != 0 {
		t.Fatalf("during a fold holding every change published: %d entries written to the delta (want 0), folding %v", writes, tg.folding != nil)
	}
	close(open)
	for i := 0; tg.folding != nil || tg.seq != s.state.seq; i++ {
		if i > 20 {
			t.Fatal("not caught up")
		}
		if tg.folding != nil {
			<-tg.folding.done // a step waits for it only so long
		}
		tg.lastCheck = time.Now()
		if err := tg.step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if f := m.faults(); len(f) > 0 || !equalMaps(m.routes(), stateMap(s)) {
		t.Fatalf("faults %v, routes as the state %v", f, equalMaps(m.routes(), stateMap(s)))
	}
}

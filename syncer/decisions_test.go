package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// fakeStore is the Redis store in memory: a hash, a log with IDs "N-0",
// the claims and the reports. Unit tests of the loop's decisions only; the
// real store is tested on redis-server.
type fakeStore struct {
	mu       sync.Mutex
	hash     map[string]string
	log      []maps.Change
	trimmed  bool // the log lost its head: LogHas of an old ID fails
	forced   bool
	claims   map[string]string
	reports  []maps.SyncerState
	shards   error // AddShards' answer
	down     error // when set, Claim fails with it (Redis away)
	noReport error // when set, ReportSyncer fails with it
}

func newFakeStore(hash map[string]string) *fakeStore {
	f := &fakeStore{hash: map[string]string{}, claims: map[string]string{}}
	for k, v := range hash {
		f.hash[k] = v
	}
	return f
}

func (f *fakeStore) lastID() string {
	if len(f.log) == 0 {
		return maps.ZeroID
	}
	return f.log[len(f.log)-1].ID
}

// set writes through the log, as mapctl does.
func (f *fakeStore) set(u, sh string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hash[u] = sh
	f.log = append(f.log, maps.Change{ID: fmt.Sprintf("%d-0", len(f.log)+1), Op: maps.OpSet, User: u, Shard: sh})
}

// del deletes through the log, as mapctl does.
func (f *fakeStore) del(u string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.hash, u)
	f.log = append(f.log, maps.Change{ID: fmt.Sprintf("%d-0", len(f.log)+1), Op: maps.OpDel, User: u})
}

func (f *fakeStore) Scan(_ context.Context, fn func(maps.Assignment) error, bad func(maps.BadEntry)) (int, error) {
	f.mu.Lock()
	hash := make(map[string]string, len(f.hash))
	for k, v := range f.hash {
		hash[k] = v
	}
	f.mu.Unlock()
	skipped := 0
	for k, v := range hash {
		a := maps.Assignment{User: k, Shard: v}
		if err := a.Validate(); err != nil {
			skipped++
			if bad != nil {
				bad(maps.BadEntry{User: k, Err: err})
			}
			continue
		}
		if err := fn(a); err != nil {
			return skipped, err
		}
	}
	return skipped, nil
}
func (f *fakeStore) LastLogID(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastID(), nil
}
func (f *fakeStore) LogHas(_ context.Context, id string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return id == maps.ZeroID && !f.trimmed || !f.trimmed && maps.CompareIDs(id, f.lastID()) <= 0, nil
}
func (f *fakeStore) ReadLog(_ context.Context, after string, count int64, _ time.Duration) ([]maps.Change, []maps.BadEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []maps.Change
	for _, c := range f.log {
		if maps.CompareIDs(c.ID, after) > 0 && int64(len(out)) < count {
			out = append(out, c)
		}
	}
	return out, nil, nil
}
func (f *fakeStore) Count(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.hash)), nil
}
func (f *fakeStore) ScanPage(_ context.Context, cursor uint64, count int64) ([]maps.Assignment, []maps.BadEntry, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	keys := make([]string, 0, len(f.hash))
	for k := range f.hash {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var page []maps.Assignment
	var bad []maps.BadEntry
	i := int(cursor)
	for ; i < len(keys) && int64(len(page)+len(bad)) < count; i++ {
		a := maps.Assignment{User: keys[i], Shard: f.hash[keys[i]]}
		if err := a.Validate(); err != nil { // as maps.Store does
			bad = append(bad, maps.BadEntry{User: a.User, Err: err})
			continue
		}
		page = append(page, a)
	}
	if i >= len(keys) {
		i = 0
	}
	return page, bad, uint64(i), nil
}
func (f *fakeStore) UsersChangedAfter(_ context.Context, after, upto string, limit int64) (map[string]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]bool{}
	n := int64(0)
	for _, c := range f.log {
		if maps.CompareIDs(c.ID, after) > 0 && maps.CompareIDs(c.ID, upto) <= 0 {
			if n++; n > limit {
				return nil, errors.New("more than limit entries")
			}
			out[c.User] = true
		}
	}
	return out, nil
}
func (f *fakeStore) AddShards(context.Context, []string) error { return f.shards }
func (f *fakeStore) TakeForcedReconcile(context.Context) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ok := f.forced
	f.forced = false
	return ok, nil
}
func (f *fakeStore) ReportSyncer(_ context.Context, st maps.SyncerState) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noReport != nil {
		return f.noReport
	}
	f.reports = append(f.reports, st)
	return nil
}
func (f *fakeStore) Claim(_ context.Context, key, holder string, _ time.Duration) (bool, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down != nil {
		return false, "", f.down
	}
	if cur, ok := f.claims[key]; ok && cur != holder {
		return false, cur, nil
	}
	f.claims[key] = holder
	return true, "", nil
}
func (f *fakeStore) Release(_ context.Context, key, holder string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.claims[key] == holder {
		delete(f.claims, key)
	}
	return nil
}
func (f *fakeStore) NameClaimKey(name string) string { return "name:" + name }
func (f *fakeStore) LeaseKey(t string) string        { return "lease:" + t }

// logCapture keeps log lines for assertions.
type logCapture struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *logCapture) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newLoop returns a syncer over a fake store and runtime, holding its lease.
func newLoop(t *testing.T, hash, live map[string]string) (*Syncer, *fakeStore, *fakeRuntime, *logCapture) {
	t.Helper()
	st := newFakeStore(hash)
	rt := &fakeRuntime{live: map[string]string{}}
	for k, v := range live {
		rt.live[k] = v
	}
	logs := &logCapture{}
	// No heartbeat renews the lease in these tests: a long one outlives them
	// under -race.
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/test.sock"}, MaxDeleteShare: DefaultMaxDeleteShare, ClaimTTL: time.Hour,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}, st, dialFake(rt))
	if err != nil {
		t.Fatal(err)
	}
	rt.mapName = s.cfg.MapName
	if !s.targets[0].holdLease(context.Background()) {
		t.Fatal("no lease on an empty store")
	}
	return s, st, rt, logs
}

func dialFake(rt Runtime) Dialer { return func(string) (Runtime, error) { return rt, nil } }

// fullSync loads Redis into the state and reconciles the first target with
// it, as Run and the target's loop do at start.
func (s *Syncer) fullSync(ctx context.Context) error {
	if err := s.load(ctx); err != nil {
		return err
	}
	if err := s.targets[0].fullSync(ctx); err != nil {
		return err
	}
	// The reader then takes the file's lease and writes the file.
	if s.fileAllowed(ctx) {
		if err := s.file.flushNow(s); err != nil {
			return err
		}
	}
	return nil
}

// stateMap is the state as a map.
func stateMap(s *Syncer) map[string]string {
	m := map[string]string{}
	s.state.read(func(v view) { v.each(func(u, sh string) { m[u] = sh }) })
	return m
}

// follow lets the first target apply what the state published.
func follow(t *testing.T, s *Syncer) {
	t.Helper()
	tg := s.targets[0]
	bs, ok, _ := s.state.since(tg.seq)
	if !ok {
		t.Fatal("state out of reach")
	}
	if len(bs) > 0 {
		if err := tg.apply(context.Background(), bs); err != nil {
			t.Fatal(err)
		}
	}
}

// setLoopProblem records a reader step's outcome.
func (s *Syncer) setLoopProblem(ctx context.Context, err error) {
	s.setProblems(ctx, func() { s.loop = err })
}

func users(n int, shard string) map[string]string {
	m := map[string]string{}
	for i := 0; i < n; i++ {
		m[fmt.Sprintf("u%d", i)] = shard
	}
	return m
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// The delete guard: what a full sync may delete from the live map.
func TestGuardDecisions(t *testing.T) {
	for _, tc := range []struct {
		name         string
		live, redis  int
		share        float64
		forced       bool
		wantRefused  bool
		wantLiveSize int
	}{
		{"redis emptied", 100, 0, 0.10, false, true, 100},
		{"a few deletes pass", 100, 95, 0.10, false, false, 95},
		{"at most 5 always pass", 10, 5, 0.0, false, false, 5},
		{"share 0 refuses 6", 100, 94, 0.0, false, true, 100},
		{"forced by a human", 100, 0, 0.10, true, false, 0},
		{"within share", 100, 89, 0.12, false, false, 89},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, st, rt, _ := newLoop(t, users(tc.redis, "s1"), users(tc.live, "s1"))
			s.cfg.MaxDeleteShare = tc.share
			st.forced = tc.forced
			err := s.fullSync(context.Background())
			if got := errors.Is(err, errRefused); got != tc.wantRefused {
				t.Fatalf("refused=%v (%v), want %v", got, err, tc.wantRefused)
			}
			if tc.wantRefused && kindOf(err) != kindGuard {
				t.Fatalf("kind %q, want guard", kindOf(err))
			}
			if len(rt.live) != tc.wantLiveSize {
				t.Fatalf("live has %d entries, want %d", len(rt.live), tc.wantLiveSize)
			}
		})
	}
}

// A full sync never takes the live map as truth: a value changed on the
// socket (same count) is put back as Redis says, by a diff when it is small
// and by one swap when it is large or the live map has duplicates.
func TestFullSyncDiffsLiveAgainstRedis(t *testing.T) {
	for _, tc := range []struct {
		name      string
		changed   int
		wantSwaps int
	}{
		{"one value changed by hand", 1, 0},
		{"many values changed", 100, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			redis := users(200, "s1")
			live := users(200, "s1")
			for i := 0; i < tc.changed; i++ {
				live[fmt.Sprintf("u%d", i)] = "s9"
			}
			s, _, rt, _ := newLoop(t, redis, live)
			if err := s.fullSync(context.Background()); err != nil {
				t.Fatal(err)
			}
			if !equalMaps(rt.live, redis) || !equalMaps(stateMap(s), redis) {
				t.Fatalf("live not equal to redis after full sync")
			}
			if rt.replaced != tc.wantSwaps {
				t.Fatalf("%d swaps, want %d", rt.replaced, tc.wantSwaps)
			}
		})
	}
}

// A periodic drift pass finds an entry changed behind the log (same count)
// and applies Redis's value; an entry changed through the log meanwhile is
// left to the log.
func TestDriftPassRepairsHashChangedBehindLog(t *testing.T) {
	s, st, rt, logs := newLoop(t, users(5000, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	st.hash["u42"] = "s7" // HSET by hand: no log entry
	st.set("u43", "s8")   // through the log, not yet applied
	s.drift.forceNext.Store(true)
	for i := 0; i < 10 && (i == 0 || s.drift.scanning()); i++ {
		if err := s.reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if s.drift.scanning() {
		t.Fatal("drift pass did not finish")
	}
	follow(t, s)
	if rt.live["u42"] != "s7" || stateMap(s)["u42"] != "s7" {
		t.Fatalf("u42 live=%q state=%q, want s7", rt.live["u42"], stateMap(s)["u42"])
	}
	if rt.live["u43"] != "s1" {
		t.Fatalf("u43 was changed by the drift pass (%q): it is the log's to apply", rt.live["u43"])
	}
	if !strings.Contains(logs.String(), "redis hash changed behind the change log") {
		t.Fatalf("no drift line in the log:\n%s", logs)
	}
}

// An entry deleted from the hash behind the log (count differs after the
// pass) makes a full sync.
func TestDriftPassCountMismatchReconciles(t *testing.T) {
	s, st, _, _ := newLoop(t, users(50, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	delete(st.hash, "u7")
	s.drift.forceNext.Store(true)
	for i := 0; i < 5 && !s.needLoad; i++ {
		if err := s.reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !s.needLoad {
		t.Fatal("a hash that lost an entry behind the log did not make a reload")
	}
}

// The live map is compared entry by entry at any size: a changed value is
// set back, an extra or missing key makes a full sync, which puts it back.
func TestDriftLiveMap(t *testing.T) {
	for _, tc := range []struct {
		name      string
		edit      func(map[string]string)
		wantSwaps int
	}{
		{"value set on the socket", func(m map[string]string) { m["u3"] = "s9" }, 0},
		{"key added on the socket", func(m map[string]string) { m["intruder"] = "s9" }, 0},
		{"key deleted on the socket", func(m map[string]string) { delete(m, "u3") }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _, rt, _ := newLoop(t, users(200_000, "s1"), nil)
			// No heartbeat renews the lease here: at 200k entries under -race
			// on a busy machine the steps outlast its default lifetime.
			s.cfg.ClaimTTL = time.Hour
			ctx := context.Background()
			if err := s.fullSync(ctx); err != nil {
				t.Fatal(err)
			}
			swaps := rt.replaced
			tc.edit(rt.live)
			tg := s.targets[0]
			tg.forceLive.Store(true)
			if err := tg.checkLive(ctx); err != nil {
				t.Fatal(err)
			}
			if tg.needFull {
				if err := tg.fullSync(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if !equalMaps(rt.live, stateMap(s)) {
				t.Fatal("live map not put back")
			}
			if rt.replaced-swaps != tc.wantSwaps {
				t.Fatalf("%d swaps, want %d", rt.replaced-swaps, tc.wantSwaps)
			}
		})
	}
}

// A log gap (the position trimmed away) makes a full sync.
func TestGapMakesFullSync(t *testing.T) {
	s, st, _, _ := newLoop(t, users(3, "s1"), nil)
	ctx := context.Background()
	st.set("u0", "s2")
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	st.trimmed = true
	s.drift.lastGap = time.Time{}
	if err := s.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.needLoad {
		t.Fatal("gap did not make a reload")
	}
}

// A failing map file is one state (kind file), not ready, logged once, with
// the retries backed off; the first successful write clears it.
func TestFileFailureIsOneState(t *testing.T) {
	s, _, _, logs := newLoop(t, users(3, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	s.setLoopProblem(ctx, nil)
	if !s.Status().Ready {
		t.Fatalf("not ready after a full sync: %+v", s.Status())
	}
	good := s.file.path
	s.file.path = "/nonexistent-dir/users.map"
	for i := 0; i < 50; i++ {
		s.file.markDirty()
		s.file.dirtySince = time.Now().Add(-time.Hour)
		s.file.retryAt = time.Time{} // as if every backoff had passed
		if err := s.file.flushNow(s); err == nil {
			t.Fatal("write to a missing directory succeeded")
		}
		s.setLoopProblem(ctx, nil) // the loop itself is fine
		if st := s.Status(); st.Ready || st.State != kindFile {
			t.Fatalf("try %d: status %+v, want not ready, state file", i, st)
		}
	}
	if n := strings.Count(logs.String(), "syncer not ready"); n != 1 {
		t.Fatalf("%d not-ready lines for one state, want 1:\n%s", n, logs)
	}
	s.file.path = good
	s.file.retryAt = time.Time{}
	if err := s.file.flushNow(s); err != nil {
		t.Fatal(err)
	}
	if !s.Status().Ready {
		t.Fatalf("not ready after the file was written: %+v", s.Status())
	}
}

// Backoff after a failed write: the next retry waits.
func TestFileRetryIsBackedOff(t *testing.T) {
	s, _, _, _ := newLoop(t, users(3, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	s.file.path = "/nonexistent-dir/users.map"
	s.file.markDirty()
	s.file.flushNow(s)
	if !s.file.retryAt.After(time.Now()) {
		t.Fatal("no backoff after a failed write")
	}
	s.file.maybeStart(s)
	if s.file.writing {
		t.Fatal("a write started before its retry time")
	}
}

// Each kind of failure is logged once however often it repeats; a failure
// of another kind and the recovery are logged once each.
func TestProblemsLogOncePerState(t *testing.T) {
	s, _, _, logs := newLoop(t, users(3, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	s.setLoopProblem(ctx, nil)
	redisDown := fail(kindRedis, errors.New("dial tcp: connection refused"))
	for i := 0; i < 20; i++ {
		s.setLoopProblem(ctx, fail(kindRedis, fmt.Errorf("attempt %d: %w", i, redisDown)))
	}
	hung := fail(kindHAProxy, fmt.Errorf("show info: %w", runtime.ErrNoAnswer))
	for i := 0; i < 20; i++ {
		s.setLoopProblem(ctx, hung)
	}
	if got := s.Status().State; got != kindNoAnswer {
		t.Fatalf("state %q, want %q", got, kindNoAnswer)
	}
	s.setLoopProblem(ctx, nil)
	out := logs.String()
	if n := strings.Count(out, "syncer not ready"); n != 2 {
		t.Fatalf("%d not-ready lines, want 2 (redis, then haproxy_no_answer):\n%s", n, out)
	}
	if n := strings.Count(out, "syncer ready") + strings.Count(out, "syncer recovered"); n != 2 { // after the full sync, and the recovery
		t.Fatalf("%d ready lines, want 2:\n%s", n, out)
	}
}

// A recovery is reported to Redis at once, not at the next heartbeat.
func TestRecoveryReportedAtOnce(t *testing.T) {
	s, st, _, _ := newLoop(t, users(3, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	s.setLoopProblem(ctx, fail(kindRedis, errors.New("down")))
	s.lastReport = time.Now() // a heartbeat report just went out
	s.setLoopProblem(ctx, nil)
	last := st.reports[len(st.reports)-1]
	if !last.Ready || last.Problem != "" {
		t.Fatalf("last report %+v, want ready at once", last)
	}
}

// Two syncers of one map: one holds the lease and writes, the other is a
// standby that takes over once the lease is free.
func TestLeaseOneActive(t *testing.T) {
	a, st, _, _ := newLoop(t, users(3, "s1"), nil)
	b, err := New(Config{Name: "b", MapName: a.cfg.MapName, Targets: a.cfg.Targets, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, st, dialFake(&fakeRuntime{live: map[string]string{}}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b.load(ctx)
	if b.targets[0].holdLease(ctx) {
		t.Fatal("second syncer of the same map holds the lease too")
	}
	if got := b.Status(); !got.Standby || got.State != stateStandby {
		t.Fatalf("second syncer status %+v, want standby", got)
	}
	a.releaseClaims()
	if !b.targets[0].holdLease(ctx) || !b.targets[0].needFull {
		t.Fatal("standby did not take the free lease (with a full sync)")
	}
}

// A name held by a running syncer is refused, naming the other.
func TestNameTakenIsRefused(t *testing.T) {
	a, st, _, _ := newLoop(t, nil, nil)
	ctx := context.Background()
	if err := a.claimName(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Name: "t", MapName: "/other.map", Targets: []string{"/run/other.sock"}, ClaimTTL: 10 * time.Millisecond, Heartbeat: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, st, dialFake(&fakeRuntime{}))
	if err != nil {
		t.Fatal(err)
	}
	err = b.claimName(ctx)
	if !errors.Is(err, ErrNameTaken) || !strings.Contains(err.Error(), a.instance) {
		t.Fatalf("claim of a taken name: %v, want ErrNameTaken naming %s", err, a.instance)
	}
}

// A shards key of the wrong type is warned about once; syncing goes on.
func TestShardsKeyWrongTypeDoesNotBlock(t *testing.T) {
	s, st, rt, logs := newLoop(t, users(3, "s1"), nil)
	st.shards = fmt.Errorf("redis add shards: %w", maps.ErrWrongType)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := s.fullSync(ctx); err != nil {
			t.Fatalf("full sync blocked by the shards key: %v", err)
		}
	}
	if len(rt.live) != 3 {
		t.Fatalf("live has %d entries", len(rt.live))
	}
	if n := strings.Count(logs.String(), "cannot publish"); n != 1 {
		t.Fatalf("%d warnings, want 1", n)
	}
}

// An invalid entry written into the hash by hand cannot hide an HDEL by
// hand from the count check (found by review).
func TestBadEntryDoesNotMaskHDEL(t *testing.T) {
	s, st, _, _ := newLoop(t, users(50, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	delete(st.hash, "u7")      // HDEL by hand
	st.hash["bad user"] = "s1" // HSET by hand of an invalid entry: same count
	s.drift.forceNext.Store(true)
	for i := 0; i < 5 && !s.needLoad; i++ {
		if err := s.reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !s.needLoad {
		t.Fatal("u7 deleted in Redis stays live, and no reload is planned")
	}
}

// The socket's directory recreated (systemd RuntimeDirectory= on a HAProxy
// restart) changes the lease's key for every syncer alike: a syncer started
// afterwards does not get a lease of its own (found by review).
func TestLeaseFollowsRecreatedSocketDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	os.Mkdir(dir, 0o755)
	sock := filepath.Join(dir, "admin.sock")
	st := newFakeStore(nil)
	mk := func(name string) *Syncer {
		s, err := New(Config{Name: name, MapName: "/etc/haproxy/users.map", Targets: []string{sock},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, st, dialFake(&fakeRuntime{live: map[string]string{}}))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a := mk("a")
	ctx := context.Background()
	if !a.targets[0].holdLease(ctx) {
		t.Fatal("a: no lease")
	}
	os.RemoveAll(dir)
	os.Mkdir(filepath.Join(filepath.Dir(dir), "pad"), 0o755) // the old inode is not reused at once
	os.Mkdir(dir, 0o755)
	b := mk("b")
	aHeld, bHeld := a.targets[0].holdLease(ctx), b.targets[0].holdLease(ctx)
	if aHeld == bHeld {
		t.Fatalf("after the directory was recreated: a holds %v, b holds %v; want exactly one", aHeld, bHeld)
	}
}

// A syncer that lost the lease is a standby, whatever failed while it was
// active (found by review).
func TestStandbyAfterFailureIsStandby(t *testing.T) {
	a, st, _, _ := newLoop(t, users(3, "s1"), nil)
	ctx := context.Background()
	if err := a.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	ta := a.targets[0]
	ta.setProblem(ctx, fail(kindRedis, io.ErrUnexpectedEOF)) // Redis went away
	// Redis back; the lease ran out meanwhile and another syncer took it.
	st.claims[ta.lease.key] = "other-instance"
	ta.lease.at = ta.lease.at.Add(-a.cfg.ClaimTTL)
	for i := 0; i < 3; i++ {
		if ta.holdLease(ctx) {
			t.Fatal("still active")
		}
	}
	if got := a.Status(); !got.Standby || got.State != stateStandby {
		t.Fatalf("status %q / %q, want standby", got.State, got.Problem)
	}
	// And it writes nothing to HAProxy while a standby.
	if err := ta.applyOps(ctx, a.cfg.MapName, []runtime.Op{{Kind: runtime.Add, Key: "x", Value: "s1"}}); !errors.Is(err, errLeaseLost) {
		t.Fatalf("push without the lease: %v, want errLeaseLost", err)
	}
}

// Under a backlog too large to tell which entries the log changed, a drift
// page is read again later, not skipped.
func TestDriftPageUnderBacklogIsRetried(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(10, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	s.cfg.BatchMax = 2
	st.hash["u3"] = "s7" // by hand
	for i := 0; i < 5; i++ {
		st.set(fmt.Sprintf("n%d", i), "s1") // a backlog of 5 > BatchMax
	}
	s.drift.forceNext.Store(true)
	if err := s.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.drift.scanning() || s.drift.cursor != 0 {
		t.Fatalf("page not kept for later: scanning=%v cursor=%d", s.drift.scanning(), s.drift.cursor)
	}
	// The loop applies the backlog; the page is then read again.
	_, applied, _ := s.state.position()
	changes, _, _ := st.ReadLog(ctx, applied, 100, 0)
	s.publish(changes)
	for i := 0; i < 5 && s.drift.scanning(); i++ {
		if err := s.reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	follow(t, s)
	if rt.live["u3"] != "s7" {
		t.Fatalf("u3 live %q, want s7 from the hand edit", rt.live["u3"])
	}
}

// A lease that ran out because Redis did not answer is a Redis failure, not
// a standby or a fresh start, and the recovery is logged as one.
func TestLeaseRunOutWithRedisAwayIsRedisState(t *testing.T) {
	s, st, _, logs := newLoop(t, users(3, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	s.setLoopProblem(ctx, nil)
	st.down = errors.New("dial tcp: connection refused")
	tg := s.targets[0]
	s.renewLease(ctx, &tg.lease)
	tg.lease.at = tg.lease.at.Add(-s.cfg.ClaimTTL) // its lifetime passed
	if tg.holdLease(ctx) {
		t.Fatal("active without a lease")
	}
	if got := s.Status(); got.State != kindRedis || got.Standby {
		t.Fatalf("state %q standby=%v, want redis", got.State, got.Standby)
	}
	st.down = nil
	if !tg.holdLease(ctx) || !tg.needFull {
		t.Fatal("lease not taken back (with a full sync) once Redis answers")
	}
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg.setProblem(ctx, nil)
	s.setLoopProblem(ctx, nil)
	if !strings.Contains(logs.String(), "syncer recovered") {
		t.Fatalf("no recovery line:\n%s", logs)
	}
}

// A syncer that cannot report itself (the registry key of the wrong type)
// is not ready, with one line, instead of ready and invisible to --wait
// (found by a hostile test).
func TestReportFailureIsNotReady(t *testing.T) {
	s, st, _, logs := newLoop(t, users(3, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	s.setLoopProblem(ctx, nil)
	st.noReport = errors.New("WRONGTYPE Operation against a key holding the wrong kind of value")
	for i := 0; i < 5; i++ {
		s.report(ctx, true)
		s.targets[0].holdLease(ctx)
	}
	if got := s.Status(); got.Ready || got.State != kindRedis || !strings.Contains(got.Problem, "cannot report") {
		t.Fatalf("status %+v, want not ready: cannot report", got)
	}
	if n := strings.Count(logs.String(), "syncer not ready"); n != 1 {
		t.Fatalf("%d not-ready lines, want 1", n)
	}
	st.noReport = nil
	s.report(ctx, true)
	s.targets[0].holdLease(ctx)
	if !s.Status().Ready {
		t.Fatalf("not ready after reports work again: %+v", s.Status())
	}
}

// unix@PATH and PATH name the same lease; TCP targets have leases of their
// own, per address.
func TestLeaseTargetForms(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	a, errA := leaseTarget(sock, "/m")
	b, errB := leaseTarget("unix@"+sock, "/m")
	if errA != nil || errB != nil || a != b {
		t.Fatalf("path %q (%v) and unix@path %q (%v) differ", a, errA, b, errB)
	}
	c, err1 := leaseTarget("ipv4@127.0.0.1:9999", "/m")
	d, err2 := leaseTarget("127.0.0.1:9998", "/m")
	if err1 != nil || err2 != nil || c == d || c == a {
		t.Fatalf("tcp leases: %q %v, %q %v", c, err1, d, err2)
	}
}

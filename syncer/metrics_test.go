package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// metricsRuntime is fakeRuntime with a settable Pid, failures and
// duplicate keys in the live map.
type metricsRuntime struct {
	*fakeRuntime
	pid     int64
	infoErr error
	dup     bool // the live map lists its first key twice
}

func (r *metricsRuntime) Info(context.Context) (runtime.Info, error) {
	if r.infoErr != nil {
		return runtime.Info{}, r.infoErr
	}
	return runtime.Info{Pid: r.pid}, nil
}

func (r *metricsRuntime) Dump(ctx context.Context, m string, fn func(k, v string) error) error {
	first := true
	return r.fakeRuntime.Dump(ctx, m, func(k, v string) error {
		if r.dup && first {
			first = false
			if err := fn(k, v); err != nil {
				return err
			}
		}
		return fn(k, v)
	})
}

func (r *metricsRuntime) MapEntryCount(ctx context.Context, m string) (int, error) {
	n, err := r.fakeRuntime.MapEntryCount(ctx, m)
	if r.dup && n > 0 {
		n++
	}
	return n, err
}

func (r *metricsRuntime) Replace(ctx context.Context, m string, es []runtime.Entry) error {
	r.dup = false
	return r.fakeRuntime.Replace(ctx, m, es)
}

func (r *metricsRuntime) AddFrom(ctx context.Context, m string, es runtime.Entries) error {
	return addVia(ctx, r.Apply, m, es)
}

func (r *metricsRuntime) ReplaceFrom(ctx context.Context, m string, es runtime.Entries) error {
	return r.Replace(ctx, m, listOf(es))
}

// countingFake adds CountAfter to the fake store, as *maps.Store has it.
type countingFake struct{ *fakeStore }

func (f countingFake) CountAfter(_ context.Context, id string, limit int64) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, c := range f.log {
		if maps.CompareIDs(c.ID, id) > 0 && n < limit {
			n++
		}
	}
	return n, nil
}

const testTarget = "127.0.0.1:9999"

func newMetricsLoop(t *testing.T, hash, live map[string]string) (*Syncer, *fakeStore, *metricsRuntime, *Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	st := newFakeStore(hash)
	rt := &metricsRuntime{fakeRuntime: &fakeRuntime{live: map[string]string{}}, pid: 1}
	for k, v := range live {
		rt.live[k] = v
	}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", MaxDeleteShare: DefaultMaxDeleteShare, Targets: []string{testTarget},
		Metrics: m, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, countingFake{st}, dialFake(rt))
	if err != nil {
		t.Fatal(err)
	}
	if !s.targets[0].holdLease(context.Background()) {
		t.Fatal("no lease on an empty store")
	}
	return s, st, rt, m, reg
}

// value returns the value of the series name{labels} in reg: a counter's
// or gauge's value, a histogram's sample count; -1 when absent.
func value(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

func fullSyncs(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	return value(t, reg, "shardmap_syncer_full_syncs_by_reason_total", "target", testTarget, "reason", reason)
}

// Each cause of a full sync is counted under its reason, once per
// completed full sync.
func TestMetricsFullSyncReasons(t *testing.T) {
	s, st, rt, _, reg := newMetricsLoop(t, users(50, "s1"), nil)
	ctx := context.Background()
	tg := s.targets[0]
	// run does what the reader and the target's loop do next: reload the
	// state if due, let the target find out, and reconcile it.
	run := func(what string) {
		t.Helper()
		if s.needLoad {
			if err := s.load(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if !tg.needFull {
			if err := tg.step(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if !tg.needFull {
			t.Fatalf("%s: no full sync due", what)
		}
		if err := tg.fullSync(ctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	if fullSyncs(t, reg, reasonStart) != 0 || fullSyncs(t, reg, reasonGap) != 0 {
		t.Fatal("reason series are not there at 0 before the first full sync")
	}
	run("start")

	rt.pid = 2 // HAProxy restarted
	tg.lastCheck = time.Time{}
	if err := tg.step(ctx); err != nil {
		t.Fatal(err)
	}
	run("restart")

	rt.infoErr = &runtime.CommandError{Cmd: "show_info", Err: errors.New("connection refused")}
	tg.lastCheck = time.Time{}
	if err := tg.step(ctx); err == nil {
		t.Fatal("step with HAProxy away: no error")
	}
	// The retries fail too: the reason stays the first one.
	if err := tg.fullSync(ctx); err == nil {
		t.Fatal("full sync with HAProxy away: no error")
	}
	rt.infoErr = nil
	run("doubt")

	st.set("x", "s2")
	st.trimmed = true // the log lost the applied position
	s.drift.lastGap = time.Time{}
	if err := s.readStep(ctx); err != nil {
		t.Fatal(err)
	}
	st.trimmed = false
	run("gap")

	st.mu.Lock()
	delete(st.hash, "u7") // HDEL behind the log
	st.mu.Unlock()
	s.drift.forceNext.Store(true)
	for i := 0; i < 10 && !s.needLoad; i++ {
		if err := s.reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	run("drift_count")
	for _, r := range []string{reasonStart, reasonHAProxyRestart, reasonDoubt, reasonGap, reasonDriftCount} {
		if got := fullSyncs(t, reg, r); got != 1 {
			t.Errorf("full syncs for %s: %v, want 1", r, got)
		}
	}
	if got := value(t, reg, "shardmap_syncer_runtime_errors_total", "target", testTarget, "cmd", "show_info"); got != 2 {
		t.Errorf("runtime errors show_info: %v, want 2 (the step and the failed full sync)", got)
	}
}

// Swaps are counted by reason; each change applied from the log is observed
// in the latency histogram; the lag follows the log.
func TestMetricsSwapsLatencyAndLag(t *testing.T) {
	s, st, rt, m, reg := newMetricsLoop(t, users(100, "s1"), users(100, "s1"))
	ctx := context.Background()
	rt.dup = true
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := value(t, reg, "shardmap_syncer_swaps_by_reason_total", "target", testTarget, "reason", reasonDuplicates); got != 1 {
		t.Fatalf("duplicates swaps %v, want 1", got)
	}

	// A large batch, logged 2 s ago (Redis's clock in the ID).
	at := time.Now().Add(-2 * time.Second).UnixMilli()
	var changes []maps.Change
	for i := range 100 {
		changes = append(changes, set(fmt.Sprintf("%d-%d", at, i), fmt.Sprint("u", i), "s2"))
	}
	changes = append(changes, maps.Change{ID: fmt.Sprintf("%d-999", at)}) // a bad entry: not observed
	if err := s.apply(ctx, changes); err != nil {
		t.Fatal(err)
	}
	if got := value(t, reg, "shardmap_syncer_swaps_by_reason_total", "target", testTarget, "reason", reasonLargeBatch); got != 1 {
		t.Fatalf("large_batch swaps %v, want 1", got)
	}
	if got := value(t, reg, "shardmap_syncer_apply_latency_seconds", "target", testTarget); got != 100 {
		t.Fatalf("latency observations %v, want 100", got)
	}
	fams, _ := reg.Gather()
	for _, f := range fams {
		if f.GetName() == "shardmap_syncer_apply_latency_seconds" {
			if sum := f.GetMetric()[0].GetHistogram().GetSampleSum(); sum < 200 {
				t.Fatalf("latency sum %v, want at least 100 x 2 s", sum)
			}
		}
	}

	// The live map edited by hand (an unknown key): a full sync for drift.
	tg := s.targets[0]
	rt.live["intruder"] = "s9"
	tg.forceLive.Store(true)
	if err := tg.checkLive(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tg.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := fullSyncs(t, reg, reasonDrift); got != 1 {
		t.Fatalf("drift full syncs %v, want 1", got)
	}

	// Lag: three changes follow the applied position.
	st.set("z", "s1")
	applied := st.lastID()
	st.set("a", "s1")
	st.set("b", "s1")
	st.set("c", "s1")
	m.measureLag(ctx, testTarget, s.store, applied, false)
	if got := value(t, reg, "shardmap_syncer_lag_entries", "target", testTarget); got != 3 {
		t.Fatalf("lag entries %v, want 3", got)
	}
	if got := value(t, reg, "shardmap_syncer_lag_seconds", "target", testTarget); got != 0.003 { // fake IDs: N-0, 1 ms apart
		t.Fatalf("lag seconds %v, want 0.003", got)
	}
	m.measureLag(ctx, testTarget, s.store, st.lastID(), false)
	if got := value(t, reg, "shardmap_syncer_lag_entries", "target", testTarget); got != 0 {
		t.Fatalf("caught up: lag entries %v, want 0", got)
	}
	m.measureLag(ctx, testTarget, s.store, applied, true)
	if got := value(t, reg, "shardmap_syncer_lag_entries", "target", testTarget); got != -1 {
		t.Fatalf("standby: lag entries %v, want no series", got)
	}
}

// A nil *Metrics records nothing and does not fail.
func TestNilMetrics(t *testing.T) {
	var m *Metrics
	ctx := context.Background()
	m.needFull("t", reasonGap)
	m.fullSynced("t")
	m.swapped("t", reasonDrift, nil)
	m.appliedAt("t", []int64{1}, time.Now())
	m.measureLag(ctx, "t", newFakeStore(nil), maps.ZeroID, false)
	m.flushed("f", time.Now())
	m.runtimeError("t", errors.New("x"))
	m.redisError("op", errors.New("x"))
	st := newFakeStore(nil)
	if m.store(st) != Store(st) {
		t.Fatal("nil metrics wrapped the store")
	}
	rt := &fakeRuntime{}
	if m.runtime("t", rt) != Runtime(rt) {
		t.Fatal("nil metrics wrapped the runtime")
	}
}

// Redis failures are counted by operation; a cancelled call is not.
func TestMetricsRedisErrors(t *testing.T) {
	s, st, _, _, reg := newMetricsLoop(t, nil, nil)
	st.down = errors.New("connection refused")
	s.store.Claim(context.Background(), "k", "me", time.Second)
	st.down = context.Canceled
	s.store.Claim(context.Background(), "k", "me", time.Second)
	if got := value(t, reg, "shardmap_syncer_redis_errors_total", "op", "claim"); got != 1 {
		t.Fatalf("redis errors for claim: %v, want 1", got)
	}
}

// ShardCounts follows the state through single changes, large batches and
// reloads.
func TestShardCounts(t *testing.T) {
	s, st, _, _, _ := newMetricsLoop(t, users(30, "s1"), nil)
	ctx := context.Background()
	if got := s.ShardCounts(); len(got) != 0 {
		t.Fatalf("before the first full sync: %v, want none", got)
	}
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	check := func(what string) {
		t.Helper()
		want := map[string]int{}
		for _, sh := range stateMap(s) {
			want[sh]++
		}
		got := s.ShardCounts()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: ShardCounts %v, mirror counts %v", what, got, want)
		}
	}
	check("full sync")
	if err := s.apply(ctx, []maps.Change{set("100-0", "u1", "s2"), set("100-1", "new", "s3"), del("100-2", "u2"), del("100-3", "nobody")}); err != nil {
		t.Fatal(err)
	}
	check("single ops")
	var many []maps.Change
	for i := range 80 {
		many = append(many, set(fmt.Sprintf("200-%d", i), fmt.Sprint("u", i%30), "s4"))
	}
	if err := s.apply(ctx, many); err != nil {
		t.Fatal(err)
	}
	check("swap")
	st.set("u0", "s5")
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	check("second full sync")
}

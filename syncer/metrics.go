package syncer

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// Why a full sync ran, or why the whole live map was swapped: the reason
// label of shardmap_syncer_full_syncs_by_reason_total and
// shardmap_syncer_swaps_by_reason_total.
const (
	reasonStart          = "start"           // full sync: the first one of this syncer for the target
	reasonHAProxyRestart = "haproxy_restart" // full sync: show info shows another Pid, or a lower uptime
	reasonDoubt          = "doubt"           // full sync: a batch or a repair failed, or HAProxy did not answer: the live map is unknown
	reasonGap            = "gap"             // full sync: the applied position is no longer in the change log (trimmed, deleted, Redis emptied)
	reasonDriftCount     = "drift_count"     // full sync: the hash's count differs from the mirror (an HDEL behind the log)
	reasonLease          = "lease"           // full sync: this syncer took the map's lease (again)
	reasonBehind         = "behind"          // full sync: the target fell further behind than the syncer keeps changes for it
	reasonLargeBatch     = "large_batch"     // swap: a batch with more set/del than ReplaceAbove (or a large full-sync diff)
	reasonDeltaFull      = "delta_full"      // swap: the delta map holds more than DeltaMax entries and no change is waiting
	reasonDuplicates     = "duplicates"      // swap: the live map holds duplicate keys (only a swap removes them)
	reasonDrift          = "drift"           // swap: the live map was edited outside shardmap (keys missing or extra)
)

// lagCountCap bounds the lag in entries that is counted (inside Redis, once
// a heartbeat); a larger lag is reported as this.
const lagCountCap = 10_000

// Metrics holds the syncer's Prometheus instruments. Build it once per
// process with NewMetrics and pass it in Config.Metrics; several syncers
// (and several targets) may share it. A nil *Metrics records nothing: every
// method is safe on nil, so the syncer calls them unconditionally. Every
// per-target series carries a target label: the HAProxy runtime address
// (today Config.Socket). Safe for concurrent use.
type Metrics struct {
	lagEntries   *prometheus.GaugeVec
	lagSeconds   *prometheus.GaugeVec
	applyLatency *prometheus.HistogramVec
	fullSyncs    *prometheus.CounterVec
	swaps        *prometheus.CounterVec
	runtimeErrs  *prometheus.CounterVec
	reconnects   *prometheus.CounterVec
	redisErrs    *prometheus.CounterVec
	flush        *prometheus.HistogramVec

	mu      sync.Mutex
	targets map[string]*targetMetrics
}

// targetMetrics is what Metrics remembers of one target between hooks.
type targetMetrics struct {
	pending string // reason of the next full sync; "" when none is due
	synced  bool   // a full sync completed for this target
}

// NewMetrics creates the syncer's instruments and registers them with reg
// (prometheus.DefaultRegisterer when nil). It fails if reg already holds
// series of the same names (a second NewMetrics on one registry).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	const ns = "shardmap_syncer_"
	target := []string{"target"}
	m := &Metrics{
		lagEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: ns + "lag_entries",
			Help: "Change-log entries after the last one applied to the target (counted up to 10000). Absent while the syncer has no position or stands by."}, target),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: ns + "lag_seconds",
			Help: "Time of the newest change-log entry minus time of the last one applied to the target, both from the entries' IDs (Redis's clock). 0 when caught up."}, target),
		applyLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: ns + "apply_latency_seconds",
			Help:    "Per change applied from the log: from its write to Redis (the ID's millisecond time, Redis's clock) to the return of the Runtime API call that made it live (this host's clock).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}, target),
		fullSyncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "full_syncs_by_reason_total",
			Help: "Completed reconciles of the whole live map with Redis, by the first reason since the previous one."}, []string{"target", "reason"}),
		swaps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "swaps_by_reason_total",
			Help: "Whole-map versioned swaps (prepare, add, commit) that succeeded, by reason."}, []string{"target", "reason"}),
		runtimeErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "runtime_errors_total",
			Help: "Runtime API calls (and single map commands in a batch) that failed, by the command that failed."}, []string{"target", "cmd"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "runtime_reconnects_total",
			Help: "Reopenings of the long-lived Runtime API connection after the first (after a full sync, an idle period or a failure)."}, target),
		redisErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "redis_errors_total",
			Help: "Redis calls of the syncer that failed, by operation (not counting those cancelled at stop)."}, []string{"op"}),
		flush: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: ns + "map_file_flush_seconds",
			Help:    "Time to write the map file (sort, write, fsync, rename), failed writes included.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"file"}),
		targets: map[string]*targetMetrics{},
	}
	for _, c := range []prometheus.Collector{m.lagEntries, m.lagSeconds, m.applyLatency, m.fullSyncs, m.swaps,
		m.runtimeErrs, m.reconnects, m.redisErrs, m.flush} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// targetLocked returns the target's state, creating it and its zero series
// (so that rate() and alerts see them from the start). Caller holds m.mu.
func (m *Metrics) targetLocked(target string) *targetMetrics {
	t, ok := m.targets[target]
	if !ok {
		t = &targetMetrics{}
		m.targets[target] = t
		for _, r := range []string{reasonStart, reasonHAProxyRestart, reasonDoubt, reasonGap, reasonDriftCount, reasonLease, reasonBehind, reasonDrift} {
			m.fullSyncs.WithLabelValues(target, r)
		}
		for _, r := range []string{reasonLargeBatch, reasonDeltaFull, reasonDuplicates, reasonDrift} {
			m.swaps.WithLabelValues(target, r)
		}
		m.reconnects.WithLabelValues(target)
		m.applyLatency.WithLabelValues(target)
	}
	return t
}

// needFull records why a full sync of target is due. The first reason
// since the last completed full sync is the one counted: later ones are
// consequences (a failing full sync retried) or overlap with it.
func (m *Metrics) needFull(target, reason string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.targetLocked(target)
	if t.pending == "" {
		t.pending = reason
	}
}

// fullSynced counts one completed full sync of target by its reason:
// "start" for the target's first, else the first reason recorded by
// needFull since the previous one ("doubt" if none was).
func (m *Metrics) fullSynced(target string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	t := m.targetLocked(target)
	reason := t.pending
	switch {
	case !t.synced:
		reason = reasonStart
	case reason == "":
		reason = reasonDoubt
	}
	t.pending, t.synced = "", true
	m.mu.Unlock()
	m.fullSyncs.WithLabelValues(target, reason).Inc()
}

// swapped counts a whole-map swap of target for reason, if it succeeded
// (err == nil).
func (m *Metrics) swapped(target, reason string, err error) {
	if m == nil || err != nil {
		return
	}
	m.mu.Lock()
	m.targetLocked(target)
	m.mu.Unlock()
	m.swaps.WithLabelValues(target, reason).Inc()
}

// appliedAt observes, for each change applied from the log (msTimes: the
// millisecond time in each one's ID, Redis's clock when it was logged), now
// minus that time: against this host's clock when the call that made it
// live returned. The two clocks differ by their skew (NTP keeps it to
// milliseconds); a negative difference is observed as 0.
func (m *Metrics) appliedAt(target string, msTimes []int64, now time.Time) {
	if m == nil || len(msTimes) == 0 {
		return
	}
	h := m.applyLatency.WithLabelValues(target)
	for _, ms := range msTimes {
		h.Observe(max(0, now.Sub(time.UnixMilli(ms)).Seconds()))
	}
}

// changeLog is what measureLag reads. The syncer's Store has LastLogID;
// CountAfter (*maps.Store has it) is used when present.
type changeLog interface {
	LastLogID(ctx context.Context) (string, error)
}

type logCounter interface {
	CountAfter(ctx context.Context, id string, limit int64) (int64, error)
}

// measureLag sets target's lag gauges from the change log's newest ID and
// the last ID applied to target: seconds is the difference of their
// millisecond parts (both Redis's clock, so no skew), entries the count in
// between (capped at lagCountCap). A standby syncer, or one with no
// position yet while the log has entries, has no lag series. A failed read
// leaves the gauges as they were (it is counted as a Redis error).
func (m *Metrics) measureLag(ctx context.Context, target string, log changeLog, applied string, standby bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.targetLocked(target)
	m.mu.Unlock()
	if standby {
		m.lagSeconds.DeleteLabelValues(target)
		m.lagEntries.DeleteLabelValues(target)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	head, err := log.LastLogID(ctx)
	if err != nil {
		return
	}
	if applied == "" {
		applied = maps.ZeroID
	}
	hms, _, okH := maps.ParseID(head)
	ams, _, okA := maps.ParseID(applied)
	switch {
	case !okH || !okA:
		return
	case head == applied || maps.CompareIDs(head, applied) < 0:
		m.lagSeconds.WithLabelValues(target).Set(0)
		m.lagEntries.WithLabelValues(target).Set(0)
		return
	case applied == maps.ZeroID:
		// No position yet: the lag is not a duration.
		m.lagSeconds.DeleteLabelValues(target)
		m.lagEntries.DeleteLabelValues(target)
		return
	}
	m.lagSeconds.WithLabelValues(target).Set(float64(hms-ams) / 1000)
	if c, ok := log.(logCounter); ok {
		if n, err := c.CountAfter(ctx, applied, lagCountCap); err == nil {
			m.lagEntries.WithLabelValues(target).Set(float64(n))
		}
	}
}

// flushed observes one map-file write of file that began at start.
func (m *Metrics) flushed(file string, start time.Time) {
	if m == nil {
		return
	}
	m.flush.WithLabelValues(file).Observe(time.Since(start).Seconds())
}

// runtimeError counts err (if it is one) as a failure of target's Runtime
// API, by the command it names (runtime.CommandError; "other" when none).
// A cancelled call and a write the lease fence stopped are not failures of
// HAProxy and are not counted.
func (m *Metrics) runtimeError(target string, err error) {
	if m == nil || err == nil || errors.Is(err, context.Canceled) || errors.Is(err, errLeaseLost) {
		return
	}
	cmd := runtime.CommandOf(err)
	if cmd == "" {
		cmd = "other"
	}
	m.runtimeErrs.WithLabelValues(target, cmd).Inc()
}

// redisError counts err (if it is one) as a failed Redis operation op.
func (m *Metrics) redisError(op string, err error) {
	if m == nil || err == nil || errors.Is(err, context.Canceled) {
		return
	}
	m.redisErrs.WithLabelValues(op).Inc()
}

// runtime returns rt with its failures counted for target, and, when rt is
// a *runtime.Client (anything with SetOnConnect), its reconnects. With a
// nil m it returns rt itself.
func (m *Metrics) runtime(target string, rt Runtime) Runtime {
	if m == nil || rt == nil {
		return rt
	}
	if c, ok := rt.(interface{ SetOnConnect(func()) }); ok {
		var first atomic.Bool
		counter := m.reconnects.WithLabelValues(target)
		c.SetOnConnect(func() {
			if !first.CompareAndSwap(false, true) {
				counter.Inc()
			}
		})
	}
	return &countingRuntime{Runtime: rt, m: m, target: target}
}

// store returns st with its failures counted by operation. With a nil m it
// returns st itself.
func (m *Metrics) store(st Store) Store {
	if m == nil || st == nil {
		return st
	}
	return &countingStore{Store: st, m: m}
}

// countingRuntime counts the failures of the Runtime it wraps.
type countingRuntime struct {
	Runtime
	m      *Metrics
	target string
}

func (r *countingRuntime) count(err error) error { r.m.runtimeError(r.target, err); return err }

func (r *countingRuntime) Apply(ctx context.Context, mapPath string, ops []runtime.Op) ([]error, error) {
	results, err := r.Runtime.Apply(ctx, mapPath, ops)
	if err == nil {
		for _, e := range results {
			if e != nil && !errors.Is(e, runtime.ErrNotFound) { // a missing key is drift, repaired
				r.m.runtimeError(r.target, e)
			}
		}
	}
	return results, r.count(err)
}

func (r *countingRuntime) Replace(ctx context.Context, mapPath string, entries []runtime.Entry) error {
	return r.count(r.Runtime.Replace(ctx, mapPath, entries))
}

func (r *countingRuntime) AddFrom(ctx context.Context, mapPath string, entries runtime.Entries) error {
	return r.count(r.Runtime.AddFrom(ctx, mapPath, entries))
}

func (r *countingRuntime) ReplaceFrom(ctx context.Context, mapPath string, entries runtime.Entries) error {
	return r.count(r.Runtime.ReplaceFrom(ctx, mapPath, entries))
}

func (r *countingRuntime) ClearUncommitted(ctx context.Context, mapPath string) (int, error) {
	n, err := r.Runtime.ClearUncommitted(ctx, mapPath)
	return n, r.count(err)
}

func (r *countingRuntime) Backends(ctx context.Context) ([]string, error) {
	b, err := r.Runtime.Backends(ctx)
	return b, r.count(err)
}

func (r *countingRuntime) Info(ctx context.Context) (runtime.Info, error) {
	i, err := r.Runtime.Info(ctx)
	return i, r.count(err)
}

func (r *countingRuntime) Dump(ctx context.Context, mapPath string, fn func(key, value string) error) error {
	return r.count(r.Runtime.Dump(ctx, mapPath, fn))
}

func (r *countingRuntime) Maps(ctx context.Context) ([]runtime.MapStatus, error) {
	ms, err := r.Runtime.Maps(ctx)
	return ms, r.count(err)
}

func (r *countingRuntime) MapEntryCount(ctx context.Context, mapPath string) (int, error) {
	n, err := r.Runtime.MapEntryCount(ctx, mapPath)
	return n, r.count(err)
}

// countingStore counts the failures of the Store it wraps, by operation.
// Methods the Store interface gains later pass through uncounted.
type countingStore struct {
	Store
	m *Metrics
}

func (s *countingStore) Scan(ctx context.Context, fn func(maps.Assignment) error, bad func(maps.BadEntry)) (int, error) {
	n, err := s.Store.Scan(ctx, fn, bad)
	s.m.redisError("scan", err)
	return n, err
}

func (s *countingStore) LastLogID(ctx context.Context) (string, error) {
	id, err := s.Store.LastLogID(ctx)
	s.m.redisError("last_log_id", err)
	return id, err
}

func (s *countingStore) LogHas(ctx context.Context, id string) (bool, error) {
	ok, err := s.Store.LogHas(ctx, id)
	s.m.redisError("log_has", err)
	return ok, err
}

func (s *countingStore) ReadLog(ctx context.Context, after string, count int64, block time.Duration) ([]maps.Change, []maps.BadEntry, error) {
	c, b, err := s.Store.ReadLog(ctx, after, count, block)
	s.m.redisError("read_log", err)
	return c, b, err
}

func (s *countingStore) Count(ctx context.Context) (int64, error) {
	n, err := s.Store.Count(ctx)
	s.m.redisError("count", err)
	return n, err
}

func (s *countingStore) ScanPage(ctx context.Context, cursor uint64, count int64) ([]maps.Assignment, []maps.BadEntry, uint64, error) {
	a, b, next, err := s.Store.ScanPage(ctx, cursor, count)
	s.m.redisError("scan_page", err)
	return a, b, next, err
}

func (s *countingStore) UsersChangedAfter(ctx context.Context, after, upto string, limit int64) (map[string]bool, error) {
	u, err := s.Store.UsersChangedAfter(ctx, after, upto, limit)
	s.m.redisError("users_changed_after", err)
	return u, err
}

func (s *countingStore) AddShards(ctx context.Context, shards []string) error {
	err := s.Store.AddShards(ctx, shards)
	s.m.redisError("add_shards", err)
	return err
}

func (s *countingStore) TakeForcedReconcile(ctx context.Context) (bool, error) {
	ok, err := s.Store.TakeForcedReconcile(ctx)
	s.m.redisError("take_forced_reconcile", err)
	return ok, err
}

func (s *countingStore) ReportSyncer(ctx context.Context, st maps.SyncerState) error {
	err := s.Store.ReportSyncer(ctx, st)
	s.m.redisError("report_syncer", err)
	return err
}

func (s *countingStore) Claim(ctx context.Context, key, holder string, ttl time.Duration) (bool, string, error) {
	ok, by, err := s.Store.Claim(ctx, key, holder, ttl)
	s.m.redisError("claim", err)
	return ok, by, err
}

func (s *countingStore) Release(ctx context.Context, key, holder string) error {
	err := s.Store.Release(ctx, key, holder)
	s.m.redisError("release", err)
	return err
}

// CountAfter passes through to the wrapped store when it has one (for
// measureLag), counted as the operation count_after.
func (s *countingStore) CountAfter(ctx context.Context, id string, limit int64) (int64, error) {
	c, ok := s.Store.(logCounter)
	if !ok {
		return 0, errNoCountAfter
	}
	n, err := c.CountAfter(ctx, id, limit)
	s.m.redisError("count_after", err)
	return n, err
}

var errNoCountAfter = errors.New("store cannot count log entries")

// Package syncer holds the loop that keeps one HAProxy map equal to the
// assignments in Redis: it brings the live map to Redis's content (by a diff,
// or one atomic swap when the diff is large), then follows the change log and
// applies each change over the Runtime API, and persists the map file so a
// restarted HAProxy starts right.
//
// Where a change goes from Redis to HAProxy, top to bottom: Run -> fullSync
// (at start, and after any doubt) -> step (read the log) -> apply (diff
// against the mirror, send) -> the file (mapfile.go) -> report (status.go,
// Redis, for mapctl --wait). drift.go looks for changes made behind the
// syncer's back; lease.go keeps one syncer per name and per map.
package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// Runtime is the part of HAProxy's Runtime API the syncer needs.
// *runtime.Client implements it.
type Runtime interface {
	// Apply sends ops in order; see runtime.Client.Apply for the contract.
	Apply(ctx context.Context, mapPath string, ops []runtime.Op) ([]error, error)
	// Replace swaps the whole live map atomically or leaves it as it was.
	Replace(ctx context.Context, mapPath string, entries []runtime.Entry) error
	// ClearUncommitted drops versions of the map that were prepared and
	// never committed (a loader killed mid-swap).
	ClearUncommitted(ctx context.Context, mapPath string) (int, error)
	// Backends lists HAProxy's backends.
	Backends(ctx context.Context) ([]string, error)
	// Info identifies the running HAProxy process.
	Info(ctx context.Context) (runtime.Info, error)
	// Dump streams the live map; a cut dump is an error.
	Dump(ctx context.Context, mapPath string, fn func(key, value string) error) error
	// MapEntryCount is HAProxy's entry count for the map, all versions.
	MapEntryCount(ctx context.Context, mapPath string) (int, error)
	// Close drops the long-lived connection; the next Apply dials anew.
	Close() error
}

// Store is the part of the Redis store the syncer needs. *maps.Store
// implements it.
type Store interface {
	Snapshot(ctx context.Context, bad func(maps.BadEntry)) (maps.Snapshot, error)
	LastLogID(ctx context.Context) (string, error)
	LogHas(ctx context.Context, id string) (bool, error)
	ReadLog(ctx context.Context, after string, count int64, block time.Duration) ([]maps.Change, []maps.BadEntry, error)
	Count(ctx context.Context) (int64, error)
	ScanPage(ctx context.Context, cursor uint64, count int64) ([]maps.Assignment, []maps.BadEntry, uint64, error)
	UsersChangedAfter(ctx context.Context, after, upto string, limit int64) (map[string]bool, error)
	AddShards(ctx context.Context, shards []string) error
	TakeForcedReconcile(ctx context.Context) (bool, error)
	ReportSyncer(ctx context.Context, st maps.SyncerState) error
	Claim(ctx context.Context, key, holder string, ttl time.Duration) (bool, string, error)
	Release(ctx context.Context, key, holder string) error
	NameClaimKey(name string) string
	LeaseKey(target string) string
}

// DefaultMaxDeleteShare is the delete guard's share unless told otherwise.
const DefaultMaxDeleteShare = 0.10

// Config tunes a Syncer. Zero values take the defaults named.
type Config struct {
	Name         string        // how this syncer reports itself in Redis; unique among running syncers (required)
	MapPath      string        // the map path exactly as in haproxy.cfg; also the file written (required)
	FileMode     os.FileMode   // mode of a new map file; an existing file keeps its mode and owner (0640)
	FlushDelay   time.Duration // longest the file lags the live map while changes arrive (200 ms)
	BatchMax     int           // most changes read and applied at once (10,000)
	ReplaceAbove int           // a batch with more set/del than this is applied as one versioned swap (64)
	Heartbeat    time.Duration // how often the syncer reports itself in Redis and renews its claims (1 s)
	CheckEvery   time.Duration // how often HAProxy's identity (show info Pid) is checked (500 ms)
	Socket       string        // the stats socket: watched to notice restarts at once, and names the lease (optional)
	// MaxDeleteShare: a full reconcile that would delete more than this share
	// of the live map (and more than 5 entries) is refused until a human
	// allows it (mapctl reconcile --force) or restores Redis. 0 refuses any
	// such reconcile; use DefaultMaxDeleteShare for the usual 10%.
	MaxDeleteShare float64
	ReconcileEvery time.Duration // how often drift in Redis, the live map and the file is looked for (60 s)
	ClaimTTL       time.Duration // how long the name and the lease outlive a syncer that stops renewing them (5 s)
	Logger         *slog.Logger
	Metrics        *Metrics // Prometheus instruments (nil: none); see NewMetrics
}

func (c *Config) defaults() error {
	if c.Name == "" || c.MapPath == "" {
		return errors.New("syncer: Name and MapPath are required")
	}
	if c.MaxDeleteShare < 0 || c.MaxDeleteShare > 1 {
		return fmt.Errorf("syncer: MaxDeleteShare %v: must be from 0 to 1", c.MaxDeleteShare)
	}
	if c.FileMode == 0 {
		c.FileMode = 0o640
	}
	if c.FlushDelay <= 0 {
		c.FlushDelay = 200 * time.Millisecond
	}
	if c.BatchMax <= 0 {
		c.BatchMax = 10_000
	}
	if c.ReplaceAbove <= 0 {
		c.ReplaceAbove = 64
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = time.Second
	}
	if c.ReconcileEvery <= 0 {
		c.ReconcileEvery = time.Minute
	}
	if c.CheckEvery <= 0 {
		c.CheckEvery = 500 * time.Millisecond
	}
	if c.ClaimTTL <= 0 {
		c.ClaimTTL = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Syncer keeps one HAProxy map equal to the store. Create it with New and
// call Run once.
type Syncer struct {
	cfg      Config
	store    Store
	rt       Runtime
	log      *slog.Logger
	instance string // this process, in its claims and reports

	// Owned by the Run goroutine.
	mirror     map[string]string // what the live map holds, as far as we know
	applied    string            // last change-log ID in the live map
	needFull   bool              // the live map is in doubt: reconcile it whole
	haproxy    runtime.Info      // the process the live map was loaded into
	lastCheck  time.Time
	kick       chan struct{} // the socket appeared or went away, or SIGHUP: look now
	badInHash  int           // invalid entries in the hash at the last snapshot
	drift      driftScan     // the periodic drift check (drift.go)
	file       mapFile       // the map file writer (mapfile.go)
	shardsWarn bool          // the shards key is unusable; warned once
	active     bool          // holds the map's lease and writes to HAProxy
	counts     shardCounts   // users per shard in the mirror, for ShardCounts (status.go)

	claims claims // name and lease (lease.go); shared with the heartbeat

	mu        sync.Mutex // guards status and the problems
	status    Status
	loop      error // the last step's failure, nil when it succeeded
	fileErr   error // the last file write's failure, nil when it succeeded
	reportErr error // the last report's failure (heartbeat goroutine)
	nameErr   error // the last renewal of the name's failure (heartbeat goroutine)

	reportMu   sync.Mutex // serialises reports to Redis; guards lastReport
	lastReport time.Time
}

// New returns a syncer for cfg.MapPath.
func New(cfg Config, store Store, rt Runtime) (*Syncer, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	s := &Syncer{
		cfg:      cfg,
		store:    cfg.Metrics.store(store),
		rt:       cfg.Metrics.runtime(cfg.Socket, rt),
		log:      cfg.Logger.With("map", cfg.MapPath),
		instance: newInstanceID(),
		needFull: true,
		applied:  maps.ZeroID,
		kick:     make(chan struct{}, 1),
	}
	s.file.init(cfg.MapPath, cfg.FileMode)
	s.file.metrics = cfg.Metrics
	return s, nil
}

// Kick makes the syncer check HAProxy and look for drift now, instead of
// at its next period (the command calls it on SIGHUP). Safe for concurrent
// use.
func (s *Syncer) Kick() {
	s.drift.forceNext.Store(true)
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run syncs until ctx is cancelled, then finishes the batch in hand, writes
// the map file (when it holds the map's lease) and returns nil. It retries every failure (Redis or HAProxy
// away) with capped, jittered backoff, keeping the live map and the file as
// they are meanwhile. It returns an error if another running syncer holds
// its name (ErrNameTaken), or if the final file write fails.
func (s *Syncer) Run(ctx context.Context) error {
	if err := s.claimName(ctx); err != nil {
		return err
	}
	if s.cfg.Socket != "" {
		stop, err := watchSocket(s.cfg.Socket, s.kick, s.log)
		if err != nil {
			s.log.Warn("cannot watch the socket; relying on show info checks", "err", err)
		} else {
			defer stop()
		}
	}
	hbCtx, stopHB := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); s.heartbeat(hbCtx) }()
	defer func() { stopHB(); <-hbDone; s.releaseClaims() }()

	backoff := newBackoff(50*time.Millisecond, time.Second)
	for ctx.Err() == nil {
		if lost := s.claims.nameLost(); lost != nil {
			return lost
		}
		if !s.holdLease(ctx) {
			s.sleep(ctx, s.cfg.Heartbeat)
			continue
		}
		var err error
		if s.needFull {
			err = s.fullSync(ctx)
		} else {
			err = s.step(ctx)
		}
		if ctx.Err() != nil {
			break
		}
		s.setLoopProblem(ctx, err)
		if err != nil {
			wait := backoff.next()
			if errors.Is(err, errRefused) {
				wait = 5 * time.Second // each try dumps the live map and scans Redis
			}
			s.sleep(ctx, wait)
			continue
		}
		backoff.reset()
	}
	// The last batch was applied with a context of its own; persist it.
	if s.active {
		if err := s.file.flushNow(s); err != nil {
			return fmt.Errorf("syncer: final flush: %w", err)
		}
	}
	s.report(context.Background(), true)
	s.log.Info("syncer stopped", "log_id", s.applied, "entries", len(s.mirror))
	return nil
}

// fullSync brings the live map to Redis's content and resumes following the
// log from the snapshot's ID. It never takes the live map as truth: it reads
// it, diffs it against a snapshot of Redis, and sends the difference (as
// single commands, or one versioned swap when that is cheaper or the live map
// holds duplicates). It runs at start, after HAProxy restarts, and after any
// doubt (a failed batch, a log gap).
func (s *Syncer) fullSync(ctx context.Context) error {
	start := time.Now()
	// A connection kept across a reload still talks to the old process (and
	// keeps it alive): updates sent on it would never reach the new one.
	s.rt.Close()
	info, err := s.rt.Info(ctx)
	if err != nil {
		return fail(kindHAProxy, err)
	}
	if backends, err := s.rt.Backends(ctx); err != nil {
		return fail(kindHAProxy, err)
	} else if err := s.publishShards(ctx, backends); err != nil {
		return err
	}
	// A loader killed mid-swap leaves a prepared version behind; some HAProxy
	// versions loop on a later set of a key it holds (3.2.0).
	if n, err := s.rt.ClearUncommitted(ctx, s.cfg.MapPath); err != nil {
		return fail(kindHAProxy, err)
	} else if n > 0 {
		s.log.Warn("cleared uncommitted map versions left by an interrupted load", "entries", n)
	}
	live, lines, err := s.dumpLive(ctx)
	if err != nil {
		return fail(kindHAProxy, err)
	}
	snap, err := s.store.Snapshot(ctx, s.skipBad)
	if err != nil {
		return fail(kindRedis, err)
	}
	if err := s.guard(ctx, live, snap.Entries); err != nil {
		return err
	}
	d := maps.Diff(snap.Entries, live)
	s.mirror = live
	s.counts.reset(s.mirror)
	swaps := s.Status().Swaps
	if lines != len(live) { // duplicate keys: only a swap removes them
		err = s.swap(ctx, snap.Entries)
		s.cfg.Metrics.swapped(s.cfg.Socket, reasonDuplicates, err)
	} else {
		err = s.push(ctx, wantsOf(s.mirror, snap.Entries), true)
	}
	how := "diff"
	if s.Status().Swaps > swaps {
		how = "swap"
	}
	if err != nil {
		s.mirror = nil // unknown until the next full sync reads it again
		s.counts.reset(nil)
		return fail(kindHAProxy, err)
	}
	s.mirror = snap.Entries
	s.counts.reset(s.mirror)
	s.applied = snap.LogID
	s.badInHash = snap.Skipped
	s.needFull = false
	s.haproxy, s.lastCheck = info, time.Now()
	s.drift.reset()
	s.file.markDirty()
	s.file.flushNow(s) // a failure is the file's state, retried on its own
	s.updateStatus(func(st *Status) { st.FullSyncs++; st.HAProxyPid = info.Pid })
	s.cfg.Metrics.fullSynced(s.cfg.Socket)
	s.log.Info("full sync", "entries", len(snap.Entries), "how", how, "missing", d.Missing, "extra", d.Extra,
		"changed", d.Changed, "skipped", snap.Skipped, "log_id", snap.LogID, "haproxy_pid", info.Pid,
		"haproxy_version", info.Version, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// dumpLive reads the live map; of duplicated keys the first, which HAProxy
// serves, counts. lines is the number of entries HAProxy listed.
func (s *Syncer) dumpLive(ctx context.Context) (live map[string]string, lines int, err error) {
	live = map[string]string{}
	err = s.dump(ctx, func(k, v string) {
		lines++
		if _, dup := live[k]; !dup {
			live[k] = v
		}
	})
	return live, lines, err
}

// dump streams the live map to fn and checks that HAProxy listed as many
// entries as it counts: a concurrent "clear map" can cut a dump that still
// ends as a whole one does. Uncommitted versions must have been cleared.
func (s *Syncer) dump(ctx context.Context, fn func(k, v string)) error {
	lines := 0
	err := s.rt.Dump(ctx, s.cfg.MapPath, func(k, v string) error {
		lines++
		fn(k, v)
		return nil
	})
	if err != nil {
		return err
	}
	cnt, err := s.rt.MapEntryCount(ctx, s.cfg.MapPath)
	if err != nil {
		return err
	}
	if cnt != lines {
		return fmt.Errorf("dump of %s listed %d entries, HAProxy counts %d (changed during the dump, or a version pending): %w",
			s.cfg.MapPath, lines, cnt, runtime.ErrTruncated)
	}
	return nil
}

// errRefused marks a reconcile the delete guard refused.
var errRefused = errors.New("refusing to delete")

// guard refuses a reconcile that would delete more than MaxDeleteShare of
// the live map (and more than 5 entries): Redis coming back empty (FLUSHALL,
// a restart without persistence) must not wipe the routing of every user.
// A human lifts it once with mapctl reconcile --force.
func (s *Syncer) guard(ctx context.Context, live, next map[string]string) error {
	deletes := 0
	for k := range live {
		if _, ok := next[k]; !ok {
			deletes++
		}
	}
	if deletes <= 5 || float64(deletes) <= s.cfg.MaxDeleteShare*float64(len(live)) {
		return nil
	}
	forced, err := s.store.TakeForcedReconcile(ctx)
	if err != nil {
		return fail(kindRedis, err)
	}
	if forced {
		s.log.Warn("reconcile forced by a human: deleting from the live map", "deletes", deletes, "live", len(live))
		return nil
	}
	s.updateStatus(func(st *Status) { st.Refused++ })
	return fail(kindGuard, fmt.Errorf("%w %d of %d live entries (more than %.0f%%): did Redis lose its data? "+
		"HAProxy keeps serving the current map. Restore Redis with 'mapctl restore --from %s', or accept with 'mapctl reconcile --force'",
		errRefused, deletes, len(live), 100*s.cfg.MaxDeleteShare, s.cfg.MapPath))
}

// publishShards records HAProxy's backends as the shards mapctl may assign.
// A shards key of the wrong type is warned about once and skipped: it must
// not stop the map from being synced.
func (s *Syncer) publishShards(ctx context.Context, backends []string) error {
	var valid []string
	for _, b := range backends {
		if maps.ValidateShard(b) == nil {
			valid = append(valid, b)
		}
	}
	err := s.store.AddShards(ctx, valid)
	switch {
	case errors.Is(err, maps.ErrWrongType):
		if !s.shardsWarn {
			s.log.Warn("cannot publish HAProxy's backends as known shards; going on without (mapctl set needs --force until it is fixed)", "err", err)
			s.shardsWarn = true
		}
		return nil
	case err != nil:
		return fail(kindRedis, err)
	}
	s.shardsWarn = false
	return nil
}

// step waits briefly for changes, applies those that came, and flushes the
// file and reports when they are due.
func (s *Syncer) step(ctx context.Context) error {
	if err := s.checkHAProxy(ctx); err != nil || s.needFull {
		return err
	}
	if err := s.reconcile(ctx); err != nil || s.needFull {
		return err
	}
	s.file.collect(s, ctx)
	wait := s.file.bound(s, min(s.cfg.Heartbeat, s.cfg.CheckEvery))
	if s.drift.scanning() {
		// A drift pass reads Redis a page per step: take what the log has
		// and go on. (A short BLOCK would not do: Redis ends blocking reads
		// on its own timer, up to 1/hz = 100 ms late.)
		wait = -1
	}
	changes, bad, err := s.store.ReadLog(ctx, s.applied, int64(s.cfg.BatchMax), wait)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fail(kindRedis, err)
	}
	for _, b := range bad {
		s.skipBad(b)
	}
	if len(changes) > 0 {
		// Reading after an ID that is no longer in the log returns whatever
		// follows, silently skipping what was trimmed: check it is still there.
		ok, err := s.store.LogHas(ctx, s.applied)
		if err != nil {
			return fail(kindRedis, err)
		}
		if !ok {
			s.log.Warn("change log gap: position no longer in the log, reconciling the whole map", "log_id", s.applied)
			s.cfg.Metrics.needFull(s.cfg.Socket, reasonGap)
			s.needFull = true
			return nil
		}
		// Once read, a batch is applied whole even if we are told to stop.
		err = s.apply(context.WithoutCancel(ctx), changes)
		if err != nil {
			s.cfg.Metrics.needFull(s.cfg.Socket, reasonDoubt)
			s.needFull = true
			return fail(kindHAProxy, err)
		}
		s.report(ctx, true)
	}
	s.file.maybeStart(s)
	return nil
}

// checkHAProxy notices a restarted or reloaded HAProxy: a new process
// started from the map file on disk, which may lag Redis, so the live map is
// reconciled whole. It runs every CheckEvery, and at once when the socket
// changes. A HAProxy that does not answer fails here within the runtime
// client's timeout.
func (s *Syncer) checkHAProxy(ctx context.Context) error {
	select {
	case <-s.kick:
	default:
		if time.Since(s.lastCheck) < s.cfg.CheckEvery {
			return nil
		}
	}
	info, err := s.rt.Info(ctx)
	if err != nil {
		s.cfg.Metrics.needFull(s.cfg.Socket, reasonDoubt)
		s.needFull = true // whatever comes back must be reconciled
		return fail(kindHAProxy, err)
	}
	s.lastCheck = time.Now()
	if info.Pid != s.haproxy.Pid || info.UptimeSec < s.haproxy.UptimeSec {
		s.log.Info("haproxy restarted, reconciling the live map", "old_pid", s.haproxy.Pid, "pid", info.Pid)
		s.cfg.Metrics.needFull(s.cfg.Socket, reasonHAProxyRestart)
		s.needFull = true
		return nil
	}
	s.haproxy = info
	return nil
}

// want is what one user's entry in the live map must become.
type want struct {
	user  string
	shard string // "" to delete
}

// wantsOf lists what turns the live map from into to, in no order.
func wantsOf(from, to map[string]string) []want {
	var ws []want
	for u, sh := range to {
		if from[u] != sh {
			ws = append(ws, want{u, sh})
		}
	}
	for u := range from {
		if _, ok := to[u]; !ok {
			ws = append(ws, want{user: u})
		}
	}
	return ws
}

// apply brings the live map up to date with changes: it keeps the last
// change per user and pushes it; then the position moves to the last ID.
func (s *Syncer) apply(ctx context.Context, changes []maps.Change) error {
	last := map[string]int{}
	var ws []want
	for _, c := range changes {
		if c.Op == "" { // a bad entry, already counted
			continue
		}
		w := want{user: c.User}
		if c.Op == maps.OpSet {
			w.shard = c.Shard
		}
		if i, seen := last[c.User]; seen {
			ws[i] = w
			continue
		}
		last[c.User] = len(ws)
		ws = append(ws, w)
	}
	if err := s.push(ctx, ws, false); err != nil {
		return err
	}
	newID := changes[len(changes)-1].ID
	s.applied = newID
	s.cfg.Metrics.applied(s.cfg.Socket, changes, time.Now())
	s.updateStatus(func(st *Status) { st.Changes += int64(len(changes)) })
	s.log.Debug("applied", "changes", len(changes), "log_id", newID)
	return nil
}

// push makes the live map hold what ws say, diffed against the mirror: add
// for a new key, set for a changed one, del for a gone one; what the mirror
// says is live already sends nothing. A batch with many set/del, which scan
// the whole map in HAProxy 2.6, goes as one versioned swap instead; with
// whole, so does a batch with many ops of any kind (a full sync is applied
// atomically unless it is small).
func (s *Syncer) push(ctx context.Context, ws []want, whole bool) error {
	if !s.leaseValid() {
		return errLeaseLost
	}
	var ops []runtime.Op
	setDel := 0
	for _, w := range ws {
		cur, has := s.mirror[w.user]
		switch {
		case w.shard == "" && has:
			ops = append(ops, runtime.Op{Kind: runtime.Del, Key: w.user})
			setDel++
		case w.shard != "" && !has:
			ops = append(ops, runtime.Op{Kind: runtime.Add, Key: w.user, Value: w.shard})
		case w.shard != "" && cur != w.shard:
			ops = append(ops, runtime.Op{Kind: runtime.Set, Key: w.user, Value: w.shard})
			setDel++
		}
	}
	if len(ops) == 0 {
		return nil
	}
	var err error
	if setDel > s.cfg.ReplaceAbove || whole && len(ops) > s.cfg.ReplaceAbove {
		err = s.applyBySwap(ctx, ops)
		s.cfg.Metrics.swapped(s.cfg.Socket, reasonLargeBatch, err)
	} else {
		err = s.applyOps(ctx, ops)
	}
	if err != nil {
		return err
	}
	s.file.markDirty()
	return nil
}

// applyOps sends ops one by one, pipelined, and follows the mirror. A set
// whose key is missing (someone deleted it by hand) is retried as an add; a
// del whose key is missing is already done.
func (s *Syncer) applyOps(ctx context.Context, ops []runtime.Op) error {
	results, err := s.rt.Apply(ctx, s.cfg.MapPath, ops)
	for i, r := range results {
		s.follow(ops[i], r)
	}
	if err != nil {
		return err
	}
	var retry []runtime.Op
	for i, r := range results {
		switch {
		case r == nil:
		case errors.Is(r, runtime.ErrNotFound) && ops[i].Kind == runtime.Set:
			s.log.Warn("drift: key missing from live map, adding it", "user", ops[i].Key)
			retry = append(retry, runtime.Op{Kind: runtime.Add, Key: ops[i].Key, Value: ops[i].Value})
		case errors.Is(r, runtime.ErrNotFound) && ops[i].Kind == runtime.Del:
			s.log.Warn("drift: key already gone from live map", "user", ops[i].Key)
		default:
			return r
		}
	}
	if len(retry) > 0 {
		return s.applyOps(ctx, retry)
	}
	return nil
}

// follow updates the mirror for one op's outcome.
func (s *Syncer) follow(op runtime.Op, result error) {
	s.counts.follow(s.mirror, op, result)
	switch {
	case op.Kind == runtime.Del && (result == nil || errors.Is(result, runtime.ErrNotFound)):
		delete(s.mirror, op.Key)
	case op.Kind != runtime.Del && result == nil:
		s.mirror[op.Key] = op.Value
	}
}

// applyBySwap applies ops to a copy of the mirror and swaps the whole live
// map for it.
func (s *Syncer) applyBySwap(ctx context.Context, ops []runtime.Op) error {
	next := make(map[string]string, len(s.mirror)+len(ops))
	for k, v := range s.mirror {
		next[k] = v
	}
	for _, op := range ops {
		if op.Kind == runtime.Del {
			delete(next, op.Key)
		} else {
			next[op.Key] = op.Value
		}
	}
	return s.swap(ctx, next)
}

// swap replaces the whole live map with next, and the mirror with it.
func (s *Syncer) swap(ctx context.Context, next map[string]string) error {
	if !s.leaseValid() {
		return errLeaseLost
	}
	if err := s.rt.Replace(ctx, s.cfg.MapPath, entriesOf(next)); err != nil {
		return err
	}
	s.mirror = next
	s.counts.reset(next)
	s.file.markDirty()
	s.updateStatus(func(st *Status) { st.Swaps++ })
	return nil
}

func (s *Syncer) skipBad(b maps.BadEntry) {
	s.updateStatus(func(st *Status) { st.BadSkipped++ })
	s.log.Warn("skipped invalid entry from redis", "user", fmt.Sprintf("%.80q", b.User), "err", b.Err)
}

// entriesOf returns m as runtime entries, in no particular order: HAProxy's
// map lookups do not depend on it (the file is sorted on its own).
func entriesOf(m map[string]string) []runtime.Entry {
	out := make([]runtime.Entry, 0, len(m))
	for k, v := range m {
		out = append(out, runtime.Entry{Key: k, Value: v})
	}
	return out
}

// sleep waits d, or less if the socket changes, SIGHUP comes or ctx ends.
func (s *Syncer) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-s.kick:
		// Put the kick back: checkHAProxy must still see it.
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

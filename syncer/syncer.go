// Package syncer holds the loop that keeps one HAProxy map equal to the
// assignments in Redis: it loads them all into the live map in one atomic
// swap, then follows the change log and applies each change over the Runtime
// API, and persists the map file so a restarted HAProxy starts right.
//
// Where a change goes from Redis to HAProxy, top to bottom: Run -> fullSync
// (once, and after any doubt) -> step (read the log) -> apply (diff against
// the mirror, send) -> flush (the file) -> report (Redis, for mapctl --wait).
package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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

// Config tunes a Syncer. Zero values take the defaults named.
type Config struct {
	Name         string        // how this syncer reports itself in Redis (required)
	MapPath      string        // the map path exactly as in haproxy.cfg; also the file written (required)
	FlushDelay   time.Duration // longest the file lags the live map while changes arrive (200 ms)
	BatchMax     int           // most changes read and applied at once (10,000)
	ReplaceAbove int           // a batch with more set/del than this is applied as one versioned swap (64)
	Heartbeat    time.Duration // how often the syncer reports itself in Redis (1 s)
	CheckEvery   time.Duration // how often HAProxy's identity (show info Pid) is checked (500 ms)
	Socket       string        // the stats socket: its directory is watched to notice restarts at once (optional)
	// MaxDeleteShare: a full reconcile that would delete more than this share
	// of the live map (and more than 5 entries) is refused until a human
	// allows it (mapctl reconcile --force) or restores Redis (0.10).
	MaxDeleteShare float64
	ReconcileEvery time.Duration // how often drift in Redis, the live map and the file is looked for (60 s)
	Logger         *slog.Logger
}

func (c *Config) defaults() error {
	if c.Name == "" || c.MapPath == "" {
		return errors.New("syncer: Name and MapPath are required")
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
	if c.MaxDeleteShare <= 0 {
		c.MaxDeleteShare = 0.10
	}
	if c.ReconcileEvery <= 0 {
		c.ReconcileEvery = time.Minute
	}
	if c.CheckEvery <= 0 {
		c.CheckEvery = 500 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Syncer keeps one HAProxy map equal to the store. Create it with New and
// call Run once.
type Syncer struct {
	cfg   Config
	store *maps.Store
	rt    Runtime
	log   *slog.Logger

	// Owned by the Run goroutine.
	mirror       map[string]string // what the live map holds, as far as we know
	applied      string            // last change-log ID in the live map
	fileID       string            // change-log ID the map file reflects
	dirtySince   time.Time         // first change not yet in the file; zero when none
	needFull     bool              // the live map is in doubt: reload it whole
	problem      string            // current failure state, "" when healthy
	haproxy      runtime.Info      // the process the live map was loaded into
	lastCheck    time.Time
	kick         chan struct{} // the socket appeared or went away
	badInHash    int           // invalid entries in the hash at the last snapshot
	lastDrift    time.Time     // last periodic reconcile
	lastGapCheck time.Time
	fileStat     fileStamp // the map file as we last wrote it

	mu     sync.Mutex // guards status
	status Status

	writing bool           // a background file write is under way
	written chan fileWrite // its outcome

	reportMu   sync.Mutex // serialises reports to Redis; guards lastReport
	lastReport time.Time
}

// Status is a syncer's view of itself, for health checks and metrics.
type Status struct {
	Ready       bool   // the live map was loaded and the last step succeeded
	Problem     string // why not ready
	Applied     string // last change-log ID in the live map
	Entries     int    // entries in the live map
	FullSyncs   int    // whole-map swaps done
	Refused     int    // reconciles refused by the delete guard
	Drift       int64  // entries corrected by periodic reconciles
	Changes     int64  // change-log entries applied
	BadSkipped  int64  // invalid entries found in Redis and skipped
	HAProxyPid  int64
	FileWritten time.Time
}

// New returns a syncer for cfg.MapPath.
func New(cfg Config, store *maps.Store, rt Runtime) (*Syncer, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	return &Syncer{
		cfg:      cfg,
		store:    store,
		rt:       rt,
		log:      cfg.Logger.With("map", cfg.MapPath),
		needFull: true,
		applied:  maps.ZeroID,
		kick:     make(chan struct{}, 1),
		written:  make(chan fileWrite, 1),
	}, nil
}

// Status returns a copy of the current status. Safe for concurrent use.
func (s *Syncer) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *Syncer) updateStatus(f func(*Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.status)
	s.status.Applied = s.applied
	s.status.Entries = len(s.mirror)
}

// Run syncs until ctx is cancelled, then finishes the batch in hand, writes
// the map file and returns nil. It retries every failure (Redis or HAProxy
// away) with capped, jittered backoff, keeping the live map and the file as
// they are meanwhile; it returns an error only if the final file write fails.
func (s *Syncer) Run(ctx context.Context) error {
	backoff := newBackoff(50*time.Millisecond, time.Second)
	if s.cfg.Socket != "" {
		stop, err := watchSocket(s.cfg.Socket, s.kick, s.log)
		if err != nil {
			s.log.Warn("cannot watch the socket; relying on show info checks", "err", err)
		} else {
			defer stop()
		}
	}
	s.resume(ctx)
	hbCtx, stopHB := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); s.heartbeat(hbCtx) }()
	defer func() { stopHB(); <-hbDone }()
	for ctx.Err() == nil {
		var err error
		if s.needFull {
			err = s.fullSync(ctx)
		} else {
			err = s.step(ctx)
		}
		if err != nil && ctx.Err() == nil {
			s.setProblem(err)
			wait := backoff.next()
			if errors.Is(err, errRefused) {
				wait = 5 * time.Second // each try dumps the live map and scans Redis
			}
			s.sleep(ctx, wait)
			continue
		}
		if err == nil {
			s.setProblem(nil)
			backoff.reset()
		}
	}
	// The last batch was applied with a context of its own; persist it.
	if err := s.flush(); err != nil {
		return fmt.Errorf("syncer: final flush: %w", err)
	}
	s.report(context.Background(), true)
	s.log.Info("syncer stopped", "applied", s.applied, "entries", len(s.mirror))
	return nil
}

// fullSync loads every assignment into the live map in one versioned swap,
// writes the file and resumes following the log from the snapshot's ID.
func (s *Syncer) fullSync(ctx context.Context) error {
	start := time.Now()
	// A connection kept across a reload still talks to the old process (and
	// keeps it alive): updates sent on it would never reach the new one.
	s.rt.Close()
	info, err := s.rt.Info(ctx)
	if err != nil {
		return fmt.Errorf("haproxy: %w", err)
	}
	if backends, err := s.rt.Backends(ctx); err != nil {
		return fmt.Errorf("haproxy: %w", err)
	} else if err := s.publishShards(ctx, backends); err != nil {
		return err
	}
	live, err := s.dumpLive(ctx)
	if err != nil {
		return fmt.Errorf("haproxy: %w", err)
	}
	snap, err := s.store.Snapshot(ctx, s.skipBad)
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if err := s.guard(ctx, live, snap.Entries); err != nil {
		return err
	}
	applyCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := s.rt.Replace(applyCtx, s.cfg.MapPath, entriesOf(snap.Entries)); err != nil {
		return fmt.Errorf("haproxy: %w", err)
	}
	s.mirror = snap.Entries
	s.applied = snap.LogID
	s.badInHash = snap.Skipped
	s.needFull = false
	s.haproxy, s.lastCheck, s.lastDrift = info, time.Now(), time.Now()
	s.markDirty()
	if err := s.flush(); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	s.updateStatus(func(st *Status) { st.FullSyncs++; st.HAProxyPid = info.Pid })
	s.report(ctx, true)
	s.log.Info("full sync", "entries", len(snap.Entries), "skipped", snap.Skipped,
		"log_id", snap.LogID, "haproxy_pid", info.Pid, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// dumpLive reads the live map; of duplicated keys the first, which HAProxy
// serves, counts.
func (s *Syncer) dumpLive(ctx context.Context) (map[string]string, error) {
	live := map[string]string{}
	err := s.rt.Dump(ctx, s.cfg.MapPath, func(k, v string) error {
		if _, dup := live[k]; !dup {
			live[k] = v
		}
		return nil
	})
	return live, err
}

// errRefused marks a reconcile the delete guard refused; its text "guard"
// is the state name status and the logs show.
var errRefused = errors.New("guard")

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
		return fmt.Errorf("redis: %w", err)
	}
	if forced {
		s.log.Warn("reconcile forced by a human: deleting from the live map", "deletes", deletes, "live", len(live))
		return nil
	}
	s.updateStatus(func(st *Status) { st.Refused++ })
	return fmt.Errorf("%w: refusing to delete %d of %d live entries (more than %.0f%%): did Redis lose its data? "+
		"HAProxy keeps serving the current map. Restore Redis with 'mapctl restore --from %s', or accept with 'mapctl reconcile --force'",
		errRefused, deletes, len(live), 100*s.cfg.MaxDeleteShare, s.cfg.MapPath)
}

// resume starts from the map file's change-log position when the log still
// holds it: the live map is read as it is (HAProxy kept serving while the
// syncer was away) and the log is replayed from there, instead of a full
// reload. Anything in doubt leaves needFull set.
func (s *Syncer) resume(ctx context.Context) {
	mf, err := maps.ReadMapFile(s.cfg.MapPath)
	if err != nil || mf.LogID == "" || mf.LogID == maps.ZeroID {
		return
	}
	if ok, err := s.store.LogHas(ctx, mf.LogID); err != nil || !ok {
		s.log.Info("map file's log position is gone from the log: full reload", "position", mf.LogID)
		return
	}
	info, err := s.rt.Info(ctx)
	if err != nil {
		return
	}
	live, err := s.dumpLive(ctx)
	if err != nil {
		return
	}
	s.mirror, s.applied, s.fileID = live, mf.LogID, mf.LogID
	s.haproxy, s.lastCheck, s.lastDrift = info, time.Now(), time.Now()
	s.needFull = false
	if backends, err := s.rt.Backends(ctx); err == nil {
		s.publishShards(ctx, backends)
	}
	s.updateStatus(func(st *Status) { st.HAProxyPid = info.Pid })
	s.log.Info("resuming from the map file's log position (catch-up, no full reload)", "position", mf.LogID, "live", len(live))
}

// publishShards records HAProxy's backends as the shards mapctl may assign.
func (s *Syncer) publishShards(ctx context.Context, backends []string) error {
	var valid []string
	for _, b := range backends {
		if maps.ValidateShard(b) == nil {
			valid = append(valid, b)
		}
	}
	if err := s.store.AddShards(ctx, valid); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
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
	if err := s.collectFlush(false); err != nil {
		return fmt.Errorf("file: %w", err)
	}
	wait := min(s.cfg.Heartbeat, s.cfg.CheckEvery)
	switch {
	case s.writing:
		wait = min(wait, 20*time.Millisecond) // look for the write's end soon
	case !s.dirtySince.IsZero():
		wait = max(time.Millisecond, min(wait, s.cfg.FlushDelay-time.Since(s.dirtySince)))
	}
	changes, bad, err := s.store.ReadLog(ctx, s.applied, int64(s.cfg.BatchMax), wait)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("redis: %w", err)
	}
	for _, b := range bad {
		s.skipBad(b)
	}
	if len(changes) > 0 {
		// Reading after an ID that is no longer in the log returns whatever
		// follows, silently skipping what was trimmed: check it is still there.
		ok, err := s.store.LogHas(ctx, s.applied)
		if err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		if !ok {
			s.log.Warn("change log gap: position no longer in the log, reloading whole map", "position", s.applied)
			s.needFull = true
			return nil
		}
		// Once read, a batch is applied whole even if we are told to stop.
		applyCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		err = s.apply(applyCtx, changes)
		cancel()
		if err != nil {
			s.needFull = true
			return fmt.Errorf("haproxy: %w", err)
		}
		s.report(ctx, true)
	}
	// Changes wait out the flush delay; a header-only change (log position
	// moved, no entry changed) is written at once.
	if s.fileDue() && (s.dirtySince.IsZero() || time.Since(s.dirtySince) >= s.cfg.FlushDelay) {
		s.startFlush()
	}
	return nil
}

// reconcile looks for drift every ReconcileEvery: a log gap or a hash
// changed behind the log (full reload, guarded), a live map edited over the
// socket (put back from the mirror), a map file edited by hand (rewritten).
// It is cheap when nothing changed: counts and a stat; the live map is only
// dumped when its count differs or it is small (<= 100k entries).
func (s *Syncer) reconcile(ctx context.Context) error {
	// A gap is looked for every heartbeat: with no new changes to read, it is
	// how a Redis that was emptied or replaced gets noticed.
	if time.Since(s.lastGapCheck) >= s.cfg.Heartbeat {
		s.lastGapCheck = time.Now()
		if ok, err := s.store.LogHas(ctx, s.applied); err != nil {
			return fmt.Errorf("redis: %w", err)
		} else if !ok {
			s.log.Warn("change log gap: position no longer in the log (trimmed, deleted or Redis emptied), reconciling", "position", s.applied)
			s.needFull = true
			return nil
		}
	}
	if time.Since(s.lastDrift) < s.cfg.ReconcileEvery {
		return nil
	}
	s.lastDrift = time.Now()
	// The hash count is only comparable when no change is in flight: the
	// log's last ID equals ours before and after the count.
	before, err := s.store.LastLogID(ctx)
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	n, err := s.store.Count(ctx)
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	after, err := s.store.LastLogID(ctx)
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if before == s.applied && after == s.applied && int(n) != len(s.mirror)+s.badInHash {
		s.log.Warn("drift: redis hash changed behind the change log, reconciling", "redis", n, "mirror", len(s.mirror))
		s.needFull = true
		return nil
	}
	cnt, err := s.rt.MapEntryCount(ctx, s.cfg.MapPath)
	if err != nil {
		return fmt.Errorf("haproxy: %w", err)
	}
	if cnt != len(s.mirror) || len(s.mirror) <= 100_000 {
		live, err := s.dumpLive(ctx)
		if err != nil {
			return fmt.Errorf("haproxy: %w", err)
		}
		if d := maps.Diff(s.mirror, live); d.Total() > 0 || cnt != len(live) {
			s.log.Warn("drift: live map edited outside shardmap, putting it back", "missing", d.Missing, "extra", d.Extra, "changed", d.Changed, "entry_cnt", cnt)
			if err := s.rt.Replace(ctx, s.cfg.MapPath, entriesOf(s.mirror)); err != nil {
				return fmt.Errorf("haproxy: %w", err)
			}
			s.updateStatus(func(st *Status) { st.Drift += int64(d.Total()) })
		}
	}
	if st := stampOf(s.cfg.MapPath); !s.writing && st != s.fileStat && !s.fileStat.zero() {
		s.log.Warn("drift: map file changed outside shardmap, rewriting it", "file", s.cfg.MapPath)
		s.fileID = "" // forces the rewrite
		s.markDirty()
		if err := s.flush(); err != nil {
			return fmt.Errorf("file: %w", err)
		}
		s.updateStatus(func(st *Status) { st.Drift++ })
	}
	return nil
}

// fileStamp identifies a version of the map file cheaply.
type fileStamp struct {
	size  int64
	mtime time.Time
}

func (f fileStamp) zero() bool { return f == fileStamp{} }

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{size: -1}
	}
	return fileStamp{size: fi.Size(), mtime: fi.ModTime()}
}

// checkHAProxy notices a restarted or reloaded HAProxy: a new process
// started from the map file on disk, which may lag Redis, so the live map is
// reloaded whole. It runs every CheckEvery, and at once when the socket
// changes.
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
		s.needFull = true // whatever comes back must be reconciled
		return fmt.Errorf("haproxy: %w", err)
	}
	s.lastCheck = time.Now()
	if info.Pid != s.haproxy.Pid || info.UptimeSec < s.haproxy.UptimeSec {
		s.log.Info("haproxy restarted, reconciling the live map", "old_pid", s.haproxy.Pid, "pid", info.Pid)
		s.needFull = true
		return nil
	}
	s.haproxy = info
	return nil
}

// apply brings the live map up to date with changes: it keeps the last change
// per user, drops those the mirror says are already live, and sends the rest
// as add (new key), set (changed key) or del; a batch with many set/del, which
// scan the whole map in HAProxy 2.6, goes as one versioned swap instead.
func (s *Syncer) apply(ctx context.Context, changes []maps.Change) error {
	last := map[string]maps.Change{}
	var order []string
	for _, c := range changes {
		if c.Op == "" { // a bad entry, already counted
			continue
		}
		if _, seen := last[c.User]; !seen {
			order = append(order, c.User)
		}
		last[c.User] = c
	}
	var ops []runtime.Op
	setDel := 0
	for _, u := range order {
		c := last[u]
		cur, has := s.mirror[u]
		switch {
		case c.Op == maps.OpDel && has:
			ops = append(ops, runtime.Op{Kind: runtime.Del, Key: u})
			setDel++
		case c.Op == maps.OpSet && !has:
			ops = append(ops, runtime.Op{Kind: runtime.Add, Key: u, Value: c.Shard})
		case c.Op == maps.OpSet && cur != c.Shard:
			ops = append(ops, runtime.Op{Kind: runtime.Set, Key: u, Value: c.Shard})
			setDel++
		}
	}
	newID := changes[len(changes)-1].ID
	if len(ops) > 0 {
		var err error
		if setDel > s.cfg.ReplaceAbove {
			err = s.applyBySwap(ctx, ops)
		} else {
			err = s.applyOps(ctx, ops)
		}
		if err != nil {
			return err
		}
		s.markDirty()
	}
	s.applied = newID
	s.updateStatus(func(st *Status) { st.Changes += int64(len(changes)) })
	s.log.Debug("applied", "changes", len(changes), "ops", len(ops), "log_id", newID)
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
	if err := s.rt.Replace(ctx, s.cfg.MapPath, entriesOf(next)); err != nil {
		return err
	}
	s.mirror = next
	s.updateStatus(func(st *Status) { st.FullSyncs++ })
	return nil
}

func (s *Syncer) markDirty() {
	if s.dirtySince.IsZero() {
		s.dirtySince = time.Now()
	}
}

// fileWrite is the outcome of one map-file write.
type fileWrite struct {
	id    string
	stamp fileStamp
	err   error
}

// fileDue reports whether the file lags the live map.
func (s *Syncer) fileDue() bool {
	return s.mirror != nil && (!s.dirtySince.IsZero() || s.fileID != s.applied)
}

// snapshotFile copies the mirror into a map file value (in the Run
// goroutine, which owns the mirror).
func (s *Syncer) snapshotFile() maps.MapFile {
	mf := maps.MapFile{LogID: s.applied, Entries: make([]maps.Assignment, 0, len(s.mirror))}
	for u, sh := range s.mirror {
		mf.Entries = append(mf.Entries, maps.Assignment{User: u, Shard: sh})
	}
	s.dirtySince = time.Time{}
	return mf
}

func (s *Syncer) writeFile(mf maps.MapFile) fileWrite {
	_, err := maps.WriteMapFile(s.cfg.MapPath, mf, 0o640)
	return fileWrite{id: mf.LogID, stamp: stampOf(s.cfg.MapPath), err: err}
}

// startFlush begins writing the file in the background, so that sorting and
// writing a large map (0.7 s at 1M entries) never holds up live updates.
// One write at a time; changes that arrive meanwhile make the next one due.
func (s *Syncer) startFlush() {
	if s.writing || !s.fileDue() {
		return
	}
	mf := s.snapshotFile()
	s.writing = true
	go func() { s.written <- s.writeFile(mf) }()
}

// collectFlush takes the outcome of a background write, waiting for it when
// wait is set.
func (s *Syncer) collectFlush(wait bool) error {
	if !s.writing {
		return nil
	}
	var w fileWrite
	if wait {
		w = <-s.written
	} else {
		select {
		case w = <-s.written:
		default:
			return nil
		}
	}
	s.writing = false
	return s.doneWrite(w)
}

func (s *Syncer) doneWrite(w fileWrite) error {
	if w.err != nil {
		s.markDirty() // try again
		return w.err
	}
	s.fileID, s.fileStat = w.id, w.stamp
	s.updateStatus(func(st *Status) { st.FileWritten = time.Now() })
	return nil
}

// flush writes the file now, after any background write: on a full sync (a
// syncer reports ready only with its file written) and when stopping.
func (s *Syncer) flush() error {
	if err := s.collectFlush(true); err != nil {
		return err
	}
	if !s.fileDue() {
		return nil
	}
	return s.doneWrite(s.writeFile(s.snapshotFile()))
}

// report records this syncer's position in Redis: always when force is set
// (after a batch, so mapctl --wait sees it at once), else once a heartbeat.
// It reads the shared status under reportMu, so reports never go backwards.
func (s *Syncer) report(ctx context.Context, force bool) {
	s.reportMu.Lock()
	defer s.reportMu.Unlock()
	if !force && time.Since(s.lastReport) < s.cfg.Heartbeat {
		return
	}
	st := s.Status()
	err := s.store.ReportSyncer(ctx, maps.SyncerState{
		Name: s.cfg.Name, Applied: st.Applied, Seen: time.Now(), Map: s.cfg.MapPath,
		Entries: st.Entries, Ready: st.Ready, Problem: st.Problem,
	})
	if err == nil {
		s.lastReport = time.Now()
	}
}

// heartbeat reports the syncer every Heartbeat until ctx ends, whatever the
// sync loop is doing (a long load, a backoff, a refused reconcile).
func (s *Syncer) heartbeat(ctx context.Context) {
	t := time.NewTicker(s.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, s.cfg.Heartbeat)
			s.report(rctx, false)
			cancel()
		}
	}
}

// setProblem logs a failure once when the state changes, not on every retry.
func (s *Syncer) setProblem(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	switch {
	case err != nil && s.problem == "":
		s.log.Warn("syncer not ready, retrying", "err", err)
	case err != nil && stateOf(msg) != stateOf(s.problem):
		s.log.Warn("syncer still not ready", "err", err)
	case err == nil && s.problem != "":
		s.log.Info("syncer recovered", "applied", s.applied, "entries", len(s.mirror))
	}
	s.problem = msg
	s.updateStatus(func(st *Status) { st.Problem = msg; st.Ready = err == nil && s.mirror != nil })
}

// stateOf is the part of a problem that names what failed ("redis",
// "haproxy", "file"): retries of the same failure log nothing new.
func stateOf(msg string) string {
	for i := 0; i < len(msg); i++ {
		if msg[i] == ':' {
			return msg[:i]
		}
	}
	return msg
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

// backoff yields capped exponential delays with full jitter.
type backoff struct{ min, max, cur time.Duration }

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d, or less if the socket changes or ctx ends.
func (s *Syncer) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-s.kick:
	}
}

// Package syncer keeps one HAProxy map, in one or several HAProxy processes
// (targets), equal to the assignments in Redis: it loads a snapshot of Redis
// into a shared state, follows the change log into it, brings each target's
// live map to the state (by a diff, or one atomic swap when the diff is
// large) and then applies each change over the Runtime API, and persists the
// map file so a restarted HAProxy starts right.
//
// Where a change goes from Redis to HAProxy, top to bottom: Run -> load (a
// snapshot, at start and after any doubt about the log) -> readStep (read
// the log) -> state.publish (state.go) -> each target's goroutine
// (target.go: fullSync at start and after any doubt, else step -> apply) ->
// the file (mapfile.go) -> report (status.go, Redis, for mapctl --wait).
// drift.go looks for changes made to Redis behind the log's back, target.go
// for edits of a live map; lease.go keeps one syncer per name, per target
// and per map file.
package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
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
	// AddFrom adds keys the map does not hold to its live version; see
	// runtime.Client.AddFrom for the contract.
	AddFrom(ctx context.Context, mapPath string, entries runtime.Entries) error
	// ReplaceFrom is Replace reading the entries from a frozen list.
	ReplaceFrom(ctx context.Context, mapPath string, entries runtime.Entries) error
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
	// Maps lists HAProxy's maps.
	Maps(ctx context.Context) ([]runtime.MapStatus, error)
	// Close drops the long-lived connection; the next Apply dials anew.
	Close() error
}

// Dialer returns the Runtime API client for a target's address (see
// runtime.ParseAddress). A client that has SetWriteGuard(func() error) gets
// the target's lease check as its guard.
type Dialer func(addr string) (Runtime, error)

// Store is the part of the Redis store the syncer needs. *maps.Store
// implements it.
type Store interface {
	// Scan calls fn for each valid assignment, bad for each invalid one, and
	// returns how many were invalid (see maps.Store.Scan).
	Scan(ctx context.Context, fn func(maps.Assignment) error, bad func(maps.BadEntry)) (int, error)
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
	MapName      string        // the map exactly as haproxy.cfg names it, what the Runtime API calls it (required)
	MapFile      string        // the map file written, which HAProxy loads at start; MapName when empty
	Targets      []string      // the Runtime API addresses of the HAProxy processes to drive (at least one)
	FileMode     os.FileMode   // mode of a new map file; an existing file keeps its mode and owner (0640)
	FlushDelay   time.Duration // how long changes wait before the file is written (200 ms; or 8x the last write's duration, when longer)
	BatchMax     int           // most changes read and applied at once (10,000)
	ReplaceAbove int           // a batch with more set/del than this is applied as one versioned swap (64)
	DeltaMax     int           // in the delta+base layout, the delta entries past which it is folded into the base once caught up (50,000: a fold swaps the whole base; a set in the delta walks the delta on 2.6); a bulk stream may take the delta to eight times this first
	Heartbeat    time.Duration // how often the syncer reports itself in Redis and renews its claims (1 s)
	CheckEvery   time.Duration // how often HAProxy's identity (show info Pid) is checked (500 ms)
	// MaxDeleteShare: a full reconcile that would delete more than this share
	// of the live map (and more than 5 entries) is refused until a human
	// allows it (mapctl reconcile --force) or restores Redis. 0 refuses any
	// such reconcile; use DefaultMaxDeleteShare for the usual 10%.
	MaxDeleteShare float64
	ReconcileEvery time.Duration // how often drift in Redis, the live map and the file is looked for (60 s)
	ClaimTTL       time.Duration // how long the name and the lease outlive a syncer that stops renewing them (5 s)
	Logger         *slog.Logger
	Metrics        *Metrics // Prometheus instruments (nil: none)
}

func (c *Config) defaults() error {
	if c.Name == "" || c.MapName == "" || len(c.Targets) == 0 {
		return errors.New("syncer: Name, MapName and at least one target are required")
	}
	seen := map[string]string{}
	for _, a := range c.Targets {
		key := a // one HAProxy in two spellings (PATH and unix@PATH) is given twice too
		if network, addr, err := runtime.ParseAddress(a); err == nil {
			if network == "unix" {
				addr = filepath.Clean(addr)
			}
			key = network + " " + addr
		}
		if first, dup := seen[key]; dup {
			return fmt.Errorf("syncer: target %q given twice (as %q too)", a, first)
		}
		seen[key] = a
	}
	if c.MapFile == "" {
		c.MapFile = c.MapName
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
	if c.DeltaMax <= 0 {
		c.DeltaMax = 50_000
	}
	// The delta's limits (8 x DeltaMax, a fold's walk budget ReplaceAbove x
	// DeltaMax, see layout.go) must not overflow: negative, they would make
	// every batch fold or wait for a fold.
	if c.DeltaMax > math.MaxInt/8 || c.ReplaceAbove > math.MaxInt/2/c.DeltaMax {
		return fmt.Errorf("syncer: DeltaMax %d with ReplaceAbove %d: 8 x DeltaMax and 2 x ReplaceAbove x DeltaMax must fit in an int", c.DeltaMax, c.ReplaceAbove)
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

// Syncer keeps one HAProxy map equal to the store in every target. Create
// it with New and call Run once.
type Syncer struct {
	cfg      Config
	store    Store
	log      *slog.Logger
	instance string // this process, in its claims and reports
	state    *state
	targets  []*target

	// Owned by the Run goroutine (the reader).
	needLoad     bool
	loadWhy      atomic.Value // string: why the state was last loaded (a metrics reason)
	badInHash    int          // invalid entries in the hash at the last snapshot
	drift        driftScan    // the periodic drift check of Redis (drift.go)
	file         mapFile      // the map file writer (mapfile.go)
	fileLease    lease
	fileActive   atomic.Bool // holds the map file's lease and writes it (read by the heartbeat)
	fileOK       atomic.Bool // the map file was written once since the start
	fileGuardGen uint64      // the state's load the file's guard let through (loadAccepted)
	lastFullRead time.Time   // the last read that took BatchMax changes (a bulk stream)

	shardsWarn atomic.Bool   // the shards key is unusable; warned once
	synced     atomic.Uint64 // the last reload of the state (state.gen) a target reconciled with

	claims claims // the name (lease.go); shared with the heartbeat

	mu          sync.Mutex // guards the status, the problems and the targets' status
	status      Status
	loop        error // the reader's last step's failure, nil when it succeeded
	fileErr     error // the last file write's failure, nil when it succeeded
	reportErr   error // the last report's failure (heartbeat goroutine)
	nameErr     error // the last renewal of the name's failure (heartbeat goroutine)
	forcedUntil time.Time

	reportMu   sync.Mutex // serialises reports to Redis; guards lastReport
	lastReport time.Time
}

// New returns a syncer for cfg's map and targets; dial makes each target's
// Runtime API client.
func New(cfg Config, store Store, dial Dialer) (*Syncer, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	s := &Syncer{
		cfg:      cfg,
		store:    cfg.Metrics.store(store), // counts Redis errors
		log:      cfg.Logger.With("map", cfg.MapName),
		instance: newInstanceID(),
		needLoad: true,
		state:    newState(),
	}
	for _, addr := range cfg.Targets {
		rt, err := dial(addr)
		if err != nil {
			return nil, fmt.Errorf("syncer: target %q: %w", addr, err)
		}
		// A second client writes the delta map while a fold swaps the
		// base on the first (layout.go); a dialer that hands out the same
		// client twice gets folds that block the delta meanwhile.
		rtDelta, err := dial(addr)
		if err != nil {
			return nil, fmt.Errorf("syncer: target %q: %w", addr, err)
		}
		s.targets = append(s.targets, newTarget(s, addr, rt, rtDelta))
	}
	s.fileLease.ident = func() (string, error) { return fileIdent(cfg.MapFile) }
	s.file.init(cfg.MapFile, cfg.FileMode)
	s.file.metrics = cfg.Metrics
	return s, nil
}

// Kick makes the syncer check every HAProxy and look for drift now, instead
// of at its next period (the command calls it on SIGHUP). Safe for
// concurrent use.
func (s *Syncer) Kick() {
	s.drift.forceNext.Store(true)
	for _, t := range s.targets {
		t.doKick()
	}
}

// ShardCounts counts users per shard in the assignments the syncer follows.
// Safe for concurrent use.
func (s *Syncer) ShardCounts() map[string]int { return s.state.shardCounts() }

// Run syncs until ctx is cancelled, then lets each target finish the batch
// in hand, writes the map file (when it holds the file's lease) and returns
// nil. It retries every failure (Redis or a HAProxy away) with capped,
// jittered backoff, keeping the live maps and the file as they are
// meanwhile; a target that fails never holds up the others. It returns an
// error if another running syncer holds its name (ErrNameTaken), or if the
// final file write fails.
func (s *Syncer) Run(ctx context.Context) error {
	if err := s.claimName(ctx); err != nil {
		return err
	}
	if ctx.Err() != nil {
		s.releaseClaims() // if it took the name just then
		return nil        // stopped while waiting for its name: nothing to report under it
	}
	hbCtx, stopHB := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); s.heartbeat(hbCtx) }()
	defer func() { stopHB(); <-hbDone; s.releaseClaims() }()

	tctx, stopTargets := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, t := range s.targets {
		wg.Add(1)
		go func() { defer wg.Done(); t.run(tctx) }()
	}
	err := s.read(ctx)
	stopTargets()
	wg.Wait()
	if err != nil {
		return err
	}
	// Only a state a target accepted (the delete guard) is written: a
	// reload from an emptied Redis that the guard refused must not reach
	// the file on the way out.
	if s.fileActive.Load() && s.loadAccepted(context.Background()) {
		if err := s.file.flushNow(s); err != nil {
			return fmt.Errorf("syncer: final flush: %w", err)
		}
	} else if s.file.writing { // started while allowed: let it end
		s.file.writing = false
		s.file.done(s, context.Background(), <-s.file.written)
	}
	s.report(context.Background(), true)
	_, logID, n := s.state.position()
	s.log.Info("syncer stopped", "log_id", logID, "entries", n)
	return nil
}

// read is the reader's loop: it loads Redis into the state and follows the
// change log, and writes the map file, until ctx ends or the name is lost.
func (s *Syncer) read(ctx context.Context) error {
	backoff := newBackoff(50*time.Millisecond, time.Second)
	for ctx.Err() == nil {
		if lost := s.claims.nameLost(); lost != nil {
			return lost
		}
		var err error
		if s.needLoad {
			err = s.load(ctx)
		} else {
			err = s.readStep(ctx)
		}
		if ctx.Err() != nil {
			break
		}
		s.setProblems(ctx, func() { s.loop = err })
		if err != nil {
			sleepCtx(ctx, backoff.next())
			continue
		}
		backoff.reset()
	}
	return nil
}

// load replaces the state with a snapshot of Redis and resumes following
// the log from the snapshot's ID. Every target then reconciles its whole
// live map with it. It runs at start and after any doubt about the log (a
// gap, the hash's count differing).
func (s *Syncer) load(ctx context.Context) error {
	start := time.Now()
	// The log's last ID first: the hash read after it may hold newer
	// changes, which replaying the log from the ID applies again, harmlessly.
	logID, err := s.store.LastLogID(ctx)
	if err != nil {
		return fail(kindRedis, err)
	}
	hint, err := s.store.Count(ctx)
	if err != nil {
		return fail(kindRedis, err)
	}
	// Streamed into the state's compact form: no copy of the hash as strings.
	l := newLoading(int(min(hint, 1<<26)))
	skipped, err := s.store.Scan(ctx, func(a maps.Assignment) error {
		return l.add(a.User, a.Shard)
	}, s.skipBad)
	if err != nil {
		return fail(kindRedis, err)
	}
	s.state.install(l, logID)
	s.badInHash = skipped
	s.needLoad = false
	s.drift.reset()
	s.file.markDirty()
	s.log.Info("loaded redis", "entries", l.users.len(), "skipped", skipped, "log_id", logID, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// reloadFor makes the reader reload the state from Redis; why is the reason
// the targets' full syncs are counted under.
func (s *Syncer) reloadFor(why string) {
	s.needLoad = true
	s.loadWhy.Store(why)
}

// reloadReason is why the state was last (re)loaded.
func (s *Syncer) reloadReason() string {
	if why, ok := s.loadWhy.Load().(string); ok {
		return why
	}
	return reasonStart
}

// targetSynced records that a target reconciled its live map with the
// state of load gen: the delete guard passed, so the file may be written
// from it.
func (s *Syncer) targetSynced(gen uint64) {
	for {
		old := s.synced.Load()
		if old >= gen || s.synced.CompareAndSwap(old, gen) {
			return
		}
	}
}

// fileAllowed: the file is written from the state once the state's current
// load was accepted (loadAccepted), and only by the file lease's holder.
func (s *Syncer) fileAllowed(ctx context.Context) bool {
	return s.loadAccepted(ctx) && s.holdFileLease(ctx)
}

// loadAccepted reports whether the state's current load may go into the
// map file: a target reconciled its live map with it (its delete guard
// passed), and the file's own guard passed: the load would not remove more
// than MaxDeleteShare of the entries in the file on disk (and more than 5),
// unless a human allowed it (mapctl reconcile --force). The file needs its
// own: a target whose live map was empty (a new HAProxy) accepts an
// emptied Redis, and the file serves every HAProxy that restarts. A refusal
// is the file's problem (kind guard) until a load passes.
func (s *Syncer) loadAccepted(ctx context.Context) bool {
	gen := s.state.generation()
	if s.synced.Load() != gen {
		return false
	}
	if s.fileGuardGen == gen {
		return true
	}
	onDisk, err := maps.CountMapFile(s.cfg.MapFile)
	if err != nil {
		onDisk = 0 // unreadable: the write that follows replaces it, or fails as the file's problem
	}
	_, _, n := s.state.position()
	if deletes := onDisk - n; deletes > 5 && float64(deletes) > s.cfg.MaxDeleteShare*float64(onDisk) {
		forced, err := s.takeForced(ctx)
		switch {
		case err != nil:
			s.setFileProblem(ctx, fail(kindRedis, err))
			return false
		case !forced:
			s.setFileProblem(ctx, fail(kindGuard, fmt.Errorf("%w %d of the %d entries of the map file %s (more than %.0f%%; Redis has %d): "+
				"the file is kept. Restore Redis with 'mapctl restore --from %s', or accept with 'mapctl reconcile --force'",
				errRefused, deletes, onDisk, s.cfg.MapFile, 100*s.cfg.MaxDeleteShare, n, s.cfg.MapFile)))
			return false
		}
		s.log.Warn("reconcile forced by a human: the map file loses entries", "deletes", deletes, "file", onDisk)
	}
	s.fileGuardGen = gen
	return true
}

// takeForced takes a human's one-time permission to delete past the guard;
// it holds for every target of this syncer for a minute.
func (s *Syncer) takeForced(ctx context.Context) (bool, error) {
	s.mu.Lock()
	ok := time.Now().Before(s.forcedUntil)
	s.mu.Unlock()
	if ok {
		return true, nil
	}
	forced, err := s.store.TakeForcedReconcile(ctx)
	if err != nil || !forced {
		return false, err
	}
	s.mu.Lock()
	s.forcedUntil = time.Now().Add(time.Minute)
	s.mu.Unlock()
	return true, nil
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
		if !s.shardsWarn.Swap(true) {
			s.log.Warn("cannot publish HAProxy's backends as known shards; going on without (mapctl set needs --force until it is fixed)", "err", err)
		}
		return nil
	case err != nil:
		return fail(kindRedis, err)
	}
	s.shardsWarn.Store(false)
	return nil
}

// streamQuiet is how long after the reader's last full read a bulk stream
// counts as ended.
const streamQuiet = 300 * time.Millisecond

// readStep waits briefly for changes and publishes those that came to the
// targets, looks for drift in Redis when due, and writes the file when due.
func (s *Syncer) readStep(ctx context.Context) error {
	if err := s.reconcile(ctx); err != nil || s.needLoad {
		return err
	}
	s.file.collect(s, ctx)
	wait := s.file.bound(s, s.cfg.Heartbeat)
	if !s.fileActive.Load() && s.synced.Load() == s.state.generation() && s.fileLease.holder() == "" {
		wait = min(wait, 10*time.Millisecond) // a target just accepted the state: take the file's lease and write it
	}
	if s.drift.scanning() {
		// A drift pass reads Redis a page per step: take what the log has
		// and go on. (A short BLOCK would not do: Redis ends blocking reads
		// on its own timer, up to 1/hz = 100 ms late.)
		wait = -1
	}
	_, applied, _ := s.state.position()
	changes, bad, err := s.store.ReadLog(ctx, applied, int64(s.cfg.BatchMax), wait)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fail(kindRedis, err)
	}
	for _, b := range bad {
		s.skipBad(b)
	}
	// A bulk stream is under way while reads are full; one read that is
	// not (the reader caught up with the writer for a moment) does not end
	// it: only streamQuiet without a full read does.
	if now := time.Now(); len(changes) >= s.cfg.BatchMax {
		s.lastFullRead = now
		s.state.streaming.Store(true)
	} else if now.Sub(s.lastFullRead) > streamQuiet {
		s.state.streaming.Store(false)
	}
	if len(changes) > 0 {
		// Reading after an ID that is no longer in the log returns whatever
		// follows, silently skipping what was trimmed: check it is still there.
		ok, err := s.store.LogHas(ctx, applied)
		if err != nil {
			return fail(kindRedis, err)
		}
		if !ok {
			s.log.Warn("change log gap: position no longer in the log, reloading", "log_id", applied)
			s.reloadFor(reasonGap)
			return nil
		}
		if err := s.publish(changes); err != nil {
			return err
		}
	}
	if s.fileAllowed(ctx) {
		s.file.maybeStart(s)
	}
	return nil
}

// want is what one user's entry must become.
type want struct {
	user  string
	shard string // "" to delete
}

// publish moves the state over changes, keeping the last change per user.
func (s *Syncer) publish(changes []maps.Change) error {
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
	newID := changes[len(changes)-1].ID
	times := make([]int64, 0, len(changes))
	for _, c := range changes {
		if ms, _, ok := maps.ParseID(c.ID); ok && c.Op != "" {
			times = append(times, int64(min(ms, 1<<62)))
		}
	}
	n, err := s.state.publish(ws, newID, times)
	if err != nil {
		return err
	}
	if n > 0 {
		s.file.markDirty()
	}
	s.log.Debug("read", "changes", len(changes), "log_id", newID)
	return nil
}

func (s *Syncer) skipBad(b maps.BadEntry) {
	s.mu.Lock()
	s.status.BadSkipped++
	s.mu.Unlock()
	s.log.Warn("skipped invalid entry from redis", "user", fmt.Sprintf("%.80q", b.User), "err", b.Err)
}

// sleepCtx waits d, or less if ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

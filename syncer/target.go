package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// target is one HAProxy process the syncer drives: its address, its
// position in the shared state, whether its live map is in doubt, and its
// lease. Each runs in a goroutine of its own, so a dead or hung target
// never delays the others; it holds no copy of the map (a full sync or a
// drift check reads its live map into a temporary one).
type target struct {
	s    *Syncer
	addr string
	rt   Runtime
	log  *slog.Logger
	kick chan struct{} // the socket appeared or went away, or SIGHUP: look now

	lease lease

	// Owned by the target's goroutine.
	seq       uint64 // the state's batch the live map holds
	gen       uint64 // the state's load the live map was last reconciled with
	applied   string // the change-log position the live map holds
	needFull  bool   // the live map is in doubt: reconcile it whole
	haproxy   runtime.Info
	lastCheck time.Time
	active    atomic.Bool         // holds the target's lease and writes to it (read by the status)
	hasDelta  bool                // HAProxy has the delta map loaded
	useDelta  bool                // changes go to the delta map (HAProxy before 2.9)
	treeMaps  bool                // HAProxy sets and deletes by key through a tree (2.9 and later)
	deltaKeys map[string]struct{} // the keys in the live delta map
	rtDelta   Runtime             // writes the delta during a background fold; nil: folds run inline
	folding   *foldJob            // the background fold running, nil when none (layout.go)
	// backlog: since the target was last applyMax or more changes behind
	// the state, it has not caught up: it works through the tail of a bulk
	// stream the reader may have finished (deltaLimit). Steady churn a
	// target fell behind on for a few seconds is not one.
	backlog bool
	// behindSince: when the target, out of the ring's reach, began to wait
	// for a bulk stream's end before catching up (zero: not waiting).
	behindSince time.Time
	inSync      atomic.Bool // reconciled at least once (read by the status)
	lastLive    time.Time   // last drift check of the live map
	forceLive   atomic.Bool

	// Guarded by s.mu.
	status    TargetStatus
	loop      error  // the last step's failure, nil when it succeeded
	shown     string // the state last reported and shown
	shownProb string
}

// TargetStatus is one target's view of itself.
type TargetStatus struct {
	Address string `json:"address"`
	Ready   bool   `json:"ready"`
	Standby bool   `json:"standby"`
	State   string `json:"state"`
	Problem string `json:"problem,omitempty"`
	Applied string `json:"log_id"`
	Entries int    `json:"entries"`
	// Layout is how the target's live maps are written: "single" (one
	// map) or "delta+base" (changes go to the delta map, folded into the
	// base by a swap past DeltaMax entries); see layout.go.
	Layout       string `json:"layout"`
	DeltaEntries int    `json:"delta_entries"`
	Folds        int    `json:"folds"`
	// Pending counts the changes the syncer has read from the log and not
	// yet applied to this target (-1: too many to count, a full sync is
	// due).
	Pending    int `json:"pending"`
	seq        uint64
	FullSyncs  int       `json:"full_syncs"`
	Swaps      int       `json:"swaps"`
	Refused    int       `json:"refused"`
	Drift      int64     `json:"drift"`
	Changes    int64     `json:"changes"`
	HAProxyPid int64     `json:"haproxy_pid"`
	Contact    time.Time `json:"last_contact"`
	// DriftChecks counts drift checks of the live map; DriftLiveTook is
	// the last one's duration.
	DriftChecks   int           `json:"drift_checks"`
	DriftLiveTook time.Duration `json:"drift_live_took_ns"`
}

func newTarget(s *Syncer, addr string, rt, rtDelta Runtime) *target {
	t := &target{s: s, addr: addr, rt: rt, needFull: true, applied: maps.ZeroID, kick: make(chan struct{}, 1)}
	t.log = s.log.With("target", addr)
	t.lease.ident = func() (string, error) { return leaseTarget(addr, s.cfg.MapName) }
	t.status.Address = addr
	for _, c := range []Runtime{rt, rtDelta} {
		if g, ok := c.(interface{ SetWriteGuard(func() error) }); ok {
			// Every map write checks the lease right before it is sent.
			g.SetWriteGuard(t.writeAllowed)
		}
	}
	t.rt = s.cfg.Metrics.runtime(addr, rt) // counts errors by command and reconnects
	if rtDelta != nil && rtDelta != rt {
		t.rtDelta = s.cfg.Metrics.runtime(addr, rtDelta)
	}
	return t
}

func (t *target) doKick() {
	t.forceLive.Store(true)
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// run drives the target until ctx ends: reconcile, then follow the state.
func (t *target) run(ctx context.Context) {
	s := t.s
	if network, path, err := runtime.ParseAddress(t.addr); err == nil && network == "unix" {
		if stop, err := watchSocket(path, t.kick, t.log); err != nil {
			t.log.Warn("cannot watch the socket; relying on show info checks", "err", err)
		} else {
			defer stop()
		}
	}
	backoff := newBackoff(50*time.Millisecond, time.Second)
	for ctx.Err() == nil {
		if !t.holdLease(ctx) {
			t.sleep(ctx, s.cfg.Heartbeat)
			continue
		}
		if !s.state.isLoaded() {
			select {
			case <-ctx.Done():
			case <-s.state.waitChan():
			case <-time.After(s.cfg.Heartbeat):
			}
			continue
		}
		var err error
		if t.needFull {
			err = t.fullSync(ctx)
		} else {
			err = t.step(ctx)
		}
		if ctx.Err() != nil {
			break
		}
		t.setProblem(ctx, err)
		if err != nil {
			wait := backoff.next()
			if errors.Is(err, errRefused) {
				wait = 5 * time.Second // each try dumps the live map
			}
			t.sleep(ctx, wait)
			continue
		}
		backoff.reset()
	}
	if t.folding != nil {
		<-t.folding.done
	}
	t.rt.Close()
	if t.rtDelta != nil {
		t.rtDelta.Close()
	}
}

// doubt marks the live map in doubt, for reason (a metrics reason): it is
// reconciled whole next. The target's state does not change for it: the
// live map serves as it is until the reconcile succeeds or fails.
func (t *target) doubt(reason string) {
	t.needFull = true
	t.s.cfg.Metrics.needFull(t.addr, reason)
}

// fullSync brings the live map to the state and resumes following it from
// there. It never takes the live map as truth: it reads it (the base map
// and, when HAProxy has one, the delta map: see layout.go), diffs what it
// routes against the state, and sends the difference (as single commands,
// or one fold: a versioned swap of the whole base, when that is cheaper or
// a map holds duplicates). It runs at start, after HAProxy restarts, and
// after any doubt (a failed batch, a reload of the state, a target further
// behind than the ring).
func (t *target) fullSync(ctx context.Context) error {
	s := t.s
	start := time.Now()
	t.behindSince = time.Time{} // a wait for a stream's end ends here
	t.backlog = false
	if t.folding != nil {
		<-t.folding.done // the live maps are compared whole below
		t.folding = nil
	}
	// A connection kept across a reload still talks to the old process (and
	// keeps it alive): updates sent on it would never reach the new one.
	t.rt.Close()
	if t.rtDelta != nil {
		t.rtDelta.Close()
	}
	info, err := t.rt.Info(ctx)
	if err != nil {
		return fail(kindHAProxy, err)
	}
	t.contact()
	if backends, err := t.rt.Backends(ctx); err != nil {
		return fail(kindHAProxy, err)
	} else if err := s.publishShards(ctx, backends); err != nil {
		return err
	}
	if err := t.chooseLayout(ctx, info); err != nil {
		return fail(kindHAProxy, err)
	}
	// A loader killed mid-swap leaves a prepared version behind; some HAProxy
	// versions loop on a later set of a key it holds (3.2.0).
	for _, m := range t.mapNames() {
		if n, err := t.rt.ClearUncommitted(ctx, m); err != nil {
			return fail(kindHAProxy, err)
		} else if n > 0 {
			t.log.Warn("cleared uncommitted map versions left by an interrupted load", "map", m, "entries", n)
		}
	}
	maxEdits := s.cfg.ReplaceAbove + 1
	if t.useDelta {
		maxEdits += s.cfg.DeltaMax
	}
	c, err := t.compare(ctx, maxEdits, true)
	for try := 1; errors.Is(err, errMovedOn) && try < 3; try++ {
		c, err = t.compare(ctx, maxEdits, true) // the state was reloaded meanwhile
	}
	if errors.Is(err, errMovedOn) {
		return nil // needFull stands: the loop comes back
	} else if err != nil {
		return fail(kindHAProxy, err)
	}
	if err := t.guard(ctx, c.extra, c.liveLen, c.n); err != nil {
		return err
	}
	how := "diff"
	seq, logID, gen := c.seq, c.logID, c.gen
	t.deltaKeys = c.delta
	switch {
	case c.duplicates || len(c.delta) > 0 && !t.useDelta || c.overflow || t.tooMuch(t.costOf(c.edits), c.n):
		how = "fold"
		why := reasonLargeBatch
		if c.duplicates {
			why = reasonDuplicates
		}
		seq, logID, err = t.fold(ctx, why, gen)
	default:
		err = t.send(ctx, c.edits)
	}
	if errors.Is(err, errReloaded) {
		return nil // needFull stands: diff again against the reloaded state
	} else if err != nil {
		return fail(kindHAProxy, err)
	}
	n, missing, extra, changed := c.n, c.missing, c.extra, c.changed
	s.cfg.Metrics.fullSynced(t.addr)
	t.seq, t.applied, t.needFull, t.gen = seq, logID, false, gen
	t.inSync.Store(true)
	t.haproxy, t.lastCheck, t.lastLive = info, time.Now(), time.Now()
	s.targetSynced(gen)
	s.updateTarget(t, func(st *TargetStatus) {
		st.FullSyncs++
		st.HAProxyPid = info.Pid
		st.Applied, st.Entries, st.seq = logID, n, seq
		st.Layout, st.DeltaEntries = t.layoutName(), len(t.deltaKeys)
	})
	t.log.Info("full sync", "entries", n, "how", how, "layout", t.layoutName(), "missing", missing, "extra", extra,
		"changed", changed, "log_id", logID, "haproxy_pid", info.Pid,
		"haproxy_version", info.Version, "took", time.Since(start).Round(time.Millisecond))
	s.report(ctx, true)
	return nil
}

// dumpMap reads a live map; of duplicated keys the first, which HAProxy
// serves, counts. lines is the number of entries HAProxy listed.
func (t *target) dumpMap(ctx context.Context, name string) (live map[string]string, lines int, err error) {
	live = map[string]string{}
	err = t.dump(ctx, name, func(k, v string) {
		lines++
		if _, dup := live[k]; !dup {
			live[k] = v
		}
	})
	return live, lines, err
}

// dump streams a live map to fn and checks that HAProxy listed as many
// entries as it counts: a concurrent "clear map" can cut a dump that still
// ends as a whole one does. Uncommitted versions must have been cleared.
func (t *target) dump(ctx context.Context, name string, fn func(k, v string)) error {
	lines := 0
	err := t.rt.Dump(ctx, name, func(k, v string) error {
		lines++
		fn(k, v)
		return nil
	})
	if err != nil {
		return err
	}
	cnt, err := t.rt.MapEntryCount(ctx, name)
	if err != nil {
		return err
	}
	if cnt != lines {
		return fmt.Errorf("dump of %s listed %d entries, HAProxy counts %d (changed during the dump, or a version pending): %w",
			name, lines, cnt, runtime.ErrTruncated)
	}
	t.contact()
	return nil
}

// errRefused marks a reconcile the delete guard refused.
var errRefused = errors.New("refusing to delete")

// guard refuses a reconcile that would delete more than MaxDeleteShare of
// the live map (and more than 5 entries): Redis coming back empty (FLUSHALL,
// a restart without persistence) must not wipe the routing of every user.
// A human lifts it once with mapctl reconcile --force (for every target of
// this syncer, for a minute).
func (t *target) guard(ctx context.Context, deletes, live, next int) error {
	s := t.s
	if deletes <= 5 || float64(deletes) <= s.cfg.MaxDeleteShare*float64(live) {
		return nil
	}
	forced, err := s.takeForced(ctx)
	if err != nil {
		return fail(kindRedis, err)
	}
	if forced {
		t.log.Warn("reconcile forced by a human: deleting from the live map", "deletes", deletes, "live", live)
		return nil
	}
	s.updateTarget(t, func(st *TargetStatus) { st.Refused++ })
	return fail(kindGuard, fmt.Errorf("%w %d of %d live entries (more than %.0f%%; Redis has %d): did Redis lose its data? "+
		"HAProxy keeps serving the current map. Restore Redis with 'mapctl restore --from %s', or accept with 'mapctl reconcile --force'",
		errRefused, deletes, live, 100*s.cfg.MaxDeleteShare, next, s.cfg.MapFile))
}

// step follows the state: it checks HAProxy when due, looks for drift in
// the live map when due, and applies the batches published since the
// target's position, or waits briefly for one.
func (t *target) step(ctx context.Context) error {
	s := t.s
	if err := t.checkHAProxy(ctx); err != nil || t.needFull {
		return err
	}
	if err := t.checkLive(ctx); err != nil || t.needFull {
		return err
	}
	select {
	case <-t.foldDone():
		// A reload or a failure ends the step; a finished fold goes on.
		if err := t.finishFold(ctx); err != nil {
			return t.settle(ctx, err)
		}
		s.report(ctx, true)
	default:
	}
	from := t.seq
	if t.folding != nil {
		from = t.folding.deltaSeq
	}
	bs, ok, next := s.state.since(from)
	if !ok && t.gen == s.state.generation() && t.folding == nil && s.state.streaming.Load() && (t.behindSince.IsZero() || time.Since(t.behindSince) < maxBehindWait) {
		// Out of the ring's reach in the middle of a bulk stream: a fold
		// now would fall behind again before it ends. Wait for the
		// stream's end (the reader's first read that is not full), then
		// fold once; nothing is lost meanwhile (the state has every change).
		if t.behindSince.IsZero() {
			t.behindSince = time.Now()
			t.log.Info("out of the ring's reach during a bulk stream: folding once it ends", "log_id", t.applied)
		}
		t.sleep(ctx, 20*time.Millisecond)
		return nil
	}
	t.behindSince = time.Time{}
	if !ok && t.gen == s.state.generation() {
		return t.settle(ctx, t.catchUp(context.WithoutCancel(ctx)))
	}
	if !ok {
		reason := reasonBehind
		if t.gen != s.state.generation() {
			reason = s.reloadReason()
		}
		t.log.Info("state moved out of reach, reconciling the whole map", "why", reason, "log_id", t.applied)
		t.doubt(reason)
		return nil
	}
	if len(bs) == 0 {
		t.backlog = false // caught up
	}
	if len(bs) == 0 && t.folding == nil && t.useDelta && t.rtDelta != nil && len(t.deltaKeys) > s.cfg.DeltaMax {
		// Caught up with a delta past DeltaMax (a bulk stream has ended):
		// fold it now, in the background.
		t.startFold(ctx, reasonDeltaFull, nil)
		return nil
	}
	if len(bs) == 0 {
		timer := time.NewTimer(min(s.cfg.Heartbeat, s.cfg.CheckEvery))
		defer timer.Stop()
		select {
		case <-ctx.Done():
		case <-next:
		case <-t.foldDone():
		case <-timer.C:
		case <-t.kick:
			t.putKickBack()
		}
		return nil
	}
	pending := 0
	for _, b := range bs {
		pending += len(b.changes)
	}
	if pending >= applyMax {
		t.backlog = true // until the target has caught up (below)
	}
	// A target far behind catches up in steps of about applyMax changes:
	// apply's per-user index grows with what it is given.
	bs = firstChanges(bs, applyMax)
	// Once taken, batches are applied whole even if we are told to stop.
	return t.settle(ctx, t.apply(context.WithoutCancel(ctx), bs))
}

// settle ends a step that sent changes to the target with err, its
// outcome: a reload of the state meanwhile makes the live map in doubt
// (not a failure); another error makes it in doubt and is the step's
// failure; success is reported to Redis at once.
func (t *target) settle(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, errReloaded):
		t.doubt(t.s.reloadReason())
		return nil
	case err != nil:
		t.doubt(reasonDoubt)
		return fail(kindHAProxy, err)
	}
	t.s.report(ctx, true)
	return nil
}

func (t *target) putKickBack() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// checkHAProxy notices a restarted or reloaded HAProxy: a new process
// started from the map file on disk, which may lag Redis, so the live map is
// reconciled whole. It runs every CheckEvery, and at once when the socket
// changes. A HAProxy that does not answer fails here within the runtime
// client's timeout.
func (t *target) checkHAProxy(ctx context.Context) error {
	select {
	case <-t.kick:
	default:
		if time.Since(t.lastCheck) < t.s.cfg.CheckEvery {
			return nil
		}
	}
	info, err := t.rt.Info(ctx)
	if err != nil {
		t.doubt(reasonDoubt) // whatever comes back must be reconciled
		return fail(kindHAProxy, err)
	}
	t.lastCheck = time.Now()
	t.contact()
	if info.Pid != t.haproxy.Pid || info.UptimeSec < t.haproxy.UptimeSec {
		t.log.Info("haproxy restarted, reconciling the live map", "old_pid", t.haproxy.Pid, "pid", info.Pid)
		t.doubt(reasonHAProxyRestart)
		return nil
	}
	t.haproxy = info
	return nil
}

// apply brings the live map from the target's position to the end of bs:
// per user, from the value before the first batch to the value after the
// last (what the live map routes to and must route to). The edits go out as
// the layout says (layout.go): single commands, or a fold when they are
// many (set and del walk the whole map in HAProxy 2.6) or the delta grew
// past DeltaMax.
func (t *target) apply(ctx context.Context, bs []*batch) error {
	s := t.s
	// Per user, in order of first change: where it went from and to. (A
	// lagging target gets up to applyMax changes here, see step: values,
	// not pointers, and the edits are built only when they are sent, not
	// for a fold.)
	type span struct {
		user     string
		from, to int32
	}
	changes := 0
	for _, b := range bs {
		changes += len(b.changes)
	}
	// Sized for every change at once: growing them cost more than filling.
	spans := make([]span, 0, changes)
	at := make(map[string]int, changes)
	for _, b := range bs {
		for _, c := range b.changes {
			user := b.user(c)
			if i, ok := at[user]; ok {
				spans[i].to = c.next
				continue
			}
			at[user] = len(spans)
			spans = append(spans, span{user, c.prev, c.next})
		}
	}
	at = nil
	last := bs[len(bs)-1]
	var cost editCost
	for _, sp := range spans {
		_, inDelta := t.deltaKeys[sp.user]
		t.count(&cost, sp.from, sp.to, inDelta)
	}
	var edits []edit
	// During a background fold the edits go to the delta (layout.go).
	var size int
	s.state.read(func(v view) { size = v.len() })
	fold := t.folding == nil && t.tooMuch(cost, size)
	if !fold {
		edits = make([]edit, 0, cost.adds+cost.sets+cost.dels+cost.deltaAdds)
		s.state.read(func(v view) {
			for _, sp := range spans {
				// During a background fold a user whose value ends where
				// it began is still written: the base being loaded holds
				// its value at the swap's position, which may fall between
				// these batches (an s2 between s1 and s1 again, or a user
				// that came and went: a delete, which waits for the fold).
				if sp.from == sp.to && t.folding == nil {
					continue
				}
				// A user that had a value may be in the base (in a delta
				// layout, under its delta entry too): a del looks there.
				_, inDelta := t.deltaKeys[sp.user]
				e := edit{user: sp.user, inBase: sp.from != none, inDelta: inDelta}
				if sp.to != none {
					e.shard = v.shard(sp.to)
				}
				edits = append(edits, e)
			}
		})
	}
	spans = nil
	seq, logID := last.seq, last.logID
	if job := t.folding; job != nil {
		// A fold runs (layout.go): changes go to the delta now; a delete,
		// more than deltaLimit users written since the fold began, or sets
		// of users the delta holds whose walks of it would pass, with
		// those sent since the fold began, what a batch may walk outside
		// a fold (ReplaceAbove walks of a DeltaMax delta: HAProxy's one
		// thread is loading the base meanwhile; under churn, unbounded
		// walks starved the swap, and the swap the walks, for tens of
		// seconds), waits for the fold, and the loop then comes back from
		// the new position.
		// Every edit is sent here, a user whose value ends where it began
		// too (cost does not count those): each set of a user the delta
		// holds walks it.
		fresh, walks := 0, 0
		for _, e := range edits {
			if _, ok := job.written[e.user]; !ok {
				fresh++
			}
			if e.inDelta && e.shard != "" {
				walks += len(t.deltaKeys)
			}
		}
		if slices.ContainsFunc(edits, func(e edit) bool { return e.shard == "" }) || len(job.written)+fresh > t.deltaLimit() ||
			job.walked+walks > t.s.cfg.ReplaceAbove*t.s.cfg.DeltaMax {
			return t.waitFold(ctx)
		}
		job.walked += walks
		if err := t.send(ctx, edits); err != nil {
			return err
		}
		for _, e := range edits {
			// A copy, as the delta's keys (see send).
			job.written[strings.Clone(e.user)] = deltaWrite{last.seq, e.shard}
		}
		job.deltaSeq, job.deltaLogID = last.seq, last.logID
		now := time.Now()
		for _, b := range bs {
			s.cfg.Metrics.appliedAt(t.addr, b.times, now)
		}
		s.updateTarget(t, func(st *TargetStatus) {
			st.Changes += int64(changes)
			st.DeltaEntries = len(t.deltaKeys)
		})
		t.log.Debug("applied to the delta during a fold", "changes", changes, "edits", len(edits), "log_id", logID)
		return nil
	}
	if fold && t.useDelta && t.rtDelta != nil {
		t.startFold(ctx, reasonLargeBatch, bs)
		s.updateTarget(t, func(st *TargetStatus) { st.Changes += int64(changes) })
		return nil
	} else if fold {
		var err error
		if seq, logID, err = t.fold(ctx, reasonLargeBatch, t.gen); err != nil {
			return err
		}
	} else if len(edits) > 0 {
		if err := t.send(ctx, edits); err != nil {
			return err
		}
	}
	now := time.Now()
	for _, b := range bs {
		s.cfg.Metrics.appliedAt(t.addr, b.times, now)
	}
	t.observeSwapped(last.seq, seq, 0, 0, now) // a fold swaps the state as it is, past bs
	var n int
	s.state.read(func(v view) { n = v.len() })
	t.seq, t.applied = seq, logID
	s.updateTarget(t, func(st *TargetStatus) {
		st.Changes += int64(changes)
		st.Applied, st.Entries, st.seq = logID, n, seq
		st.DeltaEntries = len(t.deltaKeys)
	})
	t.log.Debug("applied", "changes", changes, "edits", len(edits), "log_id", logID)
	return nil
}

// applyOps sends ops to the map name one by one, pipelined. A set whose key
// is missing (someone deleted it by hand) is retried as an add; a del whose
// key is missing is already done.
func (t *target) applyOps(ctx context.Context, name string, ops []runtime.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if !t.leaseValid() {
		return errLeaseLost
	}
	rt := t.rt
	if t.folding != nil {
		rt = t.rtDelta // the main client swaps the base meanwhile
	}
	results, err := rt.Apply(ctx, name, ops)
	if err != nil {
		return err
	}
	t.contact()
	var retry []runtime.Op
	for i, r := range results {
		switch {
		case r == nil:
		case errors.Is(r, runtime.ErrNotFound) && ops[i].Kind == runtime.Set:
			t.log.Warn("drift: key missing from live map, adding it", "map", name, "user", ops[i].Key)
			retry = append(retry, runtime.Op{Kind: runtime.Add, Key: ops[i].Key, Value: ops[i].Value})
		case errors.Is(r, runtime.ErrNotFound) && ops[i].Kind == runtime.Del:
			// Gone already: a del of a key that may be in the base, or drift.
		default:
			return r
		}
	}
	if len(retry) > 0 {
		return t.applyOps(ctx, name, retry)
	}
	return nil
}

// applyMax is about the most changes one apply takes (see firstChanges).
// A fold it decides on still brings the whole state live.
const applyMax = 50_000

// firstChanges is the longest prefix of bs with at most max changes, and
// never less than one batch.
func firstChanges(bs []*batch, max int) []*batch {
	n := 0
	for i, b := range bs {
		if n += len(b.changes); n > max && i > 0 {
			return bs[:i]
		}
	}
	return bs
}

// maxBehindWait bounds how long a target out of the ring's reach waits for
// a bulk stream's end before it catches up with a fold anyway.
const maxBehindWait = 10 * time.Second

// errReloaded: the state was reloaded since the target's delete guard
// checked it; only a full sync may bring the live map to it.
var errReloaded = errors.New("the state was reloaded from Redis since the delete guard checked it")

// swap replaces the whole base map with the state as it is now, and
// returns the position it holds then. It refuses (errReloaded) when the
// state is no longer load gen: a reloaded state (Redis come back empty)
// must pass the delete guard first.
func (t *target) swap(ctx context.Context, gen uint64) (uint64, string, error) {
	if !t.leaseValid() {
		return 0, "", errLeaseLost
	}
	var (
		entries *entryList
		seq     uint64
		logID   string
		now     uint64
	)
	t.s.state.read(func(v view) {
		if now = v.gen(); now == gen {
			entries, seq, logID = v.entries(), v.seq(), v.logID()
		}
	})
	if now != gen {
		return 0, "", errReloaded
	}
	// In key order: HAProxy inserts each entry into a tree of strings, and
	// keys in order reuse the path the one before walked (its nodes are in
	// the cache). A 1M swap in random order costs HAProxy several times
	// the CPU (BenchmarkSwap1MOrder in bench/).
	entries.sort()
	if err := t.rt.ReplaceFrom(ctx, t.s.cfg.MapName, entries); err != nil {
		return 0, "", err
	}
	t.contact()
	t.s.updateTarget(t, func(st *TargetStatus) { st.Swaps++ })
	return seq, logID, nil
}

// checkLive looks for drift in the live map every ReconcileEvery (or at
// once on SIGHUP): it reads it and compares what it routes to with the state
// entry by entry at any size, skipping users changed since the target's
// position (the loop applies those next). A value that differs is set back;
// a key missing, extra or duplicated makes a full sync.
func (t *target) checkLive(ctx context.Context) error {
	s := t.s
	if t.folding != nil {
		return nil // the live maps are between two states until the fold ends
	}
	if !t.forceLive.Swap(false) && time.Since(t.lastLive) < s.cfg.ReconcileEvery {
		return nil
	}
	if s.state.pendingAfter(t.seq) < 0 {
		// Out of the ring's reach: what the live maps lack is not drift;
		// the step catches up first, the check comes after.
		t.forceLive.Store(true)
		return nil
	}
	start := time.Now()
	t.lastLive = start
	c, err := t.compare(ctx, s.cfg.ReplaceAbove+1, false)
	took := time.Since(start)
	if errors.Is(err, errMovedOn) {
		t.doubt(reasonBehind)
		return nil
	}
	if err != nil {
		return fail(kindHAProxy, err)
	}
	s.updateTarget(t, func(st *TargetStatus) { st.DriftChecks++; st.DriftLiveTook = took })
	sameKeys := c.extra == 0 && c.missing == 0 && !c.duplicates && sameSet(t.deltaKeys, c.delta)
	if sameKeys && len(c.edits) == 0 && !c.overflow {
		return nil
	}
	t.log.Warn("drift: live map edited outside shardmap, putting it back", "wrong_value", c.changed, "unknown_keys", c.extra,
		"missing_keys", c.missing, "duplicates", c.duplicates)
	s.updateTarget(t, func(st *TargetStatus) { st.Drift += int64(max(c.changed+c.extra+c.missing, 1)) })
	if sameKeys && !c.overflow && len(c.edits) <= s.cfg.ReplaceAbove {
		if err := t.send(ctx, c.edits); err != nil {
			t.doubt(reasonDoubt)
			return fail(kindHAProxy, err)
		}
		return nil
	}
	t.doubt(reasonDrift)
	return nil
}

// contact records that the target answered.
func (t *target) contact() {
	now := time.Now()
	t.s.updateTarget(t, func(st *TargetStatus) { st.Contact = now })
}

// sleep waits d, or less if the socket changes, SIGHUP comes or ctx ends.
func (t *target) sleep(ctx context.Context, d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	case <-t.kick:
		t.putKickBack() // checkHAProxy must still see it
	}
}

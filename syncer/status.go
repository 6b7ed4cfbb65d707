package syncer

import (
	"context"
	"errors"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// Status is a syncer's view of itself, for health checks and metrics. The
// fields above Targets sum the targets up: Applied and Entries are the
// lowest of the active targets, the counters their sums (plus the Redis
// drift pass's repairs), HAProxyPid the first target's.
type Status struct {
	Ready      bool   `json:"ready"`             // every target is in sync or standby, the last read and the last file write succeeded
	Standby    bool   `json:"standby"`           // another syncer holds the lease of every target; this one waits to take over
	State      string `json:"state"`             // "ready", "standby", "starting", or the failing part: redis, haproxy, haproxy_no_answer, file, guard
	Problem    string `json:"problem,omitempty"` // why not ready
	Applied    string `json:"log_id"`            // last change-log ID in every active target's live map
	Entries    int    `json:"entries"`           // entries in the live map
	FullSyncs  int    `json:"full_syncs"`        // reconciles of a whole live map with Redis
	Swaps      int    `json:"swaps"`             // whole-map versioned swaps
	Refused    int    `json:"refused"`           // reconciles refused by the delete guard
	Drift      int64  `json:"drift"`             // entries (or file rewrites) corrected by drift checks
	Changes    int64  `json:"changes"`           // change-log entries applied (the least of the targets)
	BadSkipped int64  `json:"bad_skipped"`       // invalid entries found in Redis and skipped
	HAProxyPid int64  `json:"haproxy_pid"`
	// DriftChecks counts completed drift rounds of Redis; DriftLiveTook is
	// the last live-map comparison (the slowest target's) and DriftRoundTook
	// the last round of the Redis pass.
	DriftChecks    int            `json:"drift_checks"`
	DriftLiveTook  time.Duration  `json:"drift_live_took_ns"`
	DriftRoundTook time.Duration  `json:"drift_round_took_ns"`
	FileWritten    time.Time      `json:"file_written"`
	Targets        []TargetStatus `json:"targets"`
}

// Status returns a copy of the current status. Safe for concurrent use.
func (s *Syncer) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Targets = make([]TargetStatus, len(s.targets))
	first := true
	st.Changes = 0
	for i, t := range s.targets {
		ts := t.status
		ts.State, ts.Problem = t.shown, t.shownProb
		ts.Pending = s.state.pendingAfter(ts.seq)
		if ts.State == "" {
			ts.State = stateStarting
		}
		ts.Ready = ts.State == stateReady || ts.State == stateStandby
		ts.Standby = ts.State == stateStandby
		st.Targets[i] = ts
		st.FullSyncs += ts.FullSyncs
		st.Swaps += ts.Swaps
		st.Refused += ts.Refused
		st.Drift += ts.Drift
		st.DriftLiveTook = max(st.DriftLiveTook, ts.DriftLiveTook)
		if i == 0 {
			st.HAProxyPid = ts.HAProxyPid
		}
		if ts.Standby {
			continue
		}
		if first || maps.CompareIDs(ts.Applied, st.Applied) < 0 {
			st.Applied = ts.Applied
		}
		if first || ts.Entries < st.Entries {
			st.Entries = ts.Entries
		}
		if first || ts.Changes < st.Changes {
			st.Changes = ts.Changes
		}
		first = false
	}
	if st.State == "" {
		st.State = stateStarting
	}
	return st
}

// updateTarget changes a target's counters.
func (s *Syncer) updateTarget(t *target, f func(*TargetStatus)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&t.status)
}

// The parts a failure can come from: what a not-ready syncer waits for.
// Retries of a failure of the same kind log nothing new.
const (
	kindRedis     = "redis"
	kindHAProxy   = "haproxy"
	kindNoAnswer  = "haproxy_no_answer" // HAProxy hung, or every stats socket slot busy
	kindFile      = "file"
	kindGuard     = "guard"
	stateReady    = "ready"
	stateStandby  = "standby"
	stateStarting = "starting"
)

// failure is an error with the part it came from.
type failure struct {
	kind string
	err  error
}

func (f *failure) Error() string {
	if f.kind == kindNoAnswer {
		return kindHAProxy + ": " + f.err.Error()
	}
	return f.kind + ": " + f.err.Error()
}
func (f *failure) Unwrap() error { return f.err }

// fail marks err as coming from kind; a HAProxy that did not answer is a
// kind of its own, so that it is logged as such.
func fail(kind string, err error) error {
	if err == nil {
		return nil
	}
	var f *failure
	if errors.As(err, &f) {
		return err
	}
	if kind == kindHAProxy && errors.Is(err, runtime.ErrNoAnswer) {
		kind = kindNoAnswer
	}
	return &failure{kind: kind, err: err}
}

// kindOf is the part err came from ("" for nil).
func kindOf(err error) string {
	var f *failure
	switch {
	case err == nil:
		return ""
	case errors.As(err, &f):
		return f.kind
	}
	return "error"
}

// setProblem records the outcome of one of the target's loop steps.
func (t *target) setProblem(ctx context.Context, err error) {
	t.s.setProblems(ctx, func() { t.loop = err })
}

// setFileProblem records the outcome of one map-file write.
func (s *Syncer) setFileProblem(ctx context.Context, err error) {
	s.setProblems(ctx, func() { s.fileErr = fail(kindFile, err) })
}

// setProblems applies change to the problems and, when a state changes (a
// failure of another kind, or a recovery; of the syncer or of a target),
// logs one line and reports to Redis at once, so that mapctl status never
// shows a state already gone.
func (s *Syncer) setProblems(ctx context.Context, change func()) {
	s.reportMu.Lock()
	s.mu.Lock()
	before := s.status.State
	if before == "" {
		before = stateStarting
	}
	change()
	after, problem := s.stateLocked()
	type tchange struct {
		t                   *target
		before, after, prob string
		applied             string // its position, read under s.mu for the log line
	}
	var tcs []tchange
	for _, t := range s.targets {
		tb := t.shown
		if tb == "" {
			tb = stateStarting
		}
		ta, tp := t.stateLocked()
		if ta != tb {
			tcs = append(tcs, tchange{t, tb, ta, tp, t.status.Applied})
		} else {
			t.shownProb = tp
		}
	}
	if before == after && len(tcs) == 0 {
		s.status.State, s.status.Problem = after, problem // the next heartbeat reports the wording
		s.mu.Unlock()
		s.reportMu.Unlock()
		return
	}
	next := s.status
	next.State, next.Problem = after, problem
	next.Ready = after == stateReady || after == stateStandby
	next.Standby = after == stateStandby
	targets := make([]maps.TargetState, len(s.targets))
	for i, t := range s.targets {
		targets[i] = t.reportLocked()
	}
	for _, tc := range tcs {
		for i, t := range s.targets {
			if t == tc.t {
				targets[i].Ready = tc.after == stateReady || tc.after == stateStandby
				targets[i].Standby = tc.after == stateStandby
				targets[i].Problem = tc.prob
			}
		}
	}
	s.mu.Unlock()
	// Redis first, then /readyz: whoever sees the new state locally finds
	// it in Redis too.
	s.reportLocked(ctx, next, targets)
	s.mu.Lock()
	s.status.State, s.status.Problem, s.status.Ready, s.status.Standby = next.State, next.Problem, next.Ready, next.Standby
	for _, tc := range tcs {
		tc.t.shown, tc.t.shownProb = tc.after, tc.prob
	}
	s.mu.Unlock()
	s.reportMu.Unlock()
	for _, tc := range tcs {
		if len(s.targets) == 1 {
			break // the syncer's own line says it all
		}
		switch {
		case tc.after == stateReady:
			tc.t.log.Info("target ready", "was", tc.before, "log_id", tc.applied)
		case tc.after == stateStandby || tc.after == stateStarting:
			tc.t.log.Info("target "+tc.after, "was", tc.before)
		default:
			tc.t.log.Warn("target not ready", "state", tc.after, "was", tc.before, "err", tc.prob)
		}
	}
	if before == after {
		return
	}
	_, logID, n := s.state.position()
	switch {
	case after == stateReady && (before == stateStarting || before == stateStandby):
		s.log.Info("syncer ready", "was", before, "log_id", logID, "entries", n)
	case after == stateReady:
		s.log.Info("syncer recovered", "was", before, "log_id", logID, "entries", n)
	case after == stateStandby || after == stateStarting:
		s.log.Info("syncer "+after, "was", before)
	default:
		s.log.Warn("syncer not ready", "state", after, "was", before, "err", problem)
	}
}

// stateLocked derives the syncer's state from the problems: the reader's
// failure first, then the file's and the reports', then the targets'.
func (s *Syncer) stateLocked() (state, problem string) {
	switch {
	case s.loop != nil:
		return kindOf(s.loop), s.loop.Error()
	case s.fileErr != nil:
		return kindOf(s.fileErr), s.fileErr.Error()
	case s.reportErr != nil:
		return kindRedis, "redis: cannot report this syncer (mapctl --wait and status cannot see it): " + s.reportErr.Error()
	case s.nameErr != nil:
		return kindRedis, "redis: cannot renew this syncer's name: " + s.nameErr.Error()
	case !s.state.isLoaded():
		return stateStarting, ""
	}
	standby := 0
	for _, t := range s.targets {
		ts, tp := t.stateLocked()
		switch ts {
		case stateReady:
		case stateStandby:
			standby++
		default:
			if len(s.targets) > 1 && tp != "" {
				tp = "target " + t.addr + ": " + tp
			}
			return ts, tp
		}
	}
	if standby == len(s.targets) {
		p := "another syncer holds this map's lease: " + s.targets[0].lease.holder()
		if len(s.targets) > 1 {
			p = "other syncers hold the leases of every target"
		}
		return stateStandby, p
	}
	if !s.fileOK.Load() && s.fileLease.holder() == "" {
		return stateStarting, "" // the map file is not written yet
	}
	return stateReady, ""
}

// stateLocked derives a target's state; the caller holds s.mu.
func (t *target) stateLocked() (state, problem string) {
	active := t.active.Load()
	switch {
	case !active && t.lease.holder() != "":
		return stateStandby, "another syncer holds this map's lease: " + t.lease.holder()
	case t.loop != nil:
		return kindOf(t.loop), t.loop.Error()
	case !active || !t.inSync.Load():
		return stateStarting, ""
	}
	return stateReady, ""
}

// reportLocked is the target as reported in Redis; the caller holds s.mu.
func (t *target) reportLocked() maps.TargetState {
	st := t.shown
	if st == "" {
		st = stateStarting
	}
	return maps.TargetState{
		Address: t.addr, Applied: t.status.Applied, Entries: t.status.Entries, Pending: t.s.state.pendingAfter(t.status.seq),
		Ready: st == stateReady || st == stateStandby, Standby: st == stateStandby,
		Problem: t.shownProb, Contact: t.status.Contact,
	}
}

// report records this syncer's position in Redis: always when force is set
// (after a batch, so mapctl --wait sees it at once), else once a heartbeat.
// It reads the shown status under reportMu, so reports never go backwards.
func (s *Syncer) report(ctx context.Context, force bool) {
	s.reportMu.Lock()
	defer s.reportMu.Unlock()
	if !force && time.Since(s.lastReport) < s.cfg.Heartbeat {
		return
	}
	st := s.Status()
	s.mu.Lock()
	targets := make([]maps.TargetState, len(s.targets))
	for i, t := range s.targets {
		targets[i] = t.reportLocked()
	}
	s.mu.Unlock()
	s.reportLocked(ctx, st, targets)
}

// reportLocked writes st to Redis; the caller holds reportMu. A failure is
// kept as a problem of its own: a syncer Redis cannot see is not ready.
func (s *Syncer) reportLocked(ctx context.Context, st Status, targets []maps.TargetState) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Heartbeat)
	defer cancel()
	// The summary: the lowest position of the active targets.
	applied, entries, first := "", 0, true
	for _, t := range targets {
		if t.Standby {
			continue
		}
		if first || maps.CompareIDs(t.Applied, applied) < 0 {
			applied = t.Applied
		}
		if first || t.Entries < entries {
			entries = t.Entries
		}
		first = false
	}
	err := s.store.ReportSyncer(rctx, maps.SyncerState{
		Name: s.cfg.Name, Instance: s.instance, Applied: applied, Seen: time.Now(), Map: s.cfg.MapName,
		Entries: entries, Ready: st.Ready, Standby: st.Standby, Problem: st.Problem, Targets: targets,
	})
	if err == nil {
		s.lastReport = time.Now()
	}
	s.mu.Lock()
	s.reportErr = err // the loop logs the state change
	s.mu.Unlock()
}

// heartbeat renews the claims and reports the syncer every Heartbeat until
// ctx ends, whatever the sync loop is doing (a long load, a backoff, a
// refused reconcile).
func (s *Syncer) heartbeat(ctx context.Context) {
	t := time.NewTicker(s.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.renewClaims(ctx)
			s.report(ctx, false)
			for _, ts := range s.Status().Targets {
				s.cfg.Metrics.measureLag(ctx, ts.Address, s.store, ts.Applied, ts.Standby)
			}
		}
	}
}

package syncer

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// Status is a syncer's view of itself, for health checks and metrics.
type Status struct {
	Ready      bool   `json:"ready"`             // the live map is in sync, the last step and the last file write succeeded
	Standby    bool   `json:"standby"`           // another syncer holds this map's lease; this one waits to take over
	State      string `json:"state"`             // "ready", "standby", "starting", or the failing part: redis, haproxy, haproxy_no_answer, file, guard
	Problem    string `json:"problem,omitempty"` // why not ready
	Applied    string `json:"log_id"`            // last change-log ID in the live map
	Entries    int    `json:"entries"`           // entries in the live map
	FullSyncs  int    `json:"full_syncs"`        // reconciles of the whole live map with Redis
	Swaps      int    `json:"swaps"`             // whole-map versioned swaps
	Refused    int    `json:"refused"`           // reconciles refused by the delete guard
	Drift      int64  `json:"drift"`             // entries (or file rewrites) corrected by drift checks
	Changes    int64  `json:"changes"`           // change-log entries applied
	BadSkipped int64  `json:"bad_skipped"`       // invalid entries found in Redis and skipped
	HAProxyPid int64  `json:"haproxy_pid"`
	// DriftChecks counts completed drift rounds; DriftLiveTook is the last
	// round's live-map comparison and DriftRoundTook the whole round, the
	// Redis pass included (interleaved with live changes).
	DriftChecks    int           `json:"drift_checks"`
	DriftLiveTook  time.Duration `json:"drift_live_took_ns"`
	DriftRoundTook time.Duration `json:"drift_round_took_ns"`
	FileWritten    time.Time     `json:"file_written"`
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

// setLoopProblem records the outcome of one loop step.
func (s *Syncer) setLoopProblem(ctx context.Context, err error) {
	s.setProblems(ctx, func() { s.loop = err })
}

// setFileProblem records the outcome of one map-file write.
func (s *Syncer) setFileProblem(ctx context.Context, err error) {
	s.setProblems(ctx, func() { s.fileErr = fail(kindFile, err) })
}

// setProblems applies change to the problems and, when the state changes
// (a failure of another kind, or a recovery), logs one line and reports to
// Redis at once, so that mapctl status never shows a state already gone.
func (s *Syncer) setProblems(ctx context.Context, change func()) {
	s.reportMu.Lock()
	s.mu.Lock()
	before := s.status.State
	if before == "" {
		before = stateStarting
	}
	change()
	after, problem := s.stateLocked()
	if before == after {
		s.status.State, s.status.Problem = after, problem // the next heartbeat reports the wording
		s.mu.Unlock()
		s.reportMu.Unlock()
		return
	}
	next := s.status
	next.State, next.Problem = after, problem
	next.Ready = after == stateReady || after == stateStandby
	next.Standby = after == stateStandby
	s.mu.Unlock()
	// Redis first, then /readyz: whoever sees the new state locally finds
	// it in Redis too.
	s.reportLocked(ctx, next)
	s.mu.Lock()
	s.status.State, s.status.Problem, s.status.Ready, s.status.Standby = next.State, next.Problem, next.Ready, next.Standby
	s.mu.Unlock()
	s.reportMu.Unlock()
	switch {
	case after == stateReady && (before == stateStarting || before == stateStandby):
		s.log.Info("syncer ready", "was", before, "log_id", s.applied, "entries", len(s.mirror))
	case after == stateReady:
		s.log.Info("syncer recovered", "was", before, "log_id", s.applied, "entries", len(s.mirror))
	case after == stateStandby || after == stateStarting:
		s.log.Info("syncer "+after, "was", before)
	default:
		s.log.Warn("syncer not ready", "state", after, "was", before, "err", problem)
	}
}

// stateLocked derives the state from the problems: the loop's failure first,
// then the file's.
func (s *Syncer) stateLocked() (state, problem string) {
	switch {
	case !s.active && s.claims.standbyFor() != "":
		return stateStandby, "another syncer holds this map's lease: " + s.claims.standbyFor()
	case s.loop != nil:
		return kindOf(s.loop), s.loop.Error()
	case s.fileErr != nil:
		return kindOf(s.fileErr), s.fileErr.Error()
	case s.reportErr != nil:
		return kindRedis, "redis: cannot report this syncer (mapctl --wait and status cannot see it): " + s.reportErr.Error()
	case s.nameErr != nil:
		return kindRedis, "redis: cannot renew this syncer's name: " + s.nameErr.Error()
	case !s.active:
		return stateStarting, ""
	case s.mirror == nil:
		return stateStarting, ""
	}
	return stateReady, ""
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
	s.reportLocked(ctx, s.Status())
}

// reportLocked writes st to Redis; the caller holds reportMu. A failure is
// kept as a problem of its own: a syncer Redis cannot see is not ready.
func (s *Syncer) reportLocked(ctx context.Context, st Status) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Heartbeat)
	defer cancel()
	err := s.store.ReportSyncer(rctx, maps.SyncerState{
		Name: s.cfg.Name, Instance: s.instance, Applied: st.Applied, Seen: time.Now(), Map: s.cfg.MapPath,
		Entries: st.Entries, Ready: st.Ready, Standby: st.Standby, Problem: st.Problem,
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
			s.cfg.Metrics.measureLag(ctx, s.cfg.Socket, s.store, s.Status().Applied, s.Status().Standby)
		}
	}
}

// ShardCounts returns how many users the live map routes to each shard, as
// this syncer knows the live map (its mirror): empty before the first full
// sync, and after a full sync that failed while sending until one succeeds
// (the live map is then unknown). Shards with
// no users are absent. It reads counts kept up to date as the mirror
// changes, so it costs O(shards), not a pass over the map. Safe for
// concurrent use; the map returned is the caller's.
func (s *Syncer) ShardCounts() map[string]int {
	return s.counts.snapshot()
}

// shardCounts is the number of users per shard in the mirror, updated with
// it by the Run goroutine and read by ShardCounts from any goroutine.
type shardCounts struct {
	mu sync.Mutex
	n  map[string]int
}

// reset recounts from a whole new mirror (nil: none).
func (c *shardCounts) reset(mirror map[string]string) {
	n := make(map[string]int)
	for _, sh := range mirror {
		n[sh]++
	}
	c.mu.Lock()
	c.n = n
	c.mu.Unlock()
}

// follow updates the counts for one op's outcome, before follow applies it
// to mirror (the same rules as Syncer.follow).
func (c *shardCounts) follow(mirror map[string]string, op runtime.Op, result error) {
	old, had := mirror[op.Key]
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	dec := func(sh string) {
		if c.n[sh]--; c.n[sh] <= 0 {
			delete(c.n, sh)
		}
	}
	switch {
	case op.Kind == runtime.Del && (result == nil || errors.Is(result, runtime.ErrNotFound)):
		if had {
			dec(old)
		}
	case op.Kind != runtime.Del && result == nil:
		if had {
			dec(old)
		}
		c.n[op.Value]++
	}
}

func (c *shardCounts) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.n))
	for sh, n := range c.n {
		out[sh] = n
	}
	return out
}

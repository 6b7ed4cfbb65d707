package syncer

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/shardmap/shardmap/maps"
)

// scanPage is how many hash entries one drift step reads (HSCAN COUNT).
const scanPage = 2000

// driftScan is the state of the periodic drift check. The Redis side is a
// pass of HSCAN pages, one per loop step, so that a 1M-entry hash is checked
// without holding up live changes or copying the hash.
type driftScan struct {
	forceNext atomic.Bool // SIGHUP: check now (set from other goroutines)
	lastGap   time.Time
	last      time.Time // last drift check started
	active    bool      // a Redis pass is under way
	cursor    uint64
	bad       map[string]bool // invalid entries seen in this pass
	found     int             // entries repaired in this pass
}

func (d *driftScan) scanning() bool { return d.active }

// reset starts the period anew after a full sync, which just made
// everything equal.
func (d *driftScan) reset() {
	d.active, d.cursor, d.found = false, 0, 0
	d.last, d.lastGap = time.Now(), time.Now()
}

// reconcile looks for drift in Redis, and repairs it:
//   - every heartbeat, a log gap (trimmed, deleted, Redis emptied): reload;
//   - every ReconcileEvery (or at once on SIGHUP): the map file, rewritten
//     if it changed outside shardmap; and a pass over the Redis hash, a page
//     per step, in which an entry that differs from the state and has no
//     change-log entry since the state's position was changed behind the
//     log (an HSET by hand): it is published as Redis says. At the end of
//     the pass, a hash count that differs from the state (an HDEL by hand)
//     makes a reload.
//
// Each target looks for edits of its live map on its own (target.checkLive).
func (s *Syncer) reconcile(ctx context.Context) error {
	d := &s.drift
	_, applied, _ := s.state.position()
	if time.Since(d.lastGap) >= s.cfg.Heartbeat {
		d.lastGap = time.Now()
		if ok, err := s.store.LogHas(ctx, applied); err != nil {
			return fail(kindRedis, err)
		} else if !ok {
			s.log.Warn("change log gap: position no longer in the log (trimmed, deleted or Redis emptied), reloading", "log_id", applied)
			s.reloadFor(reasonGap)
			return nil
		}
	}
	if d.active {
		return s.scanStep(ctx)
	}
	if !d.forceNext.Swap(false) && time.Since(d.last) < s.cfg.ReconcileEvery {
		return nil
	}
	d.last = time.Now()
	s.checkFile(ctx)
	d.active, d.cursor, d.found, d.bad = true, 0, 0, map[string]bool{}
	return s.scanStep(ctx)
}

// scanStep checks one page of the Redis hash against the state.
func (s *Syncer) scanStep(ctx context.Context) error {
	d := &s.drift
	_, before, _ := s.state.position()
	page, bad, next, err := s.store.ScanPage(ctx, d.cursor, scanPage)
	if err != nil {
		return fail(kindRedis, err)
	}
	for _, b := range bad {
		d.bad[b.User] = true
	}
	var differ []maps.Assignment
	s.state.read(func(v view) {
		for _, a := range page {
			if cur, ok := v.get(a.User); !ok || cur != a.Shard {
				differ = append(differ, a)
			}
		}
	})
	if len(differ) > 0 {
		// An entry changed through the log since the state's position is
		// not drift: the loop reads it next.
		upto, err := s.store.LastLogID(ctx)
		if err != nil {
			return fail(kindRedis, err)
		}
		if upto != before {
			touched, err := s.store.UsersChangedAfter(ctx, before, upto, int64(s.cfg.BatchMax))
			if err != nil {
				// Too many changes in flight to tell: read this page again
				// once the loop has read them.
				s.log.Debug("drift pass: page postponed while changes are in flight", "err", err)
				return nil
			}
			kept := differ[:0]
			for _, a := range differ {
				if !touched[a.User] {
					kept = append(kept, a)
				}
			}
			differ = kept
		}
	}
	if len(differ) > 0 {
		s.log.Warn("drift: redis hash changed behind the change log, applying it", "entries", len(differ), "user", differ[0].User, "shard", differ[0].Shard)
		ws := make([]want, len(differ))
		for i, a := range differ {
			ws[i] = want{a.User, a.Shard}
		}
		if _, err := s.state.publish(ws, before, nil); err != nil {
			return err
		}
		s.file.markDirty()
		d.found += len(differ)
		s.mu.Lock()
		s.status.Drift += int64(len(differ))
		s.mu.Unlock()
	}
	d.cursor = next
	if next != 0 {
		return nil
	}
	d.active = false
	s.badInHash = len(d.bad)
	if err := s.checkCount(ctx); err != nil {
		return err
	}
	took := time.Since(d.last)
	s.mu.Lock()
	s.status.DriftChecks++
	s.status.DriftRoundTook = took
	s.mu.Unlock()
	s.log.Debug("drift check done", "round_took", took, "repaired", d.found)
	return nil
}

// checkCount compares the hash's size with the state's when no change is in
// flight (the log's last ID equals the state's before and after the count):
// an entry deleted from the hash behind the log shows only here.
func (s *Syncer) checkCount(ctx context.Context) error {
	before, err := s.store.LastLogID(ctx)
	if err != nil {
		return fail(kindRedis, err)
	}
	n, err := s.store.Count(ctx)
	if err != nil {
		return fail(kindRedis, err)
	}
	after, err := s.store.LastLogID(ctx)
	if err != nil {
		return fail(kindRedis, err)
	}
	_, applied, have := s.state.position()
	if before == applied && after == applied && int(n) != have+s.badInHash {
		s.log.Warn("drift: redis hash lost entries behind the change log, reloading", "redis", n, "state", have)
		s.reloadFor(reasonDriftCount)
	}
	return nil
}

// checkFile rewrites the map file when it changed outside shardmap.
func (s *Syncer) checkFile(ctx context.Context) {
	f := &s.file
	s.mu.Lock()
	failing := s.fileErr != nil
	s.mu.Unlock()
	if failing || !s.fileActive.Load() || !s.loadAccepted(ctx) {
		return // the file's own state retries it, with backoff; or no target accepted the state yet
	}
	if st := stampOf(f.path); !f.writing && st != f.stamp && !f.stamp.zero() {
		s.log.Warn("drift: map file changed outside shardmap, rewriting it", "file", f.path)
		f.id = "" // forces the rewrite
		f.markDirty()
		if f.flushNow(s) == nil {
			s.mu.Lock()
			s.status.Drift++
			s.mu.Unlock()
		}
	}
}

package syncer

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
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
	liveTook  time.Duration   // the live map check of this round
	found     int             // entries repaired in this pass
}

func (d *driftScan) scanning() bool { return d.active }

// reset starts the period anew after a full sync, which just made
// everything equal.
func (d *driftScan) reset() {
	d.active, d.cursor, d.found = false, 0, 0
	d.last, d.lastGap = time.Now(), time.Now()
}

// reconcile looks for drift, and repairs it:
//   - every heartbeat, a log gap (trimmed, deleted, Redis emptied): full sync;
//   - every ReconcileEvery (or at once on SIGHUP): the live map, dumped and
//     compared entry by entry with the mirror at any size, put back; the map
//     file, rewritten if it changed outside shardmap; and a pass over the
//     Redis hash, a page per step, in which an entry that differs from the
//     mirror and has no change-log entry since the mirror's position was
//     changed behind the log (an HSET by hand): it is applied as Redis says.
//     At the end of the pass, a hash count that differs from the mirror
//     (an HDEL by hand) makes a full sync.
func (s *Syncer) reconcile(ctx context.Context) error {
	d := &s.drift
	if time.Since(d.lastGap) >= s.cfg.Heartbeat {
		d.lastGap = time.Now()
		if ok, err := s.store.LogHas(ctx, s.applied); err != nil {
			return fail(kindRedis, err)
		} else if !ok {
			s.log.Warn("change log gap: position no longer in the log (trimmed, deleted or Redis emptied), reconciling", "log_id", s.applied)
			s.cfg.Metrics.needFull(s.cfg.Socket, reasonGap)
			s.needFull = true
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
	if err := s.checkLive(ctx); err != nil {
		return err
	}
	d.liveTook = time.Since(d.last)
	s.checkFile(ctx)
	d.active, d.cursor, d.found, d.bad = true, 0, 0, map[string]bool{}
	return s.scanStep(ctx)
}

// scanStep checks one page of the Redis hash against the mirror.
func (s *Syncer) scanStep(ctx context.Context) error {
	d := &s.drift
	before := s.applied
	page, bad, next, err := s.store.ScanPage(ctx, d.cursor, scanPage)
	if err != nil {
		return fail(kindRedis, err)
	}
	for _, b := range bad {
		d.bad[b.User] = true
	}
	var differ []maps.Assignment
	for _, a := range page {
		if cur, ok := s.mirror[a.User]; !ok || cur != a.Shard {
			differ = append(differ, a)
		}
	}
	if len(differ) > 0 {
		// An entry changed through the log since the mirror's position is
		// not drift: the loop applies it next.
		upto, err := s.store.LastLogID(ctx)
		if err != nil {
			return fail(kindRedis, err)
		}
		if upto != before {
			touched, err := s.store.UsersChangedAfter(ctx, before, upto, int64(s.cfg.BatchMax))
			if err != nil {
				// Too many changes in flight to tell: read this page again
				// once the loop has applied them.
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
		if err := s.push(ctx, ws, false); err != nil {
			s.cfg.Metrics.needFull(s.cfg.Socket, reasonDoubt)
			s.needFull = true
			return fail(kindHAProxy, err)
		}
		d.found += len(differ)
		s.updateStatus(func(st *Status) { st.Drift += int64(len(differ)) })
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
	s.updateStatus(func(st *Status) {
		st.DriftChecks++
		st.DriftLiveTook, st.DriftRoundTook = d.liveTook, time.Since(d.last)
	})
	s.log.Debug("drift check done", "live_took", d.liveTook, "round_took", time.Since(d.last), "repaired", d.found)
	return nil
}

// checkCount compares the hash's size with the mirror's when no change is in
// flight (the log's last ID equals ours before and after the count): an entry
// deleted from the hash behind the log shows only here.
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
	if before == s.applied && after == s.applied && int(n) != len(s.mirror)+s.badInHash {
		s.log.Warn("drift: redis hash lost entries behind the change log, reconciling", "redis", n, "mirror", len(s.mirror))
		s.cfg.Metrics.needFull(s.cfg.Socket, reasonDriftCount)
		s.needFull = true
	}
	return nil
}

// checkLive dumps the live map and compares it with the mirror entry by
// entry, streaming (no copy of the map): a value that differs is set back;
// a key missing, extra or duplicated makes one swap of the whole map.
func (s *Syncer) checkLive(ctx context.Context) error {
	var (
		lines, sum uint64
		wrong      []runtime.Op
		unknown    int
	)
	err := s.dump(ctx, func(k, v string) {
		lines++
		sum += keyHash(k)
		want, ok := s.mirror[k]
		switch {
		case !ok:
			unknown++
		case want != v:
			wrong = append(wrong, runtime.Op{Kind: runtime.Set, Key: k, Value: want})
		}
	})
	if err != nil {
		return fail(kindHAProxy, err)
	}
	var mirrorSum uint64
	for k := range s.mirror {
		mirrorSum += keyHash(k)
	}
	sameKeys := unknown == 0 && lines == uint64(len(s.mirror)) && sum == mirrorSum
	if sameKeys && len(wrong) == 0 {
		return nil
	}
	s.log.Warn("drift: live map edited outside shardmap, putting it back", "wrong_value", len(wrong), "unknown_keys", unknown,
		"entries", lines, "mirror", len(s.mirror))
	// The mirror is right, so the file (written from it) needs nothing.
	if sameKeys && len(wrong) <= s.cfg.ReplaceAbove {
		err = s.applyOps(ctx, wrong)
	} else if err = s.rt.Replace(ctx, s.cfg.MapPath, entriesOf(s.mirror)); err == nil {
		s.updateStatus(func(st *Status) { st.Swaps++ })
		s.cfg.Metrics.swapped(s.cfg.Socket, reasonDrift, nil)
	}
	if err != nil {
		s.cfg.Metrics.needFull(s.cfg.Socket, reasonDoubt)
		s.needFull = true
		return fail(kindHAProxy, err)
	}
	s.updateStatus(func(st *Status) { st.Drift += int64(max(len(wrong)+unknown, 1)) })
	return nil
}

// checkFile rewrites the map file when it changed outside shardmap.
func (s *Syncer) checkFile(ctx context.Context) {
	f := &s.file
	s.mu.Lock()
	failing := s.fileErr != nil
	s.mu.Unlock()
	if failing {
		return // the file's own state retries it, with backoff
	}
	if st := stampOf(f.path); !f.writing && st != f.stamp && !f.stamp.zero() {
		s.log.Warn("drift: map file changed outside shardmap, rewriting it", "file", f.path)
		f.id = "" // forces the rewrite
		f.markDirty()
		if f.flushNow(s) == nil {
			s.updateStatus(func(st *Status) { st.Drift++ })
		}
	}
}

// keyHash is FNV-1a of k: the live map and the mirror hold the same keys
// when their counts and the sums of their key hashes agree.
func keyHash(k string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(k); i++ {
		h ^= uint64(k[i])
		h *= 1099511628211
	}
	return h
}

package syncer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	shardmaps "github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// How a target's live maps are written. In HAProxy before 2.9, "set map"
// and "del map" walk the whole map's entry list (46 ms a command at 1M
// entries on 2.6); from 2.9 they use a tree. When HAProxy has the delta map
// loaded (maps.DeltaPath of the map: the rendered config consults it before
// the base map, see haproxy.Render) and is older than 2.9, the target writes
// changes to the small delta map, whose set costs with its own size, and a
// del both there and in the base. It folds — one versioned swap of the
// base to the state, then one of the delta to empty — for a batch with many
// deletes, once the delta holds more than DeltaMax entries and no change
// is waiting (the end of a bulk stream: a fold in the middle of one would
// make the rest wait or go to the delta anyway), or when it would pass
// deltaLimit. Between the two commits both maps agree (every
// delta entry equals the state's value for its user at the target's
// position, or an older one the request path saw already), so no request
// is ever routed by a value older than one it was routed by before.
//
// Otherwise (no delta map loaded: a config with the single line of the
// design card; or HAProxy 2.9 and later) the single map is written as it
// always was, and a delta map HAProxy has is kept empty.
//
// In both layouts a user the live maps do not hold (new, or deleted
// before) is added to the base with a payload "add map" (runtime AddFrom):
// an add walks nothing, so a bulk import of new users costs HAProxy about
// what loading them in a swap would, with no swap. Not during a
// background fold: HAProxy drops the live version's adds when the version
// being loaded is committed, so new users go to the delta then.

// edit is what one user's entry must become: shard "" deletes it. inBase
// and inDelta say where the live maps may hold it.
type edit struct {
	user, shard     string
	inBase, inDelta bool
}

// chooseLayout looks at which maps HAProxy has and at its version.
func (t *target) chooseLayout(ctx context.Context, info runtime.Info) error {
	ms, err := t.rt.Maps(ctx)
	if err != nil {
		return err
	}
	delta := shardmaps.DeltaPath(t.s.cfg.MapName)
	t.hasDelta = false
	for _, m := range ms {
		if m.Path == delta {
			t.hasDelta = true
		}
	}
	use := t.hasDelta && !treeMaps(info.Version)
	if use != t.useDelta || t.deltaKeys == nil {
		t.log.Info("map layout", "layout", layoutName(use), "delta_map_loaded", t.hasDelta, "haproxy_version", info.Version)
	}
	t.useDelta = use
	t.treeMaps = treeMaps(info.Version)
	return nil
}

// treeMaps reports whether HAProxy version v ("2.6.12-1+deb12u4") sets and
// deletes map entries by key through a tree (2.9 and later). An unreadable
// version counts as older: the delta layout is right for both.
func treeMaps(v string) bool {
	major, rest, _ := strings.Cut(v, ".")
	minor, _, _ := strings.Cut(rest, ".")
	minor, _, _ = strings.Cut(minor, "-")
	a, err1 := strconv.Atoi(major)
	b, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil {
		return false
	}
	return a > 2 || a == 2 && b >= 9
}

func layoutName(delta bool) string {
	if delta {
		return "delta+base"
	}
	return "single"
}

func (t *target) layoutName() string { return layoutName(t.useDelta) }

// mapNames are the live maps of the target: the base, and the delta when
// HAProxy has it.
func (t *target) mapNames() []string {
	if t.hasDelta {
		return []string{t.s.cfg.MapName, shardmaps.DeltaPath(t.s.cfg.MapName)}
	}
	return []string{t.s.cfg.MapName}
}

// sameSet reports whether a and b hold the same keys.
func sameSet(a, b map[string]struct{}) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			return false
		}
	}
	return true
}

// sortEntries puts es in key order, the order HAProxy loads fastest (see
// swap).
func sortEntries(es []runtime.Entry) {
	slices.SortFunc(es, func(a, b runtime.Entry) int { return strings.Compare(a.Key, b.Key) })
}

// editCost counts a batch's edits by what each costs HAProxy: adds (a user
// the live maps do not hold: to the base, or to the delta during a fold),
// sets and deletes of users the base may hold (each walks the map's entry
// list before 2.9), and, in the delta layout, users to add to the delta.
type editCost struct {
	adds, sets, dels, deltaAdds int
}

// count adds one user's edit: from and to are its values before and after
// (none: no value), inDelta whether the delta holds it.
func (t *target) count(c *editCost, from, to int32, inDelta bool) {
	switch {
	case from == to:
	case to == none:
		c.dels++
	case t.useDelta && !inDelta && (from != none || t.folding != nil):
		c.deltaAdds++
	case t.useDelta && inDelta, from != none:
		c.sets++
	default:
		c.adds++
	}
}

// costOf counts edits as count does, from where the live maps may hold
// each user (a full sync's diff).
func (t *target) costOf(edits []edit) editCost {
	var c editCost
	for _, e := range edits {
		switch {
		case e.shard == "":
			if e.inBase {
				c.dels++
			}
		case t.useDelta && e.inDelta:
			c.sets++
		case !e.inBase && !e.inDelta:
			c.adds++
		case t.useDelta:
			c.deltaAdds++
		default:
			c.sets++
		}
	}
	return c
}

// deltaLimit is the most entries the delta may hold before a fold:
// DeltaMax, and eight times that while a bulk stream is being read (the
// reader's reads are full) or the target works through a backlog of one
// (see target.backlog) and the target has a second client, so that a
// reassignment of many users is live before the base is swapped rather
// than after (an add to the delta walks nothing; the fold follows once the
// target has caught up, see step). Not under steady churn: there a set of
// a user already in the delta walks the whole delta.
func (t *target) deltaLimit() int {
	if t.rtDelta != nil && (t.s.state.streaming.Load() || t.backlog) {
		return 8 * t.s.cfg.DeltaMax
	}
	return t.s.cfg.DeltaMax
}

// tooMuch reports whether edits are cheaper as a fold (a swap of the whole
// base). Adds never are. In the single layout: more than ReplaceAbove sets
// and deletes before HAProxy 2.9 (each walks the map); from 2.9 on, where
// they use a tree, more than that or an eighth of the map's n entries,
// whichever is more (a swap loads every entry, a set costs a few). In the
// delta layout: more than ReplaceAbove deletes from the base; a delta
// that would pass deltaLimit entries; or sets of users in the delta whose
// walks would cost more than ReplaceAbove walks of a DeltaMax delta.
func (t *target) tooMuch(c editCost, n int) bool {
	switch {
	case !t.useDelta && t.treeMaps:
		return c.sets+c.dels > max(t.s.cfg.ReplaceAbove, n/8)
	case !t.useDelta:
		return c.sets+c.dels > t.s.cfg.ReplaceAbove
	}
	return c.dels > t.s.cfg.ReplaceAbove || len(t.deltaKeys)+c.deltaAdds > t.deltaLimit() ||
		c.sets*len(t.deltaKeys) > t.s.cfg.ReplaceAbove*t.s.cfg.DeltaMax
}

// send writes edits to the live maps. A user the live maps do not hold is
// added to the base (to the delta during a fold), in payloads. In the delta
// layout, deletes go to the base first and then to the delta (so the
// newest value routes until the user is gone), and every other change to
// the delta.
func (t *target) send(ctx context.Context, edits []edit) error {
	base, delta := t.s.cfg.MapName, shardmaps.DeltaPath(t.s.cfg.MapName)
	var baseOps, deltaOps []runtime.Op
	var baseAdds, deltaAdds runtime.EntryList
	for _, e := range edits {
		switch {
		case e.shard == "":
			if e.inBase {
				baseOps = append(baseOps, runtime.Op{Kind: runtime.Del, Key: e.user})
			}
			if t.useDelta && e.inDelta {
				deltaOps = append(deltaOps, runtime.Op{Kind: runtime.Del, Key: e.user})
			}
		case t.useDelta && e.inDelta:
			deltaOps = append(deltaOps, runtime.Op{Kind: runtime.Set, Key: e.user, Value: e.shard})
		case !e.inBase && t.folding == nil:
			baseAdds = append(baseAdds, runtime.Entry{Key: e.user, Value: e.shard})
		case t.useDelta:
			deltaAdds = append(deltaAdds, runtime.Entry{Key: e.user, Value: e.shard})
		case e.inBase:
			baseOps = append(baseOps, runtime.Op{Kind: runtime.Set, Key: e.user, Value: e.shard})
		default:
			// The single layout has no background fold; kept for safety.
			baseOps = append(baseOps, runtime.Op{Kind: runtime.Add, Key: e.user, Value: e.shard})
		}
	}
	if err := t.applyOps(ctx, base, baseOps); err != nil {
		return err
	}
	if err := t.addFrom(ctx, base, baseAdds); err != nil {
		return err
	}
	if err := t.applyOps(ctx, delta, deltaOps); err != nil {
		return err
	}
	for _, op := range deltaOps {
		if op.Kind == runtime.Del {
			delete(t.deltaKeys, op.Key)
		}
	}
	if err := t.addFrom(ctx, delta, deltaAdds); err != nil {
		return err
	}
	for _, e := range deltaAdds {
		// A copy: e.Key may be a view of its batch's names (batch.user),
		// which the key would keep alive whole after the ring drops it.
		t.deltaKeys[strings.Clone(e.Key)] = struct{}{}
	}
	return nil
}

// addFrom adds entries the map does not hold (see runtime AddFrom), on the
// second client during a background fold. A failure leaves the live maps in
// doubt (some payloads may be live): the caller's error does that.
func (t *target) addFrom(ctx context.Context, name string, es runtime.EntryList) error {
	if len(es) == 0 {
		return nil
	}
	if !t.leaseValid() {
		return errLeaseLost
	}
	rt := t.rt
	if t.folding != nil {
		rt = t.rtDelta // the main client swaps the base meanwhile
	}
	sortEntries(es)
	if err := rt.AddFrom(ctx, name, es); err != nil {
		return err
	}
	t.contact()
	return nil
}

// fold swaps the base map for the state as it is now and then, if HAProxy
// has a delta map, the delta for an empty one; it returns the position the
// maps hold then. why is the swap's reason in the metrics; gen is the
// state's load the delete guard checked (see swap).
func (t *target) fold(ctx context.Context, why string, gen uint64) (uint64, string, error) {
	seq, logID, err := t.swap(ctx, gen)
	t.s.cfg.Metrics.swapped(t.addr, why, err)
	if err != nil {
		return 0, "", err
	}
	if t.hasDelta {
		if !t.leaseValid() {
			return 0, "", errLeaseLost
		}
		if err := t.rt.Replace(ctx, shardmaps.DeltaPath(t.s.cfg.MapName), nil); err != nil {
			return 0, "", fmt.Errorf("fold: empty the delta map: %w", err)
		}
	}
	folded := len(t.deltaKeys)
	clear(t.deltaKeys)
	if t.deltaKeys == nil {
		t.deltaKeys = map[string]struct{}{}
	}
	t.s.updateTarget(t, func(st *TargetStatus) { st.Folds++; st.DeltaEntries = 0 })
	t.log.Info("folded into the map", "why", why, "delta_entries", folded, "log_id", logID)
	return seq, logID, nil
}

// A fold in the background. In the delta layout, swapping a 1M base takes
// about a second; changes made meanwhile must not wait for it. So when a
// target has a second client (rtDelta), apply starts the swap of the base
// to the state (on the main client) in a goroutine and goes on: the
// changes published meanwhile go to the delta map on the second client,
// live at once. Their values are at least as new as the base's at the
// swap's position S, so the request path never goes back. Once the base is
// committed, the delta is swapped for one holding only the users written
// since the state passed S (the others agree with the new base or are older
// than it), and the target's position becomes the later of S and the last
// batch written to the delta. Until then the position reported stays where
// it was: it is a lower bound of what HAProxy routes.
//
// During a fold only sets go to the delta: a delete from the base would be
// undone by the commit of the version being loaded, so a batch with a
// delete waits for the fold to end, as does one that would make more than
// deltaLimit users written since the fold began (the entries from before
// it leave the delta at its end, so the delta holds up to twice that
// meanwhile).
type foldJob struct {
	done chan struct{}
	// Set by the goroutine before done is closed.
	seq   uint64
	logID string
	err   error
	// Owned by the target's goroutine.
	why        string
	times      [][]int64             // the change times of the batches the fold brings live (batch.times, for the apply latency): not the batches, whose names would stay in memory
	inHand     uint64                // the last batch in hand at the start (the target's position when none): the swap brings those after it live too
	deltaFrom  uint64                // deltaSeq at the start: those after it up to deltaSeq went to the delta (observed then, or in times)
	written    map[string]deltaWrite // users set in the delta during the fold: their last write
	deltaSeq   uint64                // the batch the delta follows from: the state's at the start, then the last applied to it
	walked     int                   // delta entries walked by the sets sent to the delta during the fold (before 2.9 a set walks the map)
	deltaLogID string
}

// deltaWrite is a user's value set in the delta during a fold, and the
// batch it came with.
type deltaWrite struct {
	seq   uint64
	shard string
}

// startFold begins swapping the base for the state in the background; bs
// are the batches in hand, which the swap includes.
func (t *target) startFold(ctx context.Context, why string, bs []*batch) {
	job := &foldJob{done: make(chan struct{}), why: why, written: map[string]deltaWrite{}}
	for _, b := range bs {
		job.times = append(job.times, b.times)
	}
	// The swap's position is the state's now or later, and the delta
	// follows from there: not from bs's last batch, which may be a prefix
	// of what was published (see firstChanges; out of the ring's reach, bs
	// is empty). The batches between are in the swap; sent to the delta
	// they would be written twice.
	job.deltaSeq, job.deltaLogID, _ = t.s.state.position()
	job.deltaFrom, job.inHand = job.deltaSeq, t.seq
	if len(bs) > 0 {
		job.inHand = bs[len(bs)-1].seq
	}
	gen := t.gen
	t.folding = job
	t.log.Info("fold started in the background", "why", why, "delta_entries", len(t.deltaKeys))
	go func() {
		defer close(job.done)
		// Once begun, the swap is carried through or fails whole.
		job.seq, job.logID, job.err = t.swap(context.WithoutCancel(ctx), gen)
	}()
}

// foldDone is closed when the background fold's swap ended (nil: none).
func (t *target) foldDone() <-chan struct{} {
	if t.folding == nil {
		return nil
	}
	return t.folding.done
}

// waitFold waits for the background fold, if any, and finishes it.
func (t *target) waitFold(ctx context.Context) error {
	if t.folding == nil {
		return nil
	}
	<-t.folding.done
	return t.finishFold(ctx)
}

// finishFold ends a background fold whose swap ended: it swaps the delta
// for the users written since the swap's position and moves the target's
// position. A failed swap leaves the live maps in doubt.
func (t *target) finishFold(ctx context.Context) error {
	job := t.folding
	t.folding = nil
	t.s.cfg.Metrics.swapped(t.addr, job.why, job.err)
	if errors.Is(job.err, errReloaded) {
		return job.err
	}
	if job.err != nil {
		return fmt.Errorf("fold: %w", job.err)
	}
	seq, logID := job.seq, job.logID
	keep := map[string]struct{}{}
	var entries []runtime.Entry
	if job.deltaSeq > job.seq {
		// A user last written at or before the swap's position has that
		// value or a newer one in the base: it leaves the delta.
		seq, logID = job.deltaSeq, job.deltaLogID
		for u, w := range job.written {
			if w.seq > job.seq {
				keep[u] = struct{}{}
				entries = append(entries, runtime.Entry{Key: u, Value: w.shard})
			}
		}
	}
	if !t.leaseValid() {
		return errLeaseLost
	}
	sortEntries(entries)
	if err := t.rt.Replace(ctx, shardmaps.DeltaPath(t.s.cfg.MapName), entries); err != nil {
		return fmt.Errorf("fold: swap the delta map: %w", err)
	}
	folded := len(t.deltaKeys)
	t.deltaKeys = keep
	now := time.Now()
	for _, ts := range job.times {
		t.s.cfg.Metrics.appliedAt(t.addr, ts, now)
	}
	t.observeSwapped(job.inHand, job.seq, job.deltaFrom, job.deltaSeq, now)
	var n int
	t.s.state.read(func(v view) { n = v.len() })
	t.seq, t.applied = seq, logID
	t.s.updateTarget(t, func(st *TargetStatus) {
		st.Folds++
		st.Applied, st.Entries, st.seq = logID, n, seq
		st.DeltaEntries = len(keep)
	})
	t.log.Info("folded into the map in the background", "why", job.why, "delta_entries", folded, "kept", len(keep), "log_id", logID)
	return nil
}

// observeSwapped observes the apply latency of the batches a swap alone
// brought live: those after from (the last batch in hand) up to to (the
// swap's position), but not those after skipFrom up to skipTo (sent to the
// delta during a background fold). None when out of the ring's reach.
func (t *target) observeSwapped(from, to, skipFrom, skipTo uint64, now time.Time) {
	if to <= from || t.s.cfg.Metrics == nil {
		return
	}
	bs, ok, _ := t.s.state.since(from)
	if !ok {
		return
	}
	for _, b := range bs {
		if b.seq <= to && (b.seq <= skipFrom || b.seq > skipTo) {
			t.s.cfg.Metrics.appliedAt(t.addr, b.times, now)
		}
	}
}

// catchUp brings a target that fell behind the ring (the state is of the
// load it reconciled with, so its live maps are not in doubt) to the state
// with a fold, which needs no list of what changed: cheaper than the full
// sync's dump and diff, and what a bulk load that outruns the ring needs. A
// fold running is waited for first.
func (t *target) catchUp(ctx context.Context) error {
	if t.folding != nil {
		return t.waitFold(ctx)
	}
	t.log.Info("state moved out of reach, folding the whole state in", "log_id", t.applied)
	if t.useDelta && t.rtDelta != nil {
		t.startFold(ctx, reasonBehind, nil)
		return nil
	}
	seq, logID, err := t.fold(ctx, reasonBehind, t.gen)
	if err != nil {
		return err
	}
	var n int
	t.s.state.read(func(v view) { n = v.len() })
	t.seq, t.applied = seq, logID
	t.s.updateTarget(t, func(st *TargetStatus) { st.Applied, st.Entries, st.seq = logID, n, seq })
	return nil
}

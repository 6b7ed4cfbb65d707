package syncer

import (
	"context"
	"errors"

	shardmaps "github.com/shardmap/shardmap/maps"
)

// errMovedOn: the state moved further during a comparison than the ring
// reaches back; the comparison is retried (as a full sync).
var errMovedOn = errors.New("the state moved out of reach during the comparison of the live map")

// comparison is what a target's live maps route, compared with the state.
type comparison struct {
	edits    []edit // what makes the live maps route as the state says, when not overflow
	overflow bool   // more edits than the cap: only the counts are right
	// The counts: users the live maps lack, hold but the state does not,
	// route to another shard; deletes that reach into the base; delta
	// entries after the edits.
	missing, extra, changed, baseDels, deltaAfter int
	duplicates                                    bool // a map lists a key twice
	delta                                         map[string]struct{}
	liveLen                                       int    // users the live maps route
	seq, gen                                      uint64 // the state's position and load the result holds at
	logID                                         string
	n                                             int // users in the state
}

// liveKey is a 128-bit hash of a user: the comparison keeps the base map's
// keys only as these (16 bytes each), not as strings, so that reading a
// 1M-entry live map costs ~30 MB instead of a copy of it.
type liveKey [2]uint64

func keyOf(k string) liveKey {
	h1, h2 := uint64(14695981039346656037), uint64(0x9e3779b97f4a7c15)
	for i := 0; i < len(k); i++ {
		h1 ^= uint64(k[i])
		h1 *= 1099511628211
		h2 = (h2 ^ uint64(k[i])) * 0xff51afd7ed558ccd
		h2 ^= h2 >> 29
	}
	return liveKey{h1, h2 ^ uint64(len(k))}
}

// compareChunk is how many live entries are compared under one read lock.
const compareChunk = 4096

// compare streams the target's live maps (the delta, small, read whole
// first; then the base) and compares what they route with the state, a
// chunk at a time under the state's read lock, so that the reader is never
// held up for the whole dump. The state may move on meanwhile: at the end,
// every user changed since the comparison began is looked at again
// (resendTouched: an edit to the state's value now, sent whether or not the
// live maps already hold it, as a full sync wants) or left out (a drift
// check: the target applies those changes next). The result holds at the
// state's position at the end. At most maxEdits edits are collected.
func (t *target) compare(ctx context.Context, maxEdits int, resendTouched bool) (comparison, error) {
	s := t.s
	var c comparison
	seq0, _, _ := s.state.position()
	delta := map[string]string{}
	if t.hasDelta {
		d, lines, err := t.dumpMap(ctx, shardmaps.DeltaPath(s.cfg.MapName))
		if err != nil {
			return c, err
		}
		delta, c.duplicates = d, lines != len(d)
	}
	at := map[string]int{} // user -> index in c.edits
	addEdit := func(e edit) {
		if i, ok := at[e.user]; ok {
			c.edits[i] = e
			return
		}
		if len(c.edits) >= maxEdits {
			c.overflow = true
			return
		}
		at[e.user] = len(c.edits)
		c.edits = append(c.edits, e)
	}
	hint, err := t.rt.MapEntryCount(ctx, s.cfg.MapName)
	if err != nil {
		return c, err
	}
	seen := make(map[liveKey]struct{}, max(0, hint))
	type pair struct{ k, v string }
	buf := make([]pair, 0, compareChunk)
	flush := func() {
		s.state.read(func(v view) {
			for _, p := range buf {
				h := keyOf(p.k)
				if _, dup := seen[h]; dup {
					c.duplicates = true // HAProxy serves the first; compared already
					continue
				}
				seen[h] = struct{}{}
				if _, in := delta[p.k]; in {
					continue // the delta's entry routes
				}
				want, has := v.get(p.k)
				switch {
				case !has:
					c.extra++
					c.baseDels++
					addEdit(edit{user: p.k, inBase: true})
				case want != p.v:
					c.changed++
					addEdit(edit{user: p.k, shard: want, inBase: true})
				}
			}
		})
		buf = buf[:0]
	}
	err = t.dump(ctx, s.cfg.MapName, func(k, v string) {
		buf = append(buf, pair{k, v})
		if len(buf) == compareChunk {
			flush()
		}
	})
	if err != nil {
		return c, err
	}
	flush()
	var reach bool
	s.state.read(func(v view) {
		var touched map[string]bool
		if touched, reach = v.touchedAfter(seq0); !reach {
			return
		}
		for k, cur := range delta {
			if touched[k] {
				continue
			}
			_, inBase := seen[keyOf(k)]
			want, has := v.get(k)
			switch {
			case !has:
				c.extra++
				if inBase {
					c.baseDels++
				}
				addEdit(edit{user: k, inBase: inBase, inDelta: true})
			case want != cur:
				c.changed++
				addEdit(edit{user: k, shard: want, inBase: inBase, inDelta: true})
			}
		}
		for u := range touched {
			if i, ok := at[u]; ok { // compared against an older state
				c.edits[i].user = "" // dropped below
				delete(at, u)
			}
			if !resendTouched {
				continue
			}
			_, inBase := seen[keyOf(u)]
			_, inDelta := delta[u]
			want, has := v.get(u)
			switch {
			case has:
				addEdit(edit{user: u, shard: want, inBase: inBase, inDelta: inDelta})
			case inBase || inDelta:
				if inBase {
					c.baseDels++
				}
				addEdit(edit{user: u, inBase: inBase, inDelta: inDelta})
			}
		}
		v.each(func(u, sh string) {
			if touched[u] {
				return
			}
			if _, in := seen[keyOf(u)]; in {
				return
			}
			if _, in := delta[u]; in {
				return
			}
			c.missing++
			addEdit(edit{user: u, shard: sh})
		})
		c.seq, c.gen, c.logID, c.n = v.seq(), v.gen(), v.logID(), v.len()
	})
	if !reach {
		return c, errMovedOn
	}
	kept := c.edits[:0]
	for _, e := range c.edits {
		if e.user != "" {
			kept = append(kept, e)
		}
	}
	c.edits = kept
	c.delta = make(map[string]struct{}, len(delta))
	c.liveLen = len(seen)
	c.deltaAfter = len(delta)
	for k := range delta {
		c.delta[k] = struct{}{}
		if _, in := seen[keyOf(k)]; !in {
			c.liveLen++
		}
	}
	for _, e := range c.edits {
		if _, in := delta[e.user]; !in && e.shard != "" {
			c.deltaAfter++
		}
	}
	if c.overflow { // the edits not collected could all be new delta entries
		c.deltaAfter = max(c.deltaAfter, s.cfg.DeltaMax+1)
	}
	return c, nil
}

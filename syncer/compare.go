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
	missing, extra, changed int
	duplicates              bool // a map lists a key twice
	delta                   map[string]struct{}
	liveLen                 int    // users the live maps route
	seq, gen                uint64 // the state's position and load the result holds at
	logID                   string
	n                       int // users in the state
}

// liveKey is a 128-bit hash of a user: the comparison keeps the base map's
// keys that the state does not hold only as these (16 bytes each), not as
// strings.
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

// liveSeen is the set of keys read from the live base map, kept as one bit
// per byte of the state's name arena for the keys the state holds (a name
// keeps its offset while the table is pinned: ~1.7 MB at 1M users, where a
// set of 128-bit hashes took ~35 MB), and as hashes for the others (few,
// but for a state that lost its users). A name deleted from the state
// during the comparison keeps its old offset in pinDels: if that offset was
// marked, the name is in gone, so that a name deleted and added again (at a
// new offset) is still known as read. All of it runs under the state's lock
// (read or write).
type liveSeen struct {
	table *userTable
	epoch uint64
	dels  int // pinDels read so far
	marks []uint64
	gone  map[string]struct{}
	extra map[liveKey]struct{}
	n     int  // distinct keys read
	moved bool // the state was reloaded or compacted: the marks mean nothing
}

// pinSeen pins the state's table for a comparison, at the state's seq, the
// comparison's start; release with unpinSeen.
func (st *state) pinSeen() (*liveSeen, uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	ls := &liveSeen{table: st.users, gone: map[string]struct{}{}, extra: map[liveKey]struct{}{}}
	ls.epoch, ls.dels = st.users.pin()
	ls.marks = make([]uint64, len(st.users.arena)/64+1)
	return ls, st.seq
}

func (st *state) unpinSeen(ls *liveSeen) {
	st.mu.Lock()
	defer st.mu.Unlock()
	ls.table.unpin()
}

func (ls *liveSeen) marked(off uint32) bool {
	i := int(off / 64)
	return i < len(ls.marks) && ls.marks[i]&(1<<(off%64)) != 0
}

func (ls *liveSeen) mark(off uint32) {
	i := int(off / 64)
	if i >= len(ls.marks) {
		ls.marks = append(ls.marks, make([]uint64, i+1-len(ls.marks)+len(ls.marks)/4)...)
	}
	ls.marks[i] |= 1 << (off % 64)
}

// sync checks the table is still the one pinned, and takes in the names
// deleted since the last call. false: the marks mean nothing any more.
func (ls *liveSeen) sync(v view) bool {
	t := v.st.users
	if ls.moved || t != ls.table || t.epoch != ls.epoch {
		ls.moved = true
		return false
	}
	for _, off := range t.pinDels[ls.dels:] {
		if ls.marked(off) {
			ls.gone[string(nameAt(t.arena, off))] = struct{}{}
		}
	}
	ls.dels = len(t.pinDels)
	return true
}

// has reports whether k was read; the caller called sync.
func (ls *liveSeen) has(k string) bool {
	if off, ok := ls.table.offsetOf(k); ok && ls.marked(off) {
		return true
	}
	if _, ok := ls.gone[k]; ok {
		return true
	}
	if len(ls.extra) > 0 {
		_, ok := ls.extra[keyOf(k)]
		return ok
	}
	return false
}

// add records k as read, and reports false when it was read before (a
// duplicate). The caller called sync.
func (ls *liveSeen) add(k string) bool {
	off, in := ls.table.offsetOf(k)
	if in && ls.marked(off) {
		return false
	}
	if _, ok := ls.gone[k]; ok {
		return false
	}
	var h liveKey
	if !in || len(ls.extra) > 0 {
		h = keyOf(k)
		if _, ok := ls.extra[h]; ok {
			return false
		}
	}
	if in {
		ls.mark(off)
	} else {
		ls.extra[h] = struct{}{}
	}
	ls.n++
	return true
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
// check: the target applies those changes next, and so also those changed
// since the target's position, which the live maps do not hold yet). The
// result holds at the state's position at the end. At most maxEdits edits
// are collected.
func (t *target) compare(ctx context.Context, maxEdits int, resendTouched bool) (comparison, error) {
	s := t.s
	var c comparison
	seen, seq0 := s.state.pinSeen()
	defer s.state.unpinSeen(seen)
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
	// A drift check compares only the users not changed since the target's
	// position: the set grows as the state moves, a chunk at a time, so that
	// a user changed before its chunk is compared is neither an edit nor a
	// count (enough of them made an overflow: drift).
	var changed map[string]bool
	changedTo, changedLost := min(seq0, t.seq), false
	if !resendTouched {
		changed = map[string]bool{}
	}
	type pair struct{ k, v string }
	buf := make([]pair, 0, compareChunk)
	flush := func() {
		s.state.read(func(v view) {
			if !seen.sync(v) {
				return // errMovedOn at the end
			}
			if changed != nil {
				bs, ok := v.st.after(changedTo)
				if !ok {
					changedLost = true // errMovedOn at the end
					return
				}
				for _, b := range bs {
					for _, ch := range b.changes {
						changed[b.user(ch)] = true
					}
					changedTo = b.seq
				}
			}
			for _, p := range buf {
				if !seen.add(p.k) {
					c.duplicates = true // HAProxy serves the first; compared already
					continue
				}
				if _, in := delta[p.k]; in {
					continue // the delta's entry routes
				}
				if changed[p.k] {
					continue // the target applies it next
				}
				want, has := v.get(p.k)
				switch {
				case !has:
					c.extra++
					addEdit(edit{user: p.k, inBase: true})
				case want != p.v:
					c.changed++
					addEdit(edit{user: p.k, shard: want, inBase: true})
				}
			}
		})
		buf = buf[:0]
	}
	err := t.dump(ctx, s.cfg.MapName, func(k, v string) {
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
		from := seq0
		if !resendTouched {
			from = min(from, t.seq)
		}
		if touched, reach = v.touchedAfter(from); !reach || changedLost || !seen.sync(v) {
			reach = false
			return
		}
		for k, cur := range delta {
			if touched[k] {
				continue
			}
			inBase := seen.has(k)
			want, has := v.get(k)
			switch {
			case !has:
				c.extra++
				addEdit(edit{user: k, inBase: inBase, inDelta: true})
			case want != cur:
				c.changed++
				addEdit(edit{user: k, shard: want, inBase: inBase, inDelta: true})
			}
		}
		for u := range touched {
			if i, ok := at[u]; ok { // compared against an older state
				switch { // a drift check counts it no longer
				case resendTouched:
				case c.edits[i].shard == "":
					c.extra--
				default:
					c.changed--
				}
				c.edits[i].user = "" // dropped below
				delete(at, u)
			}
			if !resendTouched {
				continue
			}
			inBase := seen.has(u)
			_, inDelta := delta[u]
			want, has := v.get(u)
			switch {
			case has:
				addEdit(edit{user: u, shard: want, inBase: inBase, inDelta: inDelta})
			case inBase || inDelta:
				addEdit(edit{user: u, inBase: inBase, inDelta: inDelta})
			}
		}
		// Every user of the state the base lacks (an untouched user was in
		// the state, at the same offset, all along).
		v.st.users.eachAt(func(name []byte, off uint32, i int32) {
			if seen.marked(off) || touched[string(name)] {
				return
			}
			if _, in := delta[string(name)]; in {
				return
			}
			c.missing++
			addEdit(edit{user: string(name), shard: v.shard(i)})
		})
		c.seq, c.gen, c.logID, c.n = v.seq(), v.gen(), v.logID(), v.len()
		c.liveLen = seen.n
		for k := range delta {
			if !seen.has(k) {
				c.liveLen++
			}
		}
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
	for k := range delta {
		c.delta[k] = struct{}{}
	}
	return c, nil
}

package syncer

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/shardmap/shardmap/maps"
)

// none is the shard index of a user with no assignment.
const none = -1

// change is one user's entry going from prev to next (shard indexes, none
// when absent) in one batch. The user's name is the batch's names[off:off+n]
// (see batch.user): a change holds no pointer, so the ring costs the garbage
// collector nothing to scan however many changes it keeps.
type change struct {
	off, n     uint32
	prev, next int32
}

// batch is a set of changes published together, at most one per user. Its
// seq is one more than the batch before it; logID is the change-log position
// the state reached with it (a drift repair keeps the position).
type batch struct {
	seq     uint64
	logID   string
	changes []change
	names   []byte  // the changes' user names, end to end; never written after publish
	times   []int64 // the millisecond time of each change-log entry read (for the apply latency)
}

// user is c's user name, a view of b.names (which is never written again).
func (b *batch) user(c change) string {
	if c.n == 0 {
		return ""
	}
	return unsafe.String(&b.names[c.off], int(c.n))
}

// ringMax bounds the changes kept for targets that lag: a target further
// behind than this reconciles its whole map instead.
const ringMax = 400_000

// state is what every target's live map must hold: the assignments in
// Redis at a change-log position, held once for all targets, compactly (a
// shard is an index into a short table of names). The reader goroutine
// (Syncer.Run) is its only writer; targets read it under the read lock, and
// follow it through the ring of recent batches.
type state struct {
	mu      sync.RWMutex
	loaded  bool
	gen     uint64 // reloads of the state
	seq     uint64 // the last batch published (or reload)
	logID   string
	users   *userTable
	shards  []string
	index   map[string]int32
	counts  []int         // users per shard index
	ring    []*batch      // recent batches, consecutive seqs, oldest first
	ringLen int           // changes held in the ring
	notify  chan struct{} // closed, and replaced, at each publish or reload

	// streaming: the reader's last read was a full one (BatchMax changes),
	// so more of the log is waiting: a bulk stream is under way.
	streaming atomic.Bool
}

func newState() *state {
	return &state{users: newUserTable(0), index: map[string]int32{}, notify: make(chan struct{}), logID: maps.ZeroID}
}

// shardIndex interns a shard name; the caller holds the write lock.
func (st *state) shardIndex(name string) int32 {
	if i, ok := st.index[name]; ok {
		return i
	}
	i := int32(len(st.shards))
	st.shards = append(st.shards, name)
	st.counts = append(st.counts, 0)
	st.index[name] = i
	return i
}

func (st *state) broadcast() {
	close(st.notify)
	st.notify = make(chan struct{})
}

// loading is a snapshot of Redis being read into the state's form, with
// shard indexes of its own until it is installed.
type loading struct {
	users *userTable
	names []string
	index map[string]int32
}

func newLoading(hint int) *loading {
	return &loading{users: newUserTable(hint), index: map[string]int32{}}
}

// add records user's shard; errTableFull when the names no longer fit.
func (l *loading) add(user, shard string) error {
	i, ok := l.index[shard]
	if !ok {
		i = int32(len(l.names))
		l.names = append(l.names, shard)
		l.index[shard] = i
	}
	_, err := l.users.put(user, i)
	return err
}

// install replaces the whole state with what l read, at logID, as reload
// does. The shard indexes are translated to the state's table outside the
// write lock but one short lock to intern the names.
func (st *state) install(l *loading, logID string) {
	st.mu.Lock()
	remap := make([]int32, len(l.names))
	for i, name := range l.names {
		remap[i] = st.shardIndex(name)
	}
	st.mu.Unlock()
	same := true
	for i, j := range remap {
		same = same && int32(i) == j
	}
	if !same {
		l.users.remap(remap)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.users = l.users
	for i := range st.counts {
		st.counts[i] = 0
	}
	st.users.each(func(_ []byte, i int32) bool {
		st.counts[i]++
		return true
	})
	st.loaded = true
	st.gen++
	st.seq++
	st.logID = logID
	st.ring, st.ringLen = nil, 0
	st.broadcast()
}

// publish applies ws (the last word per user) to the state, moving it to
// logID, and hands the effective changes to the targets. It returns how
// many entries changed. On errTableFull (a new name does not fit) nothing
// is published: the state stays where it was.
func (st *state) publish(ws []want, logID string, times []int64) (int, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	need, all := 0, 0 // the names' bytes: of the puts, and of every change
	for _, w := range ws {
		all += len(w.user)
		if w.shard != "" {
			need += len(w.user)
		}
	}
	if err := st.users.reserve(len(ws), need); err != nil {
		return 0, fmt.Errorf("publish %s: %w", logID, err)
	}
	b := &batch{seq: st.seq + 1, logID: logID, times: times, names: make([]byte, 0, all)}
	for _, w := range ws {
		next := int32(none)
		if w.shard != "" {
			next = st.shardIndex(w.shard)
		}
		var prev int32
		if next == none {
			prev = st.users.del(w.user)
		} else {
			prev, _ = st.users.put(w.user, next) // cannot fail after reserve
		}
		if prev == next {
			continue
		}
		if prev != none {
			st.counts[prev]--
		}
		if next != none {
			st.counts[next]++
		}
		b.changes = append(b.changes, change{uint32(len(b.names)), uint32(len(w.user)), prev, next})
		b.names = append(b.names, w.user...)
	}
	st.seq = b.seq
	st.logID = logID
	st.ring = append(st.ring, b)
	st.ringLen += len(b.changes)
	for len(st.ring) > 1 && (st.ringLen > ringMax || len(st.ring) > 4096) {
		st.ringLen -= len(st.ring[0].changes)
		st.ring[0] = nil
		st.ring = st.ring[1:]
	}
	st.broadcast()
	return len(b.changes), nil
}

// since returns the batches after seq, and a channel closed at the next
// publish. ok is false when seq is no longer in reach (a reload, or the
// target fell further behind than the ring holds): the target must
// reconcile its whole map.
func (st *state) since(seq uint64) (bs []*batch, ok bool, next <-chan struct{}) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	bs, ok = st.after(seq)
	// A copy: publish trims the ring in place while the target applies.
	return append([]*batch(nil), bs...), ok, st.notify
}

// after is the ring's batches after seq (none when seq is the state's), and
// false when seq is out of reach. The caller holds the lock; the slice is
// the ring's own.
func (st *state) after(seq uint64) ([]*batch, bool) {
	switch {
	case seq == st.seq:
		return nil, true
	case len(st.ring) == 0 || seq+1 < st.ring[0].seq || seq > st.seq:
		return nil, false
	}
	return st.ring[seq+1-st.ring[0].seq:], true
}

// pendingAfter counts the changes published after seq, -1 when seq is out
// of reach.
func (st *state) pendingAfter(seq uint64) int {
	st.mu.RLock()
	defer st.mu.RUnlock()
	bs, ok := st.after(seq)
	if !ok {
		return -1
	}
	n := 0
	for _, b := range bs {
		n += len(b.changes)
	}
	return n
}

// waitChan is closed at the next publish or reload.
func (st *state) waitChan() <-chan struct{} {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.notify
}

// view is the state under the read lock (see state.read).
type view struct{ st *state }

func (v view) get(user string) (string, bool) {
	i, ok := v.st.users.get(user)
	if !ok {
		return "", false
	}
	return v.st.shards[i], true
}
func (v view) len() int             { return v.st.users.len() }
func (v view) seq() uint64          { return v.st.seq }
func (v view) gen() uint64          { return v.st.gen }
func (v view) logID() string        { return v.st.logID }
func (v view) shard(i int32) string { return v.st.shards[i] }

// each calls fn for every assignment, in no order.
func (v view) each(fn func(user, shard string)) {
	v.st.users.each(func(name []byte, i int32) bool {
		fn(string(name), v.st.shards[i])
		return true
	})
}

// entries is the state now as a frozen list for a whole-map swap
// (runtime.Entries): 8 bytes per user, the names shared with the state.
func (v view) entries() *entryList { return v.st.users.entries(v.st.shards) }

// touchedAfter is the set of users changed by the batches after seq, and
// false when they are out of reach.
func (v view) touchedAfter(seq uint64) (map[string]bool, bool) {
	bs, ok := v.st.after(seq)
	if !ok || len(bs) == 0 {
		return nil, ok
	}
	t := map[string]bool{}
	for _, b := range bs {
		for _, c := range b.changes {
			t[b.user(c)] = true
		}
	}
	return t, true
}

// read runs fn with the state read-locked: keep fn short, the reader waits.
func (st *state) read(fn func(v view)) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	fn(view{st})
}

// generation counts the reloads of the state.
func (st *state) generation() uint64 {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.gen
}

// isLoaded reports whether a snapshot of Redis was loaded.
func (st *state) isLoaded() bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.loaded
}

// position is the state's seq and change-log position.
func (st *state) position() (uint64, string, int) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.seq, st.logID, st.users.len()
}

// shardCounts counts users per shard.
func (st *state) shardCounts() map[string]int {
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make(map[string]int, len(st.shards))
	for i, n := range st.counts {
		if n > 0 {
			out[st.shards[i]] = n
		}
	}
	return out
}

// mapFile is the state now as a frozen list for the map file, and its
// change-log position: sort it (outside the lock) before writing.
func (st *state) mapFile() (*entryList, string) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	return st.users.entries(st.shards), st.logID
}

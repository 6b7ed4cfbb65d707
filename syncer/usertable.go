package syncer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"math"
	"slices"
	"sort"
	"unsafe"
)

// userTable maps user names to shard indexes compactly, for the state's
// million-user maps: the names live once in one byte arena, and an
// open-addressing index (linear probing) holds 8 bytes per slot, the name's
// arena offset and its shard index. At 1M names of ~13 bytes that is ~14 MB
// of arena and 16 MB of index, against ~65 MB for a map[string]int32.
//
// The arena is append-only: a byte below len(arena) is never written again,
// so a snapshot (see entries) may keep reading names from an arena the
// table has since grown or replaced. A delete leaves its name's bytes as
// garbage; when garbage passes half of the arena (and 1 MB), the table
// compacts into a new arena, leaving the old one to its snapshots.
//
// Not safe for concurrent use; the state's lock guards it.
type userTable struct {
	arena   []byte // arena[0] is unused: offset 0 marks an empty slot; each name is a uvarint length and its bytes
	slots   []slot // len is a power of two, at most 3/4 full
	n       int    // names held
	garbage int    // arena bytes of deleted names
	seed    maphash.Seed
	// While pinned (pins > 0), names keep their offsets: deletes do not
	// compact, and the offset of each name deleted is kept in pinDels (its
	// bytes stay in the arena). epoch counts compactions, which move every
	// name (only a full 4 GiB arena compacts while pinned).
	pins    int
	pinDels []uint32
	epoch   uint64
}

// slot is one index entry: off 0 is an empty slot.
type slot struct {
	off   uint32
	shard int32
}

// maxArena bounds the arena (uint32 offsets): 4 GiB of names, over 16M
// users at the longest user name allowed (maps.MaxUserLen) and ~300M at 13
// bytes.
const maxArena = math.MaxUint32

// errTableFull: the names do not fit in maxArena bytes even compacted.
var errTableFull = errors.New("syncer: the user table is full (4 GiB of user names)")

func newUserTable(hint int) *userTable {
	t := &userTable{seed: maphash.MakeSeed()}
	t.reset(hint)
	return t
}

func (t *userTable) reset(hint int) {
	size := 8
	for size*3/4 < hint {
		size *= 2
	}
	t.slots = make([]slot, size)
	t.arena = make([]byte, 1, 1+hint*14)
	t.n, t.garbage = 0, 0
}

func (t *userTable) len() int { return t.n }

// name is the name stored at off, as a view of the arena (no copy).
func nameAt(arena []byte, off uint32) []byte {
	if n := arena[off]; n < 0x80 { // a name under 128 bytes: one length byte
		return arena[off+1 : off+1+uint32(n)]
	}
	n, w := binary.Uvarint(arena[off:])
	start := int(off) + w
	return arena[start : start+int(n)]
}

func (t *userTable) hash(name []byte) uint64 { return maphash.Bytes(t.seed, name) }

// find returns the slot holding user and whether it holds it, else the
// empty slot where user would go.
func (t *userTable) find(user string) (int, bool) {
	mask := len(t.slots) - 1
	i := int(maphash.String(t.seed, user)) & mask
	for {
		s := t.slots[i]
		if s.off == 0 {
			return i, false
		}
		if string(nameAt(t.arena, s.off)) == user {
			return i, true
		}
		i = (i + 1) & mask
	}
}

// get returns user's shard index.
func (t *userTable) get(user string) (int32, bool) {
	i, ok := t.find(user)
	if !ok {
		return none, false
	}
	return t.slots[i].shard, true
}

// put sets user's shard index and returns the previous one (none when
// absent). errTableFull when a new name does not fit.
func (t *userTable) put(user string, shard int32) (int32, error) {
	i, ok := t.find(user)
	if ok {
		prev := t.slots[i].shard
		t.slots[i].shard = shard
		return prev, nil
	}
	need := binary.MaxVarintLen64 + len(user)
	if len(t.arena)+need > maxArena {
		t.compact()
		if len(t.arena)+need > maxArena {
			return none, errTableFull
		}
	}
	if (t.n+1)*4 > len(t.slots)*3 {
		t.grow()
		i, _ = t.find(user)
	}
	off := uint32(len(t.arena))
	t.arena = binary.AppendUvarint(t.arena, uint64(len(user)))
	t.arena = append(t.arena, user...)
	t.slots[i] = slot{off: off, shard: shard}
	t.n++
	return none, nil
}

// reserve makes room for names new names of bytes bytes in all, so that
// the puts that follow cannot fail; errTableFull when they do not fit.
func (t *userTable) reserve(names, bytes int) error {
	need := names*binary.MaxVarintLen64 + bytes
	if len(t.arena)+need <= maxArena {
		return nil
	}
	t.compact()
	if len(t.arena)+need > maxArena {
		return errTableFull
	}
	return nil
}

// del removes user and returns its shard index (none when absent). The
// slots after it in its probe run shift back (no tombstones).
func (t *userTable) del(user string) int32 {
	i, ok := t.find(user)
	if !ok {
		return none
	}
	prev := t.slots[i].shard
	name := nameAt(t.arena, t.slots[i].off)
	t.garbage += len(name) + uvarintLen(len(name))
	if t.pins > 0 {
		t.pinDels = append(t.pinDels, t.slots[i].off)
	}
	mask := len(t.slots) - 1
	j := i
	for {
		j = (j + 1) & mask
		s := t.slots[j]
		if s.off == 0 {
			break
		}
		k := int(t.hash(nameAt(t.arena, s.off))) & mask
		// s may move to i when its home k is not cyclically in (i, j].
		if i <= j && (i < k && k <= j) || i > j && (i < k || k <= j) {
			continue
		}
		t.slots[i] = s
		i = j
	}
	t.slots[i] = slot{}
	t.n--
	t.maybeCompact()
	return prev
}

// maybeCompact compacts when garbage passes half the arena (and 1 MB),
// unless pinned.
func (t *userTable) maybeCompact() {
	if t.pins == 0 && t.garbage > 1<<20 && t.garbage*2 > len(t.arena) {
		t.compact()
	}
}

// pin keeps names at their offsets until unpin (see pins); it returns the
// epoch and where in pinDels the deletes from now on are listed.
func (t *userTable) pin() (epoch uint64, dels int) {
	t.pins++
	return t.epoch, len(t.pinDels)
}

func (t *userTable) unpin() {
	t.pins--
	if t.pins == 0 {
		t.pinDels = nil
		t.maybeCompact()
	}
}

// offsetOf is user's name's offset in the arena.
func (t *userTable) offsetOf(user string) (uint32, bool) {
	i, ok := t.find(user)
	return t.slots[i].off, ok
}

func uvarintLen(n int) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], uint64(n))
}

// grow doubles the index and places every name again.
func (t *userTable) grow() {
	old := t.slots
	t.slots = make([]slot, 2*len(old))
	mask := len(t.slots) - 1
	for _, s := range old {
		if s.off == 0 {
			continue
		}
		i := int(t.hash(nameAt(t.arena, s.off))) & mask
		for t.slots[i].off != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
	}
}

// compact copies the live names into a new arena, in slot order; the slots
// keep their places (a name's hash does not change). The old arena is left
// as it was, for the snapshots that read it.
func (t *userTable) compact() {
	live := len(t.arena) - t.garbage
	arena := make([]byte, 1, live+live/8+1)
	for i, s := range t.slots {
		if s.off == 0 {
			continue
		}
		name := nameAt(t.arena, s.off)
		t.slots[i].off = uint32(len(arena))
		arena = binary.AppendUvarint(arena, uint64(len(name)))
		arena = append(arena, name...)
	}
	t.arena, t.garbage = arena, 0
	t.epoch++
}

// each calls fn for every name (a view of the arena: copy it to keep it)
// and shard index, in slot order, until fn returns false.
func (t *userTable) each(fn func(name []byte, shard int32) bool) {
	for _, s := range t.slots {
		if s.off != 0 && !fn(nameAt(t.arena, s.off), s.shard) {
			return
		}
	}
}

// eachAt is each with every name's offset.
func (t *userTable) eachAt(fn func(name []byte, off uint32, shard int32)) {
	for _, s := range t.slots {
		if s.off != 0 {
			fn(nameAt(t.arena, s.off), s.off, s.shard)
		}
	}
}

// remap replaces every shard index i by to[i].
func (t *userTable) remap(to []int32) {
	for i, s := range t.slots {
		if s.off != 0 {
			t.slots[i].shard = to[s.shard]
		}
	}
}

// entries is the table's content now, in slot order, sharing the arena (8
// bytes per name): later changes to the table do not show in it.
func (t *userTable) entries(shards []string) *entryList {
	l := &entryList{arena: t.arena, ents: make([]slot, 0, t.n), shards: slices.Clone(shards)}
	for _, s := range t.slots {
		if s.off != 0 {
			l.ents = append(l.ents, s)
		}
	}
	return l
}

// entryList is a frozen list of assignments that shares its names with the
// user table it came from (see userTable.entries). It implements
// runtime.Entries and maps.MapEntries. Safe for concurrent reads.
type entryList struct {
	arena  []byte
	ents   []slot
	shards []string
}

func (l *entryList) Len() int { return len(l.ents) }

// At is the i-th user and its shard. The user string shares the arena's
// bytes, which are never written again (see userTable): it stays valid and
// unchanged as long as it is referenced.
func (l *entryList) At(i int) (user, shard string) {
	name := nameAt(l.arena, l.ents[i].off)
	return unsafe.String(unsafe.SliceData(name), len(name)), l.shards[l.ents[i].shard]
}

// sort orders the list by user name, bytewise (as strings.Compare): the
// map file's order. Comparing names in the arena costs a cache miss or two
// each, and a sort makes ~20 per entry, so each entry first gets a key: the
// 8 bytes of its name after the prefix all names share (zero-padded, big
// endian), which orders two names as their bytes do unless the keys are
// equal; only then are the names compared. The keys take 8 bytes per entry
// while the sort runs.
func (l *entryList) sort() {
	n := len(l.ents)
	if n < 2 {
		return
	}
	first := nameAt(l.arena, l.ents[0].off)
	common := len(first)
	for _, e := range l.ents[1:] {
		name := nameAt(l.arena, e.off)
		common = min(common, len(name))
		i := 0
		for i < common && name[i] == first[i] {
			i++
		}
		if common = i; common == 0 {
			break
		}
	}
	keys := make([]uint64, n)
	for i, e := range l.ents {
		name := nameAt(l.arena, e.off)[common:]
		var buf [8]byte
		copy(buf[:], name)
		keys[i] = binary.BigEndian.Uint64(buf[:])
	}
	sort.Sort(keyedEntries{l, keys})
}

// keyedEntries sorts an entry list and its keys together (see sort).
type keyedEntries struct {
	l    *entryList
	keys []uint64
}

func (k keyedEntries) Len() int { return len(k.keys) }

func (k keyedEntries) Less(i, j int) bool {
	if k.keys[i] != k.keys[j] {
		return k.keys[i] < k.keys[j]
	}
	return bytes.Compare(nameAt(k.l.arena, k.l.ents[i].off), nameAt(k.l.arena, k.l.ents[j].off)) < 0
}

func (k keyedEntries) Swap(i, j int) {
	k.keys[i], k.keys[j] = k.keys[j], k.keys[i]
	k.l.ents[i], k.l.ents[j] = k.l.ents[j], k.l.ents[i]
}

package syncer

import (
	"context"

	"fmt"
	"github.com/shardmap/shardmap/runtime"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// checkTable compares t with the oracle in every way the state reads it.
func checkTable(t *testing.T, tb *userTable, want map[string]int32) {
	t.Helper()
	if tb.len() != len(want) {
		t.Fatalf("len %d, want %d", tb.len(), len(want))
	}
	for u, sh := range want {
		if got, ok := tb.get(u); !ok || got != sh {
			t.Fatalf("get(%q) = %d, %v; want %d", u, got, ok, sh)
		}
	}
	seen := map[string]int32{}
	tb.each(func(name []byte, sh int32) bool {
		if _, dup := seen[string(name)]; dup {
			t.Fatalf("each lists %q twice", name)
		}
		seen[string(name)] = sh
		return true
	})
	if len(seen) != len(want) {
		t.Fatalf("each listed %d names, want %d", len(seen), len(want))
	}
	for u, sh := range want {
		if seen[u] != sh {
			t.Fatalf("each: %q -> %d, want %d", u, seen[u], sh)
		}
	}
	if tb.n*4 > len(tb.slots)*3 {
		t.Fatalf("index %d/%d full", tb.n, len(tb.slots))
	}
}

func TestUserTableInsertOverwriteDelete(t *testing.T) {
	tb := newUserTable(0)
	if _, ok := tb.get("alice"); ok {
		t.Fatal("empty table has alice")
	}
	if prev, err := tb.put("alice", 1); err != nil || prev != none {
		t.Fatalf("put new: %d, %v", prev, err)
	}
	if prev, _ := tb.put("alice", 2); prev != 1 {
		t.Fatalf("overwrite returned %d, want 1", prev)
	}
	before := len(tb.arena)
	tb.put("alice", 3)
	if len(tb.arena) != before {
		t.Fatal("an overwrite appended to the arena")
	}
	tb.put("bob", 0)
	checkTable(t, tb, map[string]int32{"alice": 3, "bob": 0})
	if prev := tb.del("alice"); prev != 3 {
		t.Fatalf("del returned %d, want 3", prev)
	}
	if prev := tb.del("alice"); prev != none {
		t.Fatalf("second del returned %d, want none", prev)
	}
	checkTable(t, tb, map[string]int32{"bob": 0})
	// Long names take a multi-byte length.
	long := strings.Repeat("x", 300)
	tb.put(long, 7)
	checkTable(t, tb, map[string]int32{"bob": 0, long: 7})
}

// Deleting from the middle of a probe run must keep every name after it
// findable: many names in a tiny index collide.
func TestUserTableDeleteShiftsProbeRuns(t *testing.T) {
	tb := newUserTable(0)
	want := map[string]int32{}
	for i := range 6 { // 8 slots, 6 names: long runs that wrap around
		u := fmt.Sprintf("u%d", i)
		tb.put(u, int32(i))
		want[u] = int32(i)
	}
	for i := range 6 {
		u := fmt.Sprintf("u%d", i)
		tb.del(u)
		delete(want, u)
		checkTable(t, tb, want)
	}
}

func TestUserTableCompaction(t *testing.T) {
	tb := newUserTable(0)
	want := map[string]int32{}
	for i := range 200_000 {
		u := fmt.Sprintf("user%09d", i)
		tb.put(u, int32(i%5))
		want[u] = int32(i % 5)
	}
	full := len(tb.arena)
	old := tb.entries([]string{"a", "b", "c", "d", "e"})
	compactions := 0
	for i := range 150_000 {
		u := fmt.Sprintf("user%09d", i)
		arena := tb.arena
		tb.del(u)
		delete(want, u)
		if &tb.arena[0] != &arena[0] {
			compactions++
		}
	}
	if compactions == 0 {
		t.Fatal("deleting 3/4 of the names never compacted the arena")
	}
	if len(tb.arena) >= full/2 {
		t.Fatalf("arena %d bytes after compaction, was %d with all names", len(tb.arena), full)
	}
	if tb.garbage*2 > len(tb.arena) && tb.garbage > 1<<20 {
		t.Fatalf("garbage %d of %d bytes left", tb.garbage, len(tb.arena))
	}
	checkTable(t, tb, want)
	// The list taken before still reads the old names.
	if old.Len() != 200_000 {
		t.Fatalf("old list has %d entries", old.Len())
	}
	for i := range old.Len() {
		u, sh := old.At(i)
		var n int
		if _, err := fmt.Sscanf(u, "user%09d", &n); err != nil || sh != string(rune('a'+n%5)) {
			t.Fatalf("old list entry %d: %q -> %q", i, u, sh)
		}
	}
}

// The list is sorted bytewise, as the map file wants, and is frozen: the
// table's later changes do not show in it.
func TestEntryListOrderAndSnapshot(t *testing.T) {
	tb := newUserTable(0)
	users := []string{"b", "a", "ab", "B", "zz", "a0", "~", "-x"}
	for i, u := range users {
		tb.put(u, int32(i%2))
	}
	l := tb.entries([]string{"s0", "s1"})
	tb.put("c", 1)
	tb.del("a")
	tb.put("b", 1)
	l.sort()
	var got []string
	for i := range l.Len() {
		u, sh := l.At(i)
		got = append(got, u+"="+sh)
	}
	want := []string{"-x=s1", "B=s1", "a=s1", "a0=s1", "ab=s0", "b=s0", "zz=s0", "~=s0"}
	if !slices.Equal(got, want) {
		t.Fatalf("sorted list %v, want %v", got, want)
	}
}

// Random puts and deletes against a map[string]int32, with names that
// share prefixes and collide in small indexes.
func TestUserTableRandomAgainstMap(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 99))
		tb := newUserTable(r.IntN(100))
		want := map[string]int32{}
		space := 10 + r.IntN(5000)
		for op := range 20_000 {
			u := fmt.Sprintf("u%d", r.IntN(space))
			if r.IntN(500) == 0 {
				u = strings.Repeat(u, 40) // a name past one length byte
			}
			if r.IntN(3) == 0 {
				if got, exp := tb.del(u), orNone(want, u); got != exp {
					t.Fatalf("seed %d op %d: del(%q) = %d, want %d", seed, op, u, got, exp)
				}
				delete(want, u)
				continue
			}
			sh := int32(r.IntN(40))
			got, err := tb.put(u, sh)
			if err != nil || got != orNone(want, u) {
				t.Fatalf("seed %d op %d: put(%q) = %d, %v; want %d", seed, op, u, got, err, orNone(want, u))
			}
			want[u] = sh
			if op%4000 == 0 {
				tb.compact()
				checkTable(t, tb, want)
			}
		}
		checkTable(t, tb, want)
	}
}

func orNone(m map[string]int32, u string) int32 {
	if v, ok := m[u]; ok {
		return v
	}
	return none
}

// A user the full sync read from the live map, then deleted from the state
// and added again while the dump went on, gets a new place in the state's
// arena: the comparison must still know the base map holds it, and send a
// set (an add would list the key twice in HAProxy's map).
func TestFullSyncKnowsReaddedUsersAreInTheBase(t *testing.T) {
	hash := users(20_000, "s1")
	s, st, rt, _ := newLoop(t, hash, users(20_000, "s1"))
	s.cfg.ReplaceAbove = 10_000 // edits, not a fold: the ops are what is checked
	ctx := context.Background()
	if err := s.load(ctx); err != nil {
		t.Fatal(err)
	}
	var readded []string
	for i := 0; i < 20_000; i += 97 {
		readded = append(readded, fmt.Sprintf("u%d", i))
	}
	step := func(f func(u string)) {
		for _, u := range readded {
			f(u)
		}
		_, applied, _ := s.state.position()
		changes, _, err := st.ReadLog(ctx, applied, 10_000, 0)
		if err != nil {
			t.Error(err)
		}
		if err := s.publish(changes); err != nil {
			t.Error(err)
		}
	}
	rt.midDump = func() {
		step(st.del)
		step(func(u string) { st.set(u, "s2") })
	}
	if err := s.targets[0].fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]runtime.Kind{}
	for _, ops := range rt.applied {
		for _, op := range ops {
			kinds[op.Key] = op.Kind
		}
	}
	for _, u := range readded {
		if k, ok := kinds[u]; !ok || k != runtime.Set {
			t.Fatalf("%s (in the base, deleted and added again during the dump): op %v sent=%v, want a set", u, k, ok)
		}
	}
	if !equalMaps(routes(rt), stateMap(s)) {
		t.Fatal("live map differs from the state")
	}
}

// The comparison's set of keys read: a key read twice is a duplicate
// whether the state holds it, does not, or deleted and re-added it since.
func TestLiveSeenFindsDuplicates(t *testing.T) {
	st := newState()
	pub := func(ws ...want) {
		if _, err := st.publish(ws, "1-0", nil); err != nil {
			t.Fatal(err)
		}
	}
	pub(want{"a", "s1"}, want{"b", "s1"})
	ls, _ := st.pinSeen()
	defer st.unpinSeen(ls)
	step := func(f func(v view)) {
		st.read(func(v view) {
			if !ls.sync(v) {
				t.Fatal("table moved")
			}
			f(v)
		})
	}
	step(func(view) {
		if !ls.add("a") || ls.add("a") {
			t.Fatal("a: first read not new, or second not a duplicate")
		}
		if !ls.add("ghost") || ls.add("ghost") {
			t.Fatal("ghost (not in the state): first read not new, or second not a duplicate")
		}
	})
	pub(want{"a", ""})
	pub(want{"a", "s2"}) // a new offset in the arena
	pub(want{"ghost", "s1"})
	step(func(view) {
		if !ls.has("a") || ls.add("a") {
			t.Fatal("a, deleted and re-added: not known as read")
		}
		if !ls.has("ghost") || ls.add("ghost") {
			t.Fatal("ghost, added to the state since: not known as read")
		}
		if ls.has("b") || !ls.add("b") || ls.add("b") {
			t.Fatal("b: wrong")
		}
		if ls.n != 3 {
			t.Fatalf("%d distinct keys read, want 3", ls.n)
		}
	})
}

// The sort agrees with strings.Compare on names sharing long prefixes,
// names that are prefixes of others, and names equal in their first bytes
// past the common prefix.
func TestEntryListSortMatchesStringOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, gen := range []func(i int) string{
		func(i int) string { return fmt.Sprintf("user%09d", rng.IntN(1_000_000_000)) },
		func(i int) string { return fmt.Sprintf("tenant-%d-%x", rng.IntN(3), rng.Uint64()>>uint(rng.IntN(64))) },
		func(i int) string { return strings.Repeat("a", rng.IntN(20)) + string(rune('a'+rng.IntN(3))) },
		func(i int) string { return fmt.Sprint(rng.Uint64()) },
	} {
		tb := newUserTable(0)
		seen := map[string]bool{}
		for i := 0; i < 5000; i++ {
			u := gen(i)
			if !seen[u] {
				seen[u] = true
				tb.put(u, 0)
			}
		}
		l := tb.entries([]string{"s0"})
		l.sort()
		want := slices.Sorted(maps.Keys(seen))
		got := make([]string, 0, l.Len())
		for i := range l.Len() {
			u, _ := l.At(i)
			got = append(got, u)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("sorted list differs from string order (%d names)", len(want))
		}
	}
}

func BenchmarkEntryListSort1M(b *testing.B) {
	tb := newUserTable(0)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 1_000_000; i++ {
		tb.put(fmt.Sprintf("user%09d", rng.IntN(1_000_000_000)), 0)
	}
	b.ResetTimer()
	for range b.N {
		l := tb.entries([]string{"s0"})
		l.sort()
	}
}

// Puts of 1M new names into a growing table (a bulk import of new users),
// then 1M lookups of names it holds.
func BenchmarkUserTablePut1M(b *testing.B) {
	names := make([]string, 1_000_000)
	for i := range names {
		names[i] = fmt.Sprintf("user%d", 1_000_000+i)
	}
	for b.Loop() {
		tb := newUserTable(0)
		for i, n := range names {
			tb.put(n, int32(i%4))
		}
		for _, n := range names {
			if _, ok := tb.get(n); !ok {
				b.Fatal(n)
			}
		}
	}
}

package maps

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/internal/testenv"
)

func newTestStore(t *testing.T) (*Store, *testenv.Redis) {
	r := testenv.StartRedis(t)
	return NewStore(r.Client(t), ""), r
}

// replay applies the whole change log from the start.
func replay(t *testing.T, s *Store) map[string]string {
	t.Helper()
	state := map[string]string{}
	after := ZeroID
	for {
		changes, bad, err := s.ReadLog(context.Background(), after, 1000, -1)
		if err != nil || len(bad) > 0 {
			t.Fatalf("read log: %v %v", err, bad)
		}
		if len(changes) == 0 {
			return state
		}
		for _, c := range changes {
			if c.Op == OpSet {
				state[c.User] = c.Shard
			} else {
				delete(state, c.User)
			}
		}
		after = changes[len(changes)-1].ID
	}
}

func TestStoreSetGetDel(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	id1, err := s.Set(ctx, Assignment{"alice", "shard1"})
	if err != nil {
		t.Fatal(err)
	}
	// An unchanged set logs nothing and returns the log's last ID.
	id2, err := s.Set(ctx, Assignment{"alice", "shard1"})
	if err != nil || id2 != id1 {
		t.Fatalf("unchanged set: id %s, want %s (%v)", id2, id1, err)
	}
	if sh, ok, err := s.Get(ctx, "alice"); sh != "shard1" || !ok || err != nil {
		t.Fatalf("get: %q %v %v", sh, ok, err)
	}
	id3, found, err := s.Del(ctx, "alice")
	if err != nil || !found || CompareIDs(id3, id1) <= 0 {
		t.Fatalf("del: %s %v %v", id3, found, err)
	}
	if _, found, _ := s.Del(ctx, "alice"); found {
		t.Fatal("second del found the user")
	}
	if _, ok, _ := s.Get(ctx, "alice"); ok {
		t.Fatal("deleted user still has a shard")
	}
	changes, _, err := s.ReadLog(ctx, ZeroID, 10, -1)
	if err != nil || len(changes) != 2 || changes[0].Op != OpSet || changes[1].Op != OpDel {
		t.Fatalf("log: %+v %v", changes, err)
	}
	if _, err := s.Set(ctx, Assignment{"bad user", "shard1"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad user: %v", err)
	}
}

// Every write lands in the hash and the log together, in the same order:
// replaying the log from the start gives exactly the hash, whatever the
// concurrency.
func TestStoreAtomicUnderConcurrency(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; i < 500; i++ {
				u := fmt.Sprintf("u%d", rng.IntN(50))
				var err error
				switch rng.IntN(4) {
				case 0:
					_, _, err = s.Del(ctx, u)
				case 1:
					_, err = s.SetMany(ctx, []Assignment{{u, "shard1"}, {u + "x", fmt.Sprintf("shard%d", rng.IntN(3))}})
				default:
					_, err = s.Set(ctx, Assignment{u, fmt.Sprintf("shard%d", rng.IntN(5))})
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	snap, err := s.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := replay(t, s)
	if len(got) != len(snap.Entries) || len(got) == 0 {
		t.Fatalf("replay has %d entries, hash %d", len(got), len(snap.Entries))
	}
	for u, sh := range snap.Entries {
		if got[u] != sh {
			t.Errorf("user %s: hash %s, log replay %q", u, sh, got[u])
		}
	}
}

// Redis does not roll a failed script back: the scripts must fail before
// their first write.
func TestStoreScriptFailsBeforeWriting(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	rdb := r.Client(t)
	if _, err := s.Set(ctx, Assignment{"alice", "shard1"}); err != nil {
		t.Fatal(err)
	}
	rdb.Del(ctx, s.LogKey())
	rdb.Set(ctx, s.LogKey(), "not a stream", 0)
	if _, err := s.Set(ctx, Assignment{"alice", "shard2"}); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("set with a broken log key: %v", err)
	}
	if _, _, err := s.Del(ctx, "alice"); err == nil {
		t.Fatal("del with a broken log key succeeded")
	}
	if sh, _, _ := s.Get(ctx, "alice"); sh != "shard1" {
		t.Fatalf("hash changed by a failed script: alice -> %q", sh)
	}
}

func TestStoreSkipsBadEntries(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	rdb := r.Client(t)
	rdb.HSet(ctx, s.UsersKey(), "good", "shard1", "bad user", "shard1", "u;clear map x", "shard1",
		"u2", "shard\nadd", "u3", strings.Repeat("s", 1<<20), "u\n\nclear map /x", "s", "good2", "shard2")
	var bad []BadEntry
	snap, err := s.Snapshot(ctx, func(b BadEntry) { bad = append(bad, b) })
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Entries) != 2 || snap.Entries["good"] != "shard1" || snap.Entries["good2"] != "shard2" {
		t.Fatalf("entries: %v", snap.Entries)
	}
	if snap.Skipped != 5 || len(bad) != 5 {
		t.Fatalf("skipped %d (%d reported), want 5", snap.Skipped, len(bad))
	}
	// Bad log entries are reported, not returned as changes.
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: s.LogKey(), Values: []string{"op", "set", "user", "x y", "shard", "s"}})
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: s.LogKey(), Values: []string{"op", "drop", "user", "x"}})
	changes, badLog, err := s.ReadLog(ctx, ZeroID, 10, -1)
	if err != nil || len(badLog) != 2 || len(changes) != 2 || changes[0].Op != "" || changes[1].Op != "" {
		t.Fatalf("bad log entries: changes %+v bad %v err %v", changes, badLog, err)
	}
}

func TestStoreLogHasDetectsTrim(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	id, _ := s.Set(ctx, Assignment{"a", "s1"})
	s.Set(ctx, Assignment{"b", "s1"})
	if ok, err := s.LogHas(ctx, id); !ok || err != nil {
		t.Fatalf("LogHas before trim: %v %v", ok, err)
	}
	r.Client(t).XTrimMaxLen(ctx, s.LogKey(), 1)
	if ok, err := s.LogHas(ctx, id); ok || err != nil {
		t.Fatalf("LogHas after trim: %v %v, want false", ok, err)
	}
	r.Client(t).Del(ctx, s.LogKey())
	if ok, _ := s.LogHas(ctx, id); ok {
		t.Fatal("LogHas after the log was deleted: true")
	}
}

// ZeroID is the start of the log: a reader there (it loaded an empty log)
// misses nothing while the log has lost no entry, and has a gap once its
// head was trimmed (a bulk import over MAXLEN before the reader read). An
// empty or missing log cannot tell.
func TestStoreLogHasZeroID(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	rdb := r.Client(t)
	has := func(what string, want bool) {
		t.Helper()
		if ok, err := s.LogHas(ctx, ZeroID); ok != want || err != nil {
			t.Fatalf("LogHas(ZeroID) %s: %v %v, want %v", what, ok, err, want)
		}
	}
	has("with no log", true)
	for _, u := range []string{"a", "b", "c"} {
		if _, err := s.Set(ctx, Assignment{u, "s1"}); err != nil {
			t.Fatal(err)
		}
	}
	has("with the whole log", true)
	if err := rdb.XTrimMaxLen(ctx, s.LogKey(), 2).Err(); err != nil {
		t.Fatal(err)
	}
	changes, _, err := s.ReadLog(ctx, ZeroID, 10, -1)
	if err != nil || len(changes) != 2 {
		t.Fatalf("read after the trim: %d changes, %v", len(changes), err)
	}
	has("after its head was trimmed", false)
	if err := rdb.XTrimMaxLen(ctx, s.LogKey(), 0).Err(); err != nil {
		t.Fatal(err)
	}
	has("with the log emptied", true)
}

// A reader whose ACL user predates the XINFO STREAM check gets the old
// answer for ZeroID (true), not an error that would stop it.
func TestStoreLogHasZeroIDWithoutXInfo(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	for _, u := range []string{"a", "b", "c"} {
		if _, err := s.Set(ctx, Assignment{u, "s1"}); err != nil {
			t.Fatal(err)
		}
	}
	admin := r.Client(t)
	if err := admin.XTrimMaxLen(ctx, s.LogKey(), 2).Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, "ACL", "SETUSER", "old", "on", ">pw", "resetchannels", "-@all", "+hello", "+auth", "+ping", "+xrange", "~*").Err(); err != nil {
		t.Fatal(err)
	}
	old := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.Port), Username: "old", Password: "pw", Protocol: 2})
	t.Cleanup(func() { old.Close() })
	ok, err := NewStore(old, "").LogHas(ctx, ZeroID)
	if !ok || err != nil {
		t.Fatalf("LogHas(ZeroID) without XINFO: %v %v, want true and no error", ok, err)
	}
}

func TestStoreImport(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	var as []Assignment
	for i := 0; i < 10_000; i++ {
		as = append(as, Assignment{fmt.Sprintf("user%06d", i), fmt.Sprintf("shard%d", i%6)})
	}
	var calls []int
	id, err := s.Import(ctx, as, 500, func(n int) { calls = append(calls, n) })
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Count(ctx); n != 10_000 {
		t.Fatalf("count %d", n)
	}
	if last, _ := s.LastLogID(ctx); last != id {
		t.Fatalf("import returned %s, log ends at %s", id, last)
	}
	if calls[len(calls)-1] != 10_000 {
		t.Fatalf("progress: %v", calls)
	}
}

func TestCompareIDs(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{{"1-0", "1-0", 0}, {"1-0", "1-1", -1}, {"2-0", "1-9", 1}, {"0-0", "1-0", -1}, {"10-0", "9-0", 1}} {
		if got := CompareIDs(c.a, c.b); got != c.want {
			t.Errorf("CompareIDs(%s, %s) = %d", c.a, c.b, got)
		}
	}
}

package maps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// state is the hash byte for byte (DUMP) and the log's length and last ID.
func state(t *testing.T, s *Store, rdb *redis.Client) string {
	t.Helper()
	ctx := context.Background()
	dump, err := rdb.Dump(ctx, s.UsersKey()).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	n, _ := rdb.XLen(ctx, s.LogKey()).Result()
	last, _ := s.LastLogID(ctx)
	return fmt.Sprintf("%x log %d %s", dump, n, last)
}

// A stream at the last possible ID makes every later XADD * fail: no write
// may leave the hash changed without its log entry.
func TestStoreNothingWrittenWhenLogAppendFails(t *testing.T) {
	const maxID = "18446744073709551615-18446744073709551615"
	for _, c := range []struct {
		name  string
		seed  string // the ID the log ends at
		write func(context.Context, *Store) error
	}{
		{"set", maxID, func(ctx context.Context, s *Store) error {
			_, err := s.Set(ctx, Assignment{"bob", "shard2"})
			return err
		}},
		{"set-changed", maxID, func(ctx context.Context, s *Store) error {
			_, err := s.Set(ctx, Assignment{"alice", "shard2"})
			return err
		}},
		{"setmany", maxID, func(ctx context.Context, s *Store) error {
			_, err := s.SetMany(ctx, []Assignment{{"carol", "shard1"}, {"alice", "shard2"}})
			return err
		}},
		// One ID is left: the first XADD succeeds, the second fails, the
		// first must be undone.
		{"setmany-second-fails", "18446744073709551615-18446744073709551614", func(ctx context.Context, s *Store) error {
			_, err := s.SetMany(ctx, []Assignment{{"carol", "shard1"}, {"alice", "shard2"}})
			return err
		}},
		{"del", maxID, func(ctx context.Context, s *Store) error { _, _, err := s.Del(ctx, "alice"); return err }},
		{"import", "18446744073709551615-18446744073709551614", func(ctx context.Context, s *Store) error {
			var as []Assignment
			for i := 0; i < 1200; i++ {
				as = append(as, Assignment{fmt.Sprintf("imp%d", i), "shard1"})
			}
			// One batch of two bulk entries (BulkMaxChanges and 200): the
			// first takes the last ID, the second fails, the first is undone.
			_, err := s.Import(ctx, as, 1200, nil)
			var be *BatchError
			if !errors.As(err, &be) || be.Done != 0 {
				return fmt.Errorf("want a BatchError with 0 done, got %v", err)
			}
			return err
		}},
		{"fill", "18446744073709551615-18446744073709551614", func(ctx context.Context, s *Store) error {
			_, err := s.Fill(ctx, []Assignment{{"dave", "shard1"}, {"erin", "shard1"}}, 500, nil)
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, r := newTestStore(t)
			ctx := context.Background()
			rdb := r.Client(t)
			if _, err := s.SetMany(ctx, []Assignment{{"alice", "shard1"}, {"zed", "shard0"}}); err != nil {
				t.Fatal(err)
			}
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: s.LogKey(), ID: c.seed, Values: []string{"op", "set", "user", "alice", "shard", "shard1"}}).Err(); err != nil {
				t.Fatal(err)
			}
			before := state(t, s, rdb)
			if err := c.write(ctx, s); err == nil {
				t.Fatal("write succeeded on a stream with no ID left")
			}
			if after := state(t, s, rdb); after != before {
				t.Fatalf("a failed write changed Redis:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// An import that hits maxmemory reports exactly how many assignments it
// wrote: the number in the error is HLEN's increase.
func TestStoreImportCountsExactlyOnOOM(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	rdb := r.Client(t)
	if _, err := s.Set(ctx, Assignment{"seed", "shard0"}); err != nil {
		t.Fatal(err)
	}
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	used := regexp.MustCompile(`used_memory:(\d+)`).FindStringSubmatch(info)
	if used == nil {
		t.Fatalf("no used_memory in %s", info)
	}
	base, _ := strconv.Atoi(used[1])
	if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", strconv.Itoa(base+4<<20)).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.ConfigSet(context.Background(), "maxmemory", "0") })
	var as []Assignment
	for i := 0; i < 100_000; i++ {
		as = append(as, Assignment{fmt.Sprintf("user-%08d-%s", i, strings.Repeat("x", 40)), fmt.Sprintf("shard%d", i%7)})
	}
	n0, _ := s.Count(ctx)
	_, err = s.Import(ctx, as, 500, nil)
	if err == nil {
		t.Fatal("import of 100000 under a 4 MB maxmemory succeeded")
	}
	n1, _ := s.Count(ctx)
	m := regexp.MustCompile(`(\d+) of 100000`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error does not say how many were written: %v", err)
	}
	if got, _ := strconv.Atoi(m[1]); int64(got) != n1-n0 {
		t.Fatalf("error says %d written, HLEN grew by %d: %v", got, n1-n0, err)
	}
	var be *BatchError
	if !errors.As(err, &be) || int64(be.Done) != n1-n0 || !redis.IsOOMError(be.Err) {
		t.Fatalf("want a BatchError with Done %d wrapping an OOM error: %#v", n1-n0, err)
	}
	t.Logf("%v (HLEN +%d)", err, n1-n0)
}

// Fill writes only what Redis lacks, logs each write, and names the users it
// left alone.
func TestStoreFill(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	if _, err := s.SetMany(ctx, []Assignment{{"u1", "shard1"}, {"u5", "shard3"}}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.LastLogID(ctx)
	var as []Assignment
	for i := 0; i < 1200; i++ {
		as = append(as, Assignment{fmt.Sprintf("u%d", i), "shard1"})
	}
	res, err := s.Fill(ctx, as, 500, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Written != 1198 || res.Same != 1 || len(res.Conflicts) != 1 || res.Conflicts[0] != (Conflict{"u5", "shard3", "shard1"}) {
		t.Fatalf("fill: %+v", res)
	}
	if sh, _, _ := s.Get(ctx, "u5"); sh != "shard3" {
		t.Fatalf("fill overwrote u5: %s", sh)
	}
	if last, _ := s.LastLogID(ctx); last != res.LogID || CompareIDs(last, before) <= 0 {
		t.Fatalf("fill returned %s, log at %s", res.LogID, last)
	}
	snap, _ := s.Snapshot(ctx, nil)
	got := replay(t, s)
	if len(got) != 1200 || len(snap.Entries) != 1200 {
		t.Fatalf("replay %d, hash %d", len(got), len(snap.Entries))
	}
	for u, sh := range snap.Entries {
		if got[u] != sh {
			t.Fatalf("user %s: hash %s, replay %s", u, sh, got[u])
		}
	}
	// Nothing left to fill: nothing logged, the last ID returned.
	res2, err := s.Fill(ctx, as[:10], 500, nil)
	if err != nil || res2.Written != 0 || res2.LogID != res.LogID {
		t.Fatalf("second fill: %+v %v", res2, err)
	}
}

func TestStoreAddShardsWrongType(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	r.Client(t).Set(ctx, s.ShardsKey(), "oops", 0)
	err := s.AddShards(ctx, []string{"shard1"})
	if !errors.Is(err, ErrWrongType) || !strings.Contains(err.Error(), s.ShardsKey()) {
		t.Fatalf("AddShards on a string key: %v, want ErrWrongType naming the key", err)
	}
	if _, err := s.KnownShard(ctx, "shard1"); !errors.Is(err, ErrWrongType) {
		t.Fatalf("KnownShard: %v", err)
	}
	r.Client(t).Del(ctx, s.ShardsKey())
	if err := s.AddShards(ctx, []string{"shard1"}); err != nil {
		t.Fatal(err)
	}
}

func TestSyncerStateOldJSONAndPrune(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	rdb := r.Client(t)
	now := time.Now()
	old := fmt.Sprintf(`{"applied":"1-0","seen":%q,"map":"/m","entries":3,"ready":true}`, now.Add(-time.Hour).Format(time.RFC3339Nano))
	rdb.HSet(ctx, s.SyncersKey(), "old", old, "junk", "{not json")
	if err := s.ReportSyncer(ctx, SyncerState{Name: "live", Applied: "2-0", Seen: now, Ready: true, Instance: "abc", Standby: true}); err != nil {
		t.Fatal(err)
	}
	all, err := s.Syncers(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("syncers: %+v %v", all, err)
	}
	if all[2].Name != "old" || all[2].Applied != "1-0" || !all[2].Ready || all[2].Instance != "" || all[2].Standby {
		t.Fatalf("old JSON: %+v", all[2])
	}
	if all[1].Name != "live" || all[1].Instance != "abc" || !all[1].Standby {
		t.Fatalf("new fields: %+v", all[1])
	}
	if all[0].Name != "junk" || !strings.Contains(all[0].Problem, "unreadable") {
		t.Fatalf("junk: %+v", all[0])
	}
	if _, err := s.PruneSyncers(ctx, now, time.Second); !errors.Is(err, ErrInvalid) {
		t.Fatalf("prune below the live window: %v", err)
	}
	pruned, err := s.PruneSyncers(ctx, now, LiveWithin)
	if err != nil || strings.Join(pruned, ",") != "junk,old" {
		t.Fatalf("pruned %v %v", pruned, err)
	}
	if all, _ := s.Syncers(ctx); len(all) != 1 || all[0].Name != "live" {
		t.Fatalf("after prune: %+v", all)
	}
	// A syncer that reported after being read is kept.
	b, _ := json.Marshal(SyncerState{Seen: now.Add(-time.Hour)})
	rdb.HSet(ctx, s.SyncersKey(), "back", b)
	if n, err := pruneScript.Run(ctx, rdb, []string{s.SyncersKey()}, "back", "some older value").Int(); n != 0 || err != nil {
		t.Fatalf("compare-and-delete deleted a changed value: %d %v", n, err)
	}
}

func TestStoreLagAfter(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	if lag, err := s.LagAfter(ctx, ""); err != nil || lag.Behind {
		t.Fatalf("empty log: %+v %v", lag, err)
	}
	// An entry one minute old by Redis's clock.
	now, err := s.Now(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := fmt.Sprintf("%d-0", now.Add(-time.Minute).UnixMilli())
	r.Client(t).XAdd(ctx, &redis.XAddArgs{Stream: s.LogKey(), ID: old, Values: []string{"op", "del", "user", "x"}})
	id, _ := s.Set(ctx, Assignment{"a", "s1"})
	lag, err := s.LagAfter(ctx, ZeroID)
	if err != nil || !lag.Behind || lag.Oldest != old || lag.Age < time.Minute {
		t.Fatalf("lag after 0-0: %+v %v", lag, err)
	}
	if lag, err := s.LagAfter(ctx, old); err != nil || !lag.Behind || lag.Oldest != id || lag.Age > time.Minute {
		t.Fatalf("lag after %s: %+v %v", old, lag, err)
	}
	if lag, err := s.LagAfter(ctx, id); err != nil || lag.Behind {
		t.Fatalf("lag at the end: %+v %v", lag, err)
	}
	if _, err := s.LagAfter(ctx, "garbage"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad id: %v", err)
	}
}

package maps

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// bulkAs is n assignments over three shards.
func bulkAs(prefix string, n int) []Assignment {
	as := make([]Assignment, n)
	for i := range as {
		as[i] = Assignment{fmt.Sprintf("%s%06d", prefix, i), fmt.Sprintf("shard%d", i%3)}
	}
	return as
}

// An import is logged as bulk entries, and every reader of the log sees each
// of its sets, in order, as an ordinary change.
func TestBulkImportRoundTrip(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	rdb := r.Client(t)
	as := bulkAs("u", 2500)
	last, err := s.Import(ctx, as, 2500, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := rdb.XLen(ctx, s.LogKey()).Val(); n != 3 {
		t.Fatalf("log holds %d entries for a batch of 2500, want 3 bulk entries (1000, 1000, 500)", n)
	}
	changes, bad, err := s.ReadLog(ctx, ZeroID, 100_000, -1)
	if err != nil || len(bad) != 0 {
		t.Fatalf("read: %v %v", err, bad)
	}
	if len(changes) != len(as) {
		t.Fatalf("read %d changes, want %d", len(changes), len(as))
	}
	for i, c := range changes {
		if c.Op != OpSet || c.User != as[i].User || c.Shard != as[i].Shard {
			t.Fatalf("change %d: %+v, want set %v", i, c, as[i])
		}
	}
	if changes[len(changes)-1].ID != last {
		t.Fatalf("last change ID %s, Import returned %s", changes[len(changes)-1].ID, last)
	}
	if got := replay(t, s); len(got) != len(as) || got["u002499"] != "shard0" {
		t.Fatalf("replay: %d users, u002499=%q", len(got), got["u002499"])
	}
	recent, _, err := s.RecentChanges(ctx, 3)
	if err != nil || len(recent) != 3 || recent[0].User != "u002499" || recent[2].User != "u002497" {
		t.Fatalf("recent 3: %+v %v, want u002499, u002498, u002497", recent, err)
	}
	if n, err := s.CountAfter(ctx, ZeroID, 100_000); n != 2500 || err != nil {
		t.Fatalf("count after the start: %d %v, want 2500 changes", n, err)
	}
	if n, err := s.CountAfter(ctx, ZeroID, 1200); n != 1200 || err != nil {
		t.Fatalf("count capped at 1200: %d %v", n, err)
	}
	users, err := s.UsersChangedAfter(ctx, ZeroID, last, 10_000)
	if err != nil || len(users) != 2500 || !users["u001234"] {
		t.Fatalf("users changed: %d %v", len(users), err)
	}
	if _, err := s.UsersChangedAfter(ctx, ZeroID, last, 2499); err == nil {
		t.Fatal("2500 changes under a limit of 2499: want an error")
	}
	// A batch under BulkMin logs one entry per change, as before.
	if _, err := s.Import(ctx, bulkAs("small", BulkMin-1), 500, nil); err != nil {
		t.Fatal(err)
	}
	if n := rdb.XLen(ctx, s.LogKey()).Val(); n != 3+BulkMin-1 {
		t.Fatalf("log holds %d entries, want %d", n, 3+BulkMin-1)
	}
}

// A bulk entry stays within its bounds whatever the users' length.
func TestBulkEntryBounds(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	as := make([]Assignment, 700)
	for i := range as {
		as[i] = Assignment{fmt.Sprintf("%0250d", i), "shard1"}
	}
	if _, err := s.Import(ctx, as, 700, nil); err != nil {
		t.Fatal(err)
	}
	msgs := r.Client(t).XRange(ctx, s.LogKey(), "-", "+").Val()
	if len(msgs) < 3 {
		t.Fatalf("%d entries for 700 users of 250 bytes, want at least 3 (%d bytes each at most)", len(msgs), BulkMaxBytes)
	}
	total := 0
	for _, m := range msgs {
		sets, _ := m.Values["sets"].(string)
		if len(sets) > BulkMaxBytes+MaxUserLen+8 {
			t.Errorf("entry %s: %d bytes of sets", m.ID, len(sets))
		}
		changes, bad := parseChanges([]redis.XMessage{m}, nil, nil)
		if len(bad) != 0 {
			t.Fatalf("entry %s: %v", m.ID, bad)
		}
		total += len(changes)
	}
	if total != 700 {
		t.Fatalf("%d changes in the entries, want 700", total)
	}
}

// ReadLog bounds what it returns in changes, and never splits a bulk entry.
func TestReadLogNeverSplitsBulk(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	for i := range 3 {
		if _, err := s.Set(ctx, Assignment{fmt.Sprint("a", i), "shard1"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Import(ctx, bulkAs("b", 1000), 1000, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := s.Set(ctx, Assignment{fmt.Sprint("c", i), "shard1"}); err != nil {
			t.Fatal(err)
		}
	}
	var sizes []int
	for after := ZeroID; ; {
		changes, _, err := s.ReadLog(ctx, after, 10, -1)
		if err != nil {
			t.Fatal(err)
		}
		if len(changes) == 0 {
			break
		}
		sizes = append(sizes, len(changes))
		after = changes[len(changes)-1].ID
	}
	if fmt.Sprint(sizes) != "[3 1000 2]" {
		t.Fatalf("reads of at most 10 changes returned %v, want [3 1000 2]: the singles, the bulk entry whole, the singles", sizes)
	}
}

// A malformed bulk entry is reported bad, returned by its ID alone, and the
// reader goes on past it.
func TestMalformedBulkEntry(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	rdb := r.Client(t)
	add := func(vals ...string) string {
		t.Helper()
		id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: s.LogKey(), Values: vals}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	good := encodeBulk([]Assignment{{"g1", "shard1"}, {"g2", "shard2"}})[0]
	add("op", "bulk", "n", good.n, "shards", good.shards, "sets", good.sets)
	bads := [][]string{
		{"op", "bulk", "n", "3", "shards", "shard1", "sets", "x 0\ny 0"},                         // n says 3, holds 2
		{"op", "bulk", "n", "1", "shards", "shard1", "sets", "x 0\ny 0"},                         // more than n
		{"op", "bulk", "n", "1", "shards", "shard1", "sets", "x 1"},                              // index out of range
		{"op", "bulk", "n", "1", "shards", "shard1", "sets", "x -0"},                             // not a plain index
		{"op", "bulk", "n", "1", "shards", "shard1", "sets", "x"},                                // no index
		{"op", "bulk", "n", "1", "shards", "shard1  shard2", "sets", "x 0"},                      // an empty shard name
		{"op", "bulk", "n", "1", "shards", "sh/rd", "sets", "x 0"},                               // a bad shard
		{"op", "bulk", "n", "1", "shards", "shard1", "sets", "#x 0"},                             // a bad user
		{"op", "bulk", "n", "0", "shards", "shard1", "sets", ""},                                 // n out of range
		{"op", "bulk", "n", "1001", "shards", "shard1", "sets", "x 0"},                           // n out of range
		{"op", "bulk", "shards", "shard1", "sets", "x 0"},                                        // no n
		{"op", "bulk", "n", "1", "shards", "shard1", "sets", strings.Repeat("x", 70_000) + " 0"}, // too big
	}
	var badIDs []string
	for _, b := range bads {
		badIDs = append(badIDs, add(b...))
	}
	if _, err := s.Set(ctx, Assignment{"after", "shard0"}); err != nil {
		t.Fatal(err)
	}
	changes, bad, err := s.ReadLog(ctx, ZeroID, 1000, -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) != len(bads) {
		t.Fatalf("%d bad entries reported, want %d: %v", len(bad), len(bads), bad)
	}
	for i, b := range bad {
		if !errors.Is(b.Err, ErrInvalid) || !strings.Contains(b.Err.Error(), badIDs[i]) {
			t.Errorf("bad %d: %v, want ErrInvalid naming %s", i, b.Err, badIDs[i])
		}
	}
	if len(changes) != 2+len(bads)+1 {
		t.Fatalf("%d changes, want 2 good, %d bad by ID, 1 after: %+v", len(changes), len(bads), changes)
	}
	for i, id := range badIDs {
		if c := changes[2+i]; c.ID != id || c.Op != "" || c.User != "" {
			t.Errorf("change for bad entry %s: %+v, want its ID alone", id, c)
		}
	}
	if c := changes[len(changes)-1]; c.User != "after" || c.Op != OpSet {
		t.Fatalf("the reader stopped at a bad entry: last change %+v", c)
	}
	if changes[0].User != "g1" || changes[1].Shard != "shard2" {
		t.Fatalf("the good bulk entry: %+v %+v", changes[0], changes[1])
	}
}

// Imports and single sets and deletes running at once: the log, replayed,
// is the hash (each chunk is atomic and ordered with the others' writes).
func TestBulkImportOrderedWithConcurrentWrites(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	as := bulkAs("u", 20_000)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, err := s.Import(ctx, as, 500, nil)
		errs <- err
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 2000; i++ {
			u := as[(i*7919)%len(as)].User
			var err error
			if i%5 == 4 {
				_, _, err = s.Del(ctx, u)
			} else {
				_, err = s.Set(ctx, Assignment{u, "shard9"})
			}
			if err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	hash := r.Client(t).HGetAll(ctx, s.UsersKey()).Val()
	log := replay(t, s)
	if len(hash) != len(log) {
		t.Fatalf("hash %d users, log replayed %d", len(hash), len(log))
	}
	for u, sh := range hash {
		if log[u] != sh {
			t.Fatalf("user %s: hash %q, log %q", u, sh, log[u])
		}
	}
}

// The log is capped at about MAXLEN changes, not MAXLEN bulk entries of up
// to BulkMaxChanges each.
func TestBulkLogTrimmedByChanges(t *testing.T) {
	s, r := newTestStore(t)
	s.maxLen = 5000
	ctx := context.Background()
	if _, err := s.Import(ctx, bulkAs("u", 20*400), 20, nil); err != nil { // 400 entries of 20
		t.Fatal(err)
	}
	// 5000 changes in entries of 20: about 250 entries (MAXLEN ~ trims
	// whole stream nodes of 100 entries).
	if n := r.Client(t).XLen(ctx, s.LogKey()).Val(); n < 250 || n > 350 {
		t.Fatalf("log holds %d entries of 20 changes with MAXLEN 5000, want about 250", n)
	}
}

// ReadLog of 10,000 changes (the syncer's batch) from a log of bulk entries
// reads about the entries it returns, not a page of a thousand.
func TestReadLogDoesNotOverreadBulk(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	if _, err := s.Import(ctx, bulkAs("u", 100_000), 1000, nil); err != nil { // 100 entries of ~11 KB
		t.Fatal(err)
	}
	rdb := r.Client(t)
	out := func() int64 {
		info := rdb.Info(ctx, "stats").Val()
		var n int64
		for _, l := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(l, "total_net_output_bytes:"); ok {
				fmt.Sscan(v, &n)
			}
		}
		return n
	}
	before := out()
	changes, _, err := s.ReadLog(ctx, ZeroID, 10_000, -1)
	if err != nil || len(changes) != 10_000 {
		t.Fatalf("read: %d changes, %v; want 10 entries whole", len(changes), err)
	}
	if sent := out() - before; sent > 400_000 {
		t.Fatalf("Redis sent %d bytes for 10 entries of ~11 KB", sent)
	}
}

package maps

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestRecentChangesNewestFirst(t *testing.T) {
	s, r := newTestStore(t)
	ctx := context.Background()
	if got, bad, err := s.RecentChanges(ctx, 5); err != nil || len(got) != 0 || len(bad) != 0 {
		t.Fatalf("empty log: %v %v %v", got, bad, err)
	}
	for i := range 4 {
		if _, err := s.Set(ctx, Assignment{fmt.Sprint("u", i), "shard1"}); err != nil {
			t.Fatal(err)
		}
	}
	last, _, err := s.Del(ctx, "u0")
	if err != nil {
		t.Fatal(err)
	}
	// A hand-written bad entry is shown by its ID and reported.
	badID, err := r.Client(t).XAdd(ctx, &redis.XAddArgs{Stream: s.LogKey(), Values: []string{"op", "nuke", "user", "x"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	got, bad, err := s.RecentChanges(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].ID != badID || got[0].Op != "" || got[1].ID != last || got[1].Op != OpDel || got[1].User != "u0" ||
		got[2].Op != OpSet || got[2].User != "u3" || got[2].Shard != "shard1" {
		t.Fatalf("recent 3: %+v, want the bad entry %s, del u0 %s, set u3", got, badID, last)
	}
	if len(bad) != 1 || !errors.Is(bad[0].Err, ErrInvalid) {
		t.Fatalf("bad: %v, want the one invalid entry", bad)
	}
	if all, _, _ := s.RecentChanges(ctx, MaxRecent); len(all) != 6 {
		t.Fatalf("recent %d: %d entries, want all 6", MaxRecent, len(all))
	}
	for _, n := range []int{0, -1, MaxRecent + 1} {
		if _, _, err := s.RecentChanges(ctx, n); !errors.Is(err, ErrInvalid) {
			t.Errorf("n=%d: %v, want ErrInvalid", n, err)
		}
	}
}

func TestCountAfter(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	if n, err := s.CountAfter(ctx, ZeroID, 10); n != 0 || err != nil {
		t.Fatalf("empty log: %d %v", n, err)
	}
	var ids []string
	for i := range 5 {
		id, err := s.Set(ctx, Assignment{fmt.Sprint("u", i), "shard1"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, c := range []struct {
		id    string
		limit int64
		want  int64
	}{{ZeroID, 10, 5}, {"", 10, 5}, {ids[0], 10, 4}, {ids[3], 10, 1}, {ids[4], 10, 0}, {ZeroID, 3, 3}} {
		if n, err := s.CountAfter(ctx, c.id, c.limit); n != c.want || err != nil {
			t.Errorf("CountAfter(%s, %d) = %d %v, want %d", c.id, c.limit, n, err, c.want)
		}
	}
	for _, c := range []struct {
		id    string
		limit int64
	}{{"x", 10}, {"1-2-3", 10}, {ZeroID, 0}, {ZeroID, 100_001}} {
		if _, err := s.CountAfter(ctx, c.id, c.limit); !errors.Is(err, ErrInvalid) {
			t.Errorf("CountAfter(%q, %d): %v, want ErrInvalid", c.id, c.limit, err)
		}
	}
}

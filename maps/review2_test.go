package maps

import (
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// A hostile bulk entry whose shards field is megabytes of separators (each
// would be one string header, 16 bytes, in a split) is refused without
// allocating a multiple of its size: an entry of n sets names at most n
// shards, so the parser counts before it splits.
func TestBulkEntryManyShardsIsBounded(t *testing.T) {
	const size = 8 << 20
	m := redis.XMessage{ID: "1-1", Values: map[string]any{"op": "bulk", "n": "1", "shards": strings.Repeat(" ", size), "sets": "x 0"}}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	changes, bad := parseChanges([]redis.XMessage{m}, nil, nil)
	runtime.ReadMemStats(&after)
	if len(bad) != 1 || !errors.Is(bad[0].Err, ErrInvalid) || len(changes) != 1 || changes[0].Op != "" {
		t.Fatalf("want the entry reported bad (ErrInvalid) and returned by its ID alone: changes %+v, bad %v", changes, bad)
	}
	if len(bad[0].Err.Error()) > 1000 {
		t.Errorf("the error is %d bytes long: it should name the rule, not echo the input", len(bad[0].Err.Error()))
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > size {
		t.Fatalf("parsing a %d-byte shards field allocated %d bytes", size, got)
	}
}

// A bad n is named in the error, not echoed whole: the skipped entry is
// logged, and a hostile megabyte n would be a megabyte log line.
func TestBulkEntryHugeNIsNotEchoed(t *testing.T) {
	m := redis.XMessage{ID: "1-1", Values: map[string]any{"op": "bulk", "n": strings.Repeat("9", 1<<20), "shards": "s1", "sets": "x 0"}}
	_, bad := parseChanges([]redis.XMessage{m}, nil, nil)
	if len(bad) != 1 || !errors.Is(bad[0].Err, ErrInvalid) {
		t.Fatalf("want one ErrInvalid, got %v", bad)
	}
	if n := len(bad[0].Err.Error()); n > 1000 {
		t.Fatalf("the error is %d bytes long: it should name the rule, not echo the input", n)
	}
}

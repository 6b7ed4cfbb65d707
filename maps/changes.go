package maps

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// MaxRecent bounds RecentChanges' n: the call is for a status page, not
// for reading the log (use ReadLog).
const MaxRecent = 1000

// RecentChanges returns the newest n change-log entries, newest first
// (XREVRANGE), for display. An entry that fails validation is returned with
// only its ID set (Op empty) and reported in bad, as ReadLog does. n must be
// from 1 to MaxRecent, else ErrInvalid.
func (s *Store) RecentChanges(ctx context.Context, n int) (changes []Change, bad []BadEntry, err error) {
	if n < 1 || n > MaxRecent {
		return nil, nil, fmt.Errorf("%w: recent changes n=%d: want 1 to %d", ErrInvalid, n, MaxRecent)
	}
	msgs, err := s.rdb.XRevRangeN(ctx, s.LogKey(), "+", "-", int64(n)).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("redis read the last %d of %s: %w", n, s.LogKey(), err)
	}
	changes, bad = parseChanges(msgs, nil, nil)
	return changes, bad, nil
}

// countAfterScript counts up to ARGV[2] entries after ARGV[1] inside Redis,
// so that only a number crosses the network.
var countAfterScript = redis.NewScript(`
local r = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return #r
`)

// CountAfter returns how many change-log entries follow id (ZeroID or ""
// for the whole log), counting at most limit (1 to 100,000): a reader's lag
// in entries, capped. It costs Redis O(limit) when the reader is far
// behind, O(1) when it is caught up. An id that is not a stream ID, or a
// limit out of range, is an ErrInvalid.
func (s *Store) CountAfter(ctx context.Context, id string, limit int64) (int64, error) {
	if id == "" {
		id = ZeroID
	}
	if _, _, ok := ParseID(id); !ok {
		return 0, fmt.Errorf("%w: change-log id %q: want MS-SEQ", ErrInvalid, id)
	}
	if limit < 1 || limit > 100_000 {
		return 0, fmt.Errorf("%w: count limit %d: want 1 to 100000", ErrInvalid, limit)
	}
	n, err := countAfterScript.Run(ctx, s.rdb, []string{s.LogKey()}, id, limit).Int64()
	if err != nil {
		return 0, fmt.Errorf("redis count %s after %s: %w", s.LogKey(), id, err)
	}
	return n, nil
}

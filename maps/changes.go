package maps

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Bulk entries. A store script that writes BulkMin or more assignments in
// one call (Import, Fill, a big SetMany), and no delete, logs them as bulk
// change-log entries rather than one entry per user: one XADD per chunk is
// what lets a 1M import run in seconds (Redis spent most of an import in
// XADD). An entry holds up to BulkMaxChanges sets and at most BulkMaxBytes
// of lines plus one line (one user of up to MaxUserLen bytes), in order:
//
//	op     bulk
//	n      the number of sets (1..BulkMaxChanges)
//	shards the shards the entry names, separated by one space
//	sets   "USER INDEX" lines separated by "\n"; INDEX (from 0) picks the
//	       shard in shards
//
// A bulk entry is written by the same atomic script as the hash, so it is
// ordered with every other change and its sets are all applied or none.
// Every reader of the log (ReadLog, RecentChanges, UsersChangedAfter) goes
// through the one parser, which expands it into ordinary OpSet changes that
// all carry the entry's ID: a reader's position is still an entry ID, and
// ReadLog never splits an entry. An entry that breaks any rule above is
// reported bad as a whole, and the reader moves past it.
//
// Upgrade note: a syncer older than bulk entries reports them as invalid and
// skips them (its drift check repairs the map later): upgrade the syncers
// before mapctl.
const (
	BulkMin        = 16
	BulkMaxChanges = 1000
	BulkMaxBytes   = 64 << 10
)

// OpBulk is the op field of a bulk entry; it is never a Change's Op.
const OpBulk Op = "bulk"

// readPage is the most entries one XREAD or XRANGE of the log asks for;
// firstPage is what ReadLog asks for first.
const (
	readPage  = 1000
	firstPage = 16
)

// MaxRecent bounds RecentChanges' n: the call is for a status page, not
// for reading the log (use ReadLog).
const MaxRecent = 1000

// ReadLog returns the changes of the log entries after id, at most count
// changes (count < 1: 1), waiting up to block for the first entry (block <
// 0: no wait); none and no error when the wait ran out. It never splits a
// bulk entry: the changes returned end at an entry's end, and the first
// entry is returned whole even when it holds more than count. An entry that
// fails validation is reported in bad, and is also returned in changes as
// a Change with only its ID set (Op empty), so the reader can move past it:
// a caller must apply only changes whose Op is OpSet or OpDel, and resume
// after the last change's ID.
func (s *Store) ReadLog(ctx context.Context, after string, count int64, block time.Duration) (changes []Change, bad []BadEntry, err error) {
	count = max(count, 1)
	// A first page of a few entries: one bulk entry may hold a thousand
	// changes, and reading a page of them to return a few would transfer
	// megabytes for nothing. The next pages are sized on what came.
	page := min(count, firstPage)
	streams, err := s.rdb.XRead(ctx, &redis.XReadArgs{
		Streams: []string{s.LogKey(), after},
		Count:   page,
		Block:   block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("redis read %s after %s: %w", s.LogKey(), after, err)
	}
	var msgs []redis.XMessage
	for _, st := range streams {
		msgs = append(msgs, st.Messages...)
	}
	for len(msgs) > 0 {
		before := len(changes)
		var cut bool
		changes, bad, cut = expand(msgs, changes, bad, int(count))
		if cut || int64(len(msgs)) < page || int64(len(changes)) >= count {
			return changes, bad, nil
		}
		// More may follow: size the next page on this one's changes per
		// entry, so that a run of bulk entries is not read far past count.
		per := max(1, (len(changes)-before+len(msgs)-1)/len(msgs))
		page = min(readPage, max(1, (count-int64(len(changes)))/int64(per)))
		last := changes[len(changes)-1].ID
		msgs, err = s.rdb.XRangeN(ctx, s.LogKey(), "("+last, "+", page).Result()
		if err != nil {
			return nil, nil, fmt.Errorf("redis read %s after %s: %w", s.LogKey(), last, err)
		}
	}
	return changes, bad, nil
}

// expand appends the changes of msgs, in order, while they fit in limit
// changes; the first entry always goes in. cut reports that an entry was
// left out.
func expand(msgs []redis.XMessage, changes []Change, bad []BadEntry, limit int) ([]Change, []BadEntry, bool) {
	for i, m := range msgs {
		start, nbad := len(changes), len(bad)
		changes, bad = parseEntry(m, changes, bad)
		if start > 0 && len(changes) > limit {
			return changes[:start], bad[:nbad], i < len(msgs)
		}
	}
	return changes, bad, false
}

// parseChanges appends msgs to changes as log entries, expanding bulk
// entries; an entry that fails validation goes to bad and keeps only its ID
// in changes, so that a reader moves past it.
func parseChanges(msgs []redis.XMessage, changes []Change, bad []BadEntry) ([]Change, []BadEntry) {
	for _, m := range msgs {
		changes, bad = parseEntry(m, changes, bad)
	}
	return changes, bad
}

// parseEntry appends the changes of one log entry (one, or a bulk entry's
// sets), or, when it fails validation, a Change with only its ID and a bad
// entry.
func parseEntry(m redis.XMessage, changes []Change, bad []BadEntry) ([]Change, []BadEntry) {
	start := len(changes)
	var err error
	var user string
	if op, _ := m.Values["op"].(string); Op(op) == OpBulk {
		changes, err = parseBulk(m, changes)
	} else {
		var c Change
		c, err = parseChange(m)
		user = c.User
		if err == nil {
			changes = append(changes, c)
		}
	}
	if err != nil {
		bad = append(bad, BadEntry{User: user, Err: fmt.Errorf("log entry %s: %w", m.ID, err)})
		changes = append(changes[:start], Change{ID: m.ID})
	}
	return changes, bad
}

func parseChange(m redis.XMessage) (Change, error) {
	str := func(k string) string { v, _ := m.Values[k].(string); return v }
	c := Change{ID: m.ID, Op: Op(str("op")), User: str("user"), Shard: str("shard")}
	switch c.Op {
	case OpSet:
		if err := (Assignment{c.User, c.Shard}).Validate(); err != nil {
			return c, err
		}
	case OpDel:
		if err := ValidateUser(c.User); err != nil {
			return c, err
		}
	default:
		return c, fmt.Errorf("%w: unknown op %q", ErrInvalid, c.Op)
	}
	return c, nil
}

// bulkRule states the bulk entry's form in error messages.
const bulkRule = "a bulk entry has n (1..1000), shards (names separated by one space) and sets (\"USER INDEX\" lines)"

// parseBulk appends the sets of bulk entry m to changes, or returns an
// error naming the rule it broke (and changes as it may have grown: the
// caller cuts it).
func parseBulk(m redis.XMessage, changes []Change) ([]Change, error) {
	str := func(k string) string { v, _ := m.Values[k].(string); return v }
	n, err := strconv.Atoi(str("n"))
	if err != nil || n < 1 || n > BulkMaxChanges {
		return changes, fmt.Errorf("%w: bulk entry n %.20q: %s", ErrInvalid, str("n"), bulkRule)
	}
	sets := str("sets")
	if len(sets) > BulkMaxBytes+MaxUserLen+8 {
		return changes, fmt.Errorf("%w: bulk entry of %d bytes of sets: at most %d", ErrInvalid, len(sets), BulkMaxBytes+MaxUserLen+8)
	}
	// At most n shards: count before splitting, since a split of a hostile
	// field of separators costs a string header (16 bytes) per byte.
	if k := strings.Count(str("shards"), " ") + 1; k > n {
		return changes, fmt.Errorf("%w: bulk entry names %d shards for %d sets: %s", ErrInvalid, k, n, bulkRule)
	}
	shards := strings.Split(str("shards"), " ")
	for _, sh := range shards {
		if err := ValidateShard(sh); err != nil {
			return changes, fmt.Errorf("bulk entry shards: %w", err)
		}
	}
	got := 0
	for rest := sets; ; {
		line, more, found := strings.Cut(rest, "\n")
		got++
		if got > n {
			return changes, fmt.Errorf("%w: bulk entry holds more sets than its n=%d: %s", ErrInvalid, n, bulkRule)
		}
		user, k, ok := strings.Cut(line, " ")
		i, err := strconv.Atoi(k)
		if !ok || err != nil || i < 0 || i >= len(shards) || k != strconv.Itoa(i) {
			return changes, fmt.Errorf("%w: bulk entry set %d %.80q: want \"USER INDEX\" with INDEX 0..%d", ErrInvalid, got, line, len(shards)-1)
		}
		if err := ValidateUser(user); err != nil {
			return changes, fmt.Errorf("bulk entry set %d: %w", got, err)
		}
		changes = append(changes, Change{ID: m.ID, Op: OpSet, User: user, Shard: shards[i]})
		if !found {
			break
		}
		rest = more
	}
	if got != n {
		return changes, fmt.Errorf("%w: bulk entry holds %d sets, its n says %d", ErrInvalid, got, n)
	}
	return changes, nil
}

// bulkEntry is one bulk entry's fields n, shards and sets.
type bulkEntry struct{ n, shards, sets string }

// encodeBulk cuts as, in order, into bulk entries within the bounds
// (BulkMaxChanges sets, BulkMaxBytes of lines plus one line). The pairs must
// be valid.
func encodeBulk(as []Assignment) []bulkEntry {
	var out []bulkEntry
	var b strings.Builder
	index := map[string]string{}
	var names []string
	for i := 0; i < len(as); {
		b.Reset()
		clear(index)
		names = names[:0]
		n := 0
		for ; i < len(as) && n < BulkMaxChanges && b.Len() < BulkMaxBytes; i++ {
			a := as[i]
			k, ok := index[a.Shard]
			if !ok {
				k = strconv.Itoa(len(names))
				names = append(names, a.Shard)
				index[a.Shard] = k
			}
			if n > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(a.User)
			b.WriteByte(' ')
			b.WriteString(k)
			n++
		}
		out = append(out, bulkEntry{n: strconv.Itoa(n), shards: strings.Join(names, " "), sets: b.String()})
	}
	return out
}

// RecentChanges returns the newest n changes of the change log, newest
// first (XREVRANGE), for display; a bulk entry counts for its sets, and the
// oldest one shown may be cut. An entry that fails validation is returned
// with only its ID set (Op empty) and reported in bad, as ReadLog does. n
// must be from 1 to MaxRecent, else ErrInvalid.
func (s *Store) RecentChanges(ctx context.Context, n int) (changes []Change, bad []BadEntry, err error) {
	if n < 1 || n > MaxRecent {
		return nil, nil, fmt.Errorf("%w: recent changes n=%d: want 1 to %d", ErrInvalid, n, MaxRecent)
	}
	msgs, err := s.rdb.XRevRangeN(ctx, s.LogKey(), "+", "-", int64(n)).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("redis read the last %d of %s: %w", n, s.LogKey(), err)
	}
	for _, m := range msgs {
		start := len(changes)
		changes, bad = parseEntry(m, changes, bad)
		// An entry's changes newest first.
		for i, j := start, len(changes)-1; i < j; i, j = i+1, j-1 {
			changes[i], changes[j] = changes[j], changes[i]
		}
		if len(changes) >= n {
			return changes[:n], bad, nil
		}
	}
	return changes, bad, nil
}

// countAfterScript counts up to ARGV[2] changes after ARGV[1] inside Redis,
// so that only a number crosses the network: an entry is one change, a bulk
// entry its n (bad or not, at least one), read 100 entries at a time.
var countAfterScript = redis.NewScript(`
local limit, from, n = tonumber(ARGV[2]), '(' .. ARGV[1], 0
while n < limit do
  local want = math.min(100, limit - n)
  local r = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', want)
  for _, e in ipairs(r) do
    local f, c = e[2], 1
    if f[1] == 'op' and f[2] == 'bulk' and f[3] == 'n' then
      c = math.max(1, math.floor(tonumber(f[4]) or 1))
    end
    n = n + c
  end
  if #r < want then break end
  from = '(' .. r[#r][1]
end
return math.min(n, limit)
`)

// CountAfter returns how many changes the change-log entries after id hold
// (ZeroID or "" for the whole log; a bulk entry counts its sets), counting
// at most limit (1 to 100,000): a reader's lag in changes, capped. It costs Redis O(limit) when the reader is far
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

package maps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultPrefix keeps every shardmap key in one Redis Cluster slot: the hash
// tag {shardmap} makes the hash and the stream hash to the same slot, which
// the atomic scripts need.
const DefaultPrefix = "{shardmap}"

// DefaultLogMaxLen caps the change-log stream (XADD MAXLEN ~).
const DefaultLogMaxLen = 1_000_000

// ZeroID is the change-log position before any entry.
const ZeroID = "0-0"

// Op is what a change-log entry does to a user.
type Op string

// The two change-log operations.
const (
	OpSet Op = "set"
	OpDel Op = "del"
)

// Change is one change-log entry.
type Change struct {
	ID    string
	Op    Op
	User  string
	Shard string // empty for OpDel
}

// Store is the Redis side of shardmap: a hash user -> shard (the truth) and a
// capped stream of changes, written together by one script so that a change
// is never in one and not the other.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	maxLen int64
}

// NewStore returns a store under prefix (DefaultPrefix when empty).
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Store{rdb: rdb, prefix: prefix, maxLen: DefaultLogMaxLen}
}

// SetLogMaxLen changes the approximate cap of the change-log stream.
func (s *Store) SetLogMaxLen(n int64) { s.maxLen = n }

// UsersKey, LogKey, SyncersKey and ShardsKey name the store's Redis keys.
func (s *Store) UsersKey() string   { return s.prefix + ":users" }
func (s *Store) LogKey() string     { return s.prefix + ":log" }
func (s *Store) SyncersKey() string { return s.prefix + ":syncers" }
func (s *Store) ShardsKey() string  { return s.prefix + ":shards" }

// checkTypes fails a script before any write if a key holds the wrong type.
const checkTypes = `
local ut = redis.call('TYPE', KEYS[1])['ok']
local lt = redis.call('TYPE', KEYS[2])['ok']
if (ut ~= 'none' and ut ~= 'hash') or (lt ~= 'none' and lt ~= 'stream') then
  return redis.error_reply('WRONGTYPE shardmap keys ' .. KEYS[1] .. ' (' .. ut .. ') and ' .. KEYS[2] .. ' (' .. lt .. ') must be a hash and a stream')
end`

// setScript assigns each (user, shard) pair in ARGV[2:] and logs each real
// change; it returns the ID of the last change, or the stream's last ID when
// nothing changed, so a caller can always wait for that ID.
//
// Both scripts start with "#!lua" so that Redis refuses them whole when over
// maxmemory, and check the key types before writing: Redis does not roll a
// failed script back, so nothing may fail after the first write.
var setScript = redis.NewScript(`#!lua
` + checkTypes + `
local last = false
for i = 2, #ARGV, 2 do
  local u, s = ARGV[i], ARGV[i+1]
  if redis.call('HGET', KEYS[1], u) ~= s then
    redis.call('HSET', KEYS[1], u, s)
    last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'op', 'set', 'user', u, 'shard', s)
  end
end
if not last then
  local r = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #r > 0 then last = r[1][1] else last = '0-0' end
end
return last
`)

// delScript removes ARGV[2] and logs it; it returns {removed, id}.
var delScript = redis.NewScript(`#!lua
` + checkTypes + `
if redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then
  return {1, redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'op', 'del', 'user', ARGV[2])}
end
local r = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #r > 0 then return {0, r[1][1]} end
return {0, '0-0'}
`)

// Set assigns a.User to a.Shard and returns the change-log ID to wait for.
func (s *Store) Set(ctx context.Context, a Assignment) (string, error) {
	return s.SetMany(ctx, []Assignment{a})
}

// SetMany assigns every pair in one atomic script call and returns the
// change-log ID to wait for. Every pair is validated first; one bad pair
// fails the whole call before anything is written. Keep batches to a few
// thousand pairs: the script blocks Redis while it runs.
func (s *Store) SetMany(ctx context.Context, as []Assignment) (string, error) {
	args := make([]any, 0, 1+2*len(as))
	args = append(args, s.maxLen)
	for _, a := range as {
		if err := a.Validate(); err != nil {
			return "", err
		}
		args = append(args, a.User, a.Shard)
	}
	id, err := setScript.Run(ctx, s.rdb, []string{s.UsersKey(), s.LogKey()}, args...).Text()
	if err != nil {
		return "", fmt.Errorf("redis set %d assignments: %w", len(as), err)
	}
	return id, nil
}

// Del removes user's assignment. It reports whether there was one, and the
// change-log ID to wait for.
func (s *Store) Del(ctx context.Context, user string) (id string, found bool, err error) {
	if err := ValidateUser(user); err != nil {
		return "", false, err
	}
	res, err := delScript.Run(ctx, s.rdb, []string{s.UsersKey(), s.LogKey()}, s.maxLen, user).Slice()
	if err != nil {
		return "", false, fmt.Errorf("redis del %q: %w", user, err)
	}
	if len(res) != 2 {
		return "", false, fmt.Errorf("redis del %q: unexpected reply %v", user, res)
	}
	n, _ := res[0].(int64)
	id, _ = res[1].(string)
	return id, n == 1, nil
}

// Get returns user's shard, and false when the user has none.
func (s *Store) Get(ctx context.Context, user string) (string, bool, error) {
	if err := ValidateUser(user); err != nil {
		return "", false, err
	}
	shard, err := s.rdb.HGet(ctx, s.UsersKey(), user).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("redis get %q: %w", user, err)
	}
	return shard, true, nil
}

// Count returns the number of assignments in the hash, valid or not.
func (s *Store) Count(ctx context.Context) (int64, error) {
	n, err := s.rdb.HLen(ctx, s.UsersKey()).Result()
	if err != nil {
		return 0, fmt.Errorf("redis count: %w", err)
	}
	return n, nil
}

// BadEntry is a hash entry that fails validation (written by someone else).
type BadEntry struct {
	User string
	Err  error
}

// Scan walks the whole hash with HSCAN and calls fn for each valid entry.
// Invalid entries are never passed to fn; they go to bad (when not nil) and
// are counted in the result. HSCAN may return an entry twice when the hash
// is rehashed during the scan; fn must tolerate that.
func (s *Store) Scan(ctx context.Context, fn func(Assignment) error, bad func(BadEntry)) (skipped int, err error) {
	var cursor uint64
	for {
		kv, next, err := s.rdb.HScan(ctx, s.UsersKey(), cursor, "", 5000).Result()
		if err != nil {
			return skipped, fmt.Errorf("redis scan %s: %w", s.UsersKey(), err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			a := Assignment{User: kv[i], Shard: kv[i+1]}
			if err := a.Validate(); err != nil {
				skipped++
				if bad != nil {
					bad(BadEntry{User: a.User, Err: err})
				}
				continue
			}
			if err := fn(a); err != nil {
				return skipped, err
			}
		}
		if next == 0 {
			return skipped, nil
		}
		cursor = next
	}
}

// Snapshot is the whole valid content of the hash and the change-log ID it
// is at least as new as.
type Snapshot struct {
	LogID   string
	Entries map[string]string
	Skipped int
}

// Snapshot reads the change-log's last ID, then the whole hash. The hash may
// hold changes newer than LogID; replaying the log from LogID re-applies
// them, which is harmless because every entry carries the final value.
func (s *Store) Snapshot(ctx context.Context, bad func(BadEntry)) (Snapshot, error) {
	id, err := s.LastLogID(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	snap := Snapshot{LogID: id, Entries: map[string]string{}}
	snap.Skipped, err = s.Scan(ctx, func(a Assignment) error {
		snap.Entries[a.User] = a.Shard
		return nil
	}, bad)
	return snap, err
}

// LastLogID returns the newest change-log ID, or ZeroID for an empty log.
func (s *Store) LastLogID(ctx context.Context) (string, error) {
	msgs, err := s.rdb.XRevRangeN(ctx, s.LogKey(), "+", "-", 1).Result()
	if err != nil {
		return "", fmt.Errorf("redis last id of %s: %w", s.LogKey(), err)
	}
	if len(msgs) == 0 {
		return ZeroID, nil
	}
	return msgs[0].ID, nil
}

// LogHas reports whether the change-log still holds the entry id. After a
// read from id, a missing id means the log was trimmed or deleted past it and
// entries may have been lost: a gap.
func (s *Store) LogHas(ctx context.Context, id string) (bool, error) {
	if id == ZeroID {
		return true, nil
	}
	msgs, err := s.rdb.XRangeN(ctx, s.LogKey(), id, id, 1).Result()
	if err != nil {
		return false, fmt.Errorf("redis check %s in %s: %w", id, s.LogKey(), err)
	}
	return len(msgs) == 1, nil
}

// ReadLog returns up to count changes after id, waiting up to block for the
// first one; none and no error when the wait ran out. Entries that fail
// validation are returned with their error in bad, never as changes.
func (s *Store) ReadLog(ctx context.Context, after string, count int64, block time.Duration) (changes []Change, bad []BadEntry, err error) {
	streams, err := s.rdb.XRead(ctx, &redis.XReadArgs{
		Streams: []string{s.LogKey(), after},
		Count:   count,
		Block:   block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("redis read %s after %s: %w", s.LogKey(), after, err)
	}
	for _, st := range streams {
		for _, m := range st.Messages {
			c, err := parseChange(m)
			if err != nil {
				bad = append(bad, BadEntry{User: c.User, Err: fmt.Errorf("log entry %s: %w", m.ID, err)})
				// Keep the ID so the reader moves past the bad entry.
				changes = append(changes, Change{ID: m.ID})
				continue
			}
			changes = append(changes, c)
		}
	}
	return changes, bad, nil
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

// SyncerState is what a syncer reports about itself in Redis.
type SyncerState struct {
	Name    string    `json:"-"`
	Applied string    `json:"applied"` // last change-log ID in the live map
	Seen    time.Time `json:"seen"`    // heartbeat
	Map     string    `json:"map"`
	Entries int       `json:"entries"` // entries in the live map
	Ready   bool      `json:"ready"`
	Problem string    `json:"problem,omitempty"`
}

// Live reports whether the syncer sent a heartbeat within maxAge of now.
func (st SyncerState) Live(now time.Time, maxAge time.Duration) bool {
	return now.Sub(st.Seen) <= maxAge
}

// ReportSyncer records a syncer's state under its name.
func (s *Store) ReportSyncer(ctx context.Context, st SyncerState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := s.rdb.HSet(ctx, s.SyncersKey(), st.Name, b).Err(); err != nil {
		return fmt.Errorf("redis report syncer %s: %w", st.Name, err)
	}
	return nil
}

// Syncers returns every syncer that ever reported, sorted by name.
func (s *Store) Syncers(ctx context.Context) ([]SyncerState, error) {
	all, err := s.rdb.HGetAll(ctx, s.SyncersKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("redis read syncers: %w", err)
	}
	out := make([]SyncerState, 0, len(all))
	for name, v := range all {
		st := SyncerState{Name: name}
		if err := json.Unmarshal([]byte(v), &st); err != nil {
			st.Problem = "unreadable state: " + err.Error()
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// AddShards records shard names as known (HAProxy backends that exist).
func (s *Store) AddShards(ctx context.Context, shards []string) error {
	if len(shards) == 0 {
		return nil
	}
	args := make([]any, 0, len(shards))
	for _, sh := range shards {
		if err := ValidateShard(sh); err != nil {
			return err
		}
		args = append(args, sh)
	}
	if err := s.rdb.SAdd(ctx, s.ShardsKey(), args...).Err(); err != nil {
		return fmt.Errorf("redis add shards: %w", err)
	}
	return nil
}

// KnownShard reports whether shard was recorded as known.
func (s *Store) KnownShard(ctx context.Context, shard string) (bool, error) {
	ok, err := s.rdb.SIsMember(ctx, s.ShardsKey(), shard).Result()
	if err != nil {
		return false, fmt.Errorf("redis check shard %q: %w", shard, err)
	}
	return ok, nil
}

// KnownShards returns the known shard names, sorted.
func (s *Store) KnownShards(ctx context.Context) ([]string, error) {
	out, err := s.rdb.SMembers(ctx, s.ShardsKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("redis read shards: %w", err)
	}
	sort.Strings(out)
	return out, nil
}

// CompareIDs orders two change-log IDs ("ms-seq"): -1, 0 or 1.
func CompareIDs(a, b string) int {
	am, as := splitID(a)
	bm, bs := splitID(b)
	switch {
	case am < bm:
		return -1
	case am > bm:
		return 1
	case as < bs:
		return -1
	case as > bs:
		return 1
	}
	return 0
}

func splitID(id string) (ms, seq uint64) {
	a, b, _ := strings.Cut(id, "-")
	ms, _ = strconv.ParseUint(a, 10, 64)
	seq, _ = strconv.ParseUint(b, 10, 64)
	return ms, seq
}

// Import assigns every pair in batches of batch pairs, several batches per
// round trip, and calls progress with the count done so far. Each batch is
// atomic; a failure leaves the earlier batches written and reports how many
// pairs were done. It returns the change-log ID to wait for.
func (s *Store) Import(ctx context.Context, as []Assignment, batch int, progress func(done int)) (string, error) {
	if batch <= 0 {
		batch = 500
	}
	for _, a := range as {
		if err := a.Validate(); err != nil {
			return "", err
		}
	}
	const perTrip = 8
	last := ZeroID
	keys := []string{s.UsersKey(), s.LogKey()}
	for done := 0; done < len(as); {
		pipe := s.rdb.Pipeline()
		var cmds []*redis.Cmd
		end := done
		for t := 0; t < perTrip && end < len(as); t++ {
			hi := min(end+batch, len(as))
			args := make([]any, 0, 1+2*(hi-end))
			args = append(args, s.maxLen)
			for _, a := range as[end:hi] {
				args = append(args, a.User, a.Shard)
			}
			cmds = append(cmds, setScript.Eval(ctx, pipe, keys, args...))
			end = hi
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return "", fmt.Errorf("redis import after %d of %d assignments: %w", done, len(as), err)
		}
		for _, c := range cmds {
			if id, err := c.Text(); err == nil && CompareIDs(id, last) > 0 {
				last = id
			}
		}
		done = end
		if progress != nil {
			progress(done)
		}
	}
	return last, nil
}

// forceKey holds a human's permission for the next guarded reconcile.
func (s *Store) forceKey() string { return s.prefix + ":force-reconcile" }

// AllowForcedReconcile lets the next reconcile that a syncer would refuse
// (it would delete too much of the live map) go ahead, for ttl.
func (s *Store) AllowForcedReconcile(ctx context.Context, ttl time.Duration) error {
	if err := s.rdb.Set(ctx, s.forceKey(), "1", ttl).Err(); err != nil {
		return fmt.Errorf("redis allow forced reconcile: %w", err)
	}
	return nil
}

// TakeForcedReconcile reports whether a forced reconcile was allowed, and
// uses the permission up.
func (s *Store) TakeForcedReconcile(ctx context.Context) (bool, error) {
	n, err := s.rdb.Del(ctx, s.forceKey()).Result()
	if err != nil {
		return false, fmt.Errorf("redis take forced reconcile: %w", err)
	}
	return n == 1, nil
}

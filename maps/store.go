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

	waitN       int // WithReplicaWait
	waitTimeout time.Duration
}

// NewStore returns a store under prefix (DefaultPrefix when empty).
func NewStore(rdb redis.UniversalClient, prefix string) *Store {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Store{rdb: rdb, prefix: prefix, maxLen: DefaultLogMaxLen}
}

// UsersKey, LogKey, SyncersKey and ShardsKey name the store's Redis keys.
func (s *Store) UsersKey() string   { return s.prefix + ":users" }
func (s *Store) LogKey() string     { return s.prefix + ":log" }
func (s *Store) SyncersKey() string { return s.prefix + ":syncers" }
func (s *Store) ShardsKey() string  { return s.prefix + ":shards" }

// The write scripts share one shape, so that nothing is written unless
// everything is. Redis runs a script atomically but does not roll it back:
// a command that fails half-way leaves the earlier writes in place. So:
//
//  1. A key of the wrong type fails the script before anything.
//  2. The script decides every change with reads only (HGET/HEXISTS).
//  3. commit appends every change to the log first, with redis.pcall and
//     without MAXLEN. XADD * can fail on a valid stream: when the stream's
//     last ID is 18446744073709551615-18446744073709551615 no later ID
//     exists. On the first failure, commit deletes the entries it added
//     (XDEL, and DEL of a stream it created) and returns the error, before
//     any hash write: no reader can see the undone entries, since the script
//     is atomic. We chose undo over a precheck of the stream's
//     last-generated-id because it covers any XADD failure, not only the
//     ones we know of, and needs no 64-bit arithmetic in Lua (whose numbers
//     are doubles).
//  4. Only then the hash writes (HSET/HDEL on a hash, which cannot fail), and
//     one XTRIM MAXLEN ~ last: trimming is the one step that cannot be undone,
//     so it comes after everything else succeeded.
//
// Every script starts with "#!lua", so Redis refuses it whole, before its
// first command, when over maxmemory (noeviction), rather than failing a
// write in the middle. ARGV[1] is always the log's MAXLEN.
var prologue = `#!lua
local BULK_MIN, BULK_MAX, BULK_BYTES = ` + strconv.Itoa(BulkMin) + `, ` + strconv.Itoa(BulkMaxChanges) + `, ` + strconv.Itoa(BulkMaxBytes) + `
local ut = redis.call('TYPE', KEYS[1])['ok']
local lt = redis.call('TYPE', KEYS[2])['ok']
if (ut ~= 'none' and ut ~= 'hash') or (lt ~= 'none' and lt ~= 'stream') then
  return redis.error_reply('WRONGTYPE shardmap keys ' .. KEYS[1] .. ' (' .. ut .. ') and ' .. KEYS[2] .. ' (' .. lt .. ') must be a hash and a stream')
end
local cur = {}
local function get(u)
  if cur[u] == nil then cur[u] = redis.call('HGET', KEYS[1], u) end
  return cur[u]
end
-- prefetch reads the current shard of the users ARGV[2], ARGV[4], ... with
-- one HMGET per 500 (a call per user costs more than the read).
local function prefetch()
  local us = {}
  for i = 2, #ARGV, 2 do us[#us + 1] = ARGV[i] end
  for j = 1, #us, 500 do
    local last = math.min(j + 499, #us)
    local got = redis.call('HMGET', KEYS[1], unpack(us, j, last))
    for k = j, last do
      if cur[us[k]] == nil then cur[us[k]] = got[k - j + 1] end
    end
  end
end
local function lastid()
  local r = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #r > 0 then return r[1][1] end
  return '0-0'
end
-- commit writes the changes us[i] -> ss[i] (ss[i] false: delete) to the
-- log, then the hash; it returns the last new ID, or nil and the error with
-- nothing written. A call of at least BULK_MIN changes, all sets, logs them
-- as bulk entries (see changes.go): up to BULK_MAX sets and BULK_BYTES of
-- lines plus one line each.
local function entries(us, ss)
  local out, bulk = {}, #us >= BULK_MIN
  for i = 1, #us do
    if not ss[i] then bulk = false; break end
  end
  if not bulk then
    for i = 1, #us do
      if ss[i] then
        out[#out + 1] = {'op', 'set', 'user', us[i], 'shard', ss[i]}
      else
        out[#out + 1] = {'op', 'del', 'user', us[i]}
      end
    end
    return out
  end
  local i = 1
  while i <= #us do
    -- parts: user, ' ', index, '\n', ... joined once (no string per line).
    local index, names, parts, n, size = {}, {}, {}, 0, 0
    while i <= #us and n < BULK_MAX and size < BULK_BYTES do
      local u, s = us[i], ss[i]
      local k = index[s]
      if not k then
        names[#names + 1] = s
        k = tostring(#names - 1)
        index[s] = k
      end
      local p = #parts
      parts[p + 1] = u
      parts[p + 2] = ' '
      parts[p + 3] = k
      parts[p + 4] = '\n'
      n = n + 1
      size = size + #u + 2 + #k
      i = i + 1
    end
    out[#out + 1] = {'op', 'bulk', 'n', tostring(n), 'shards', table.concat(names, ' '), 'sets', table.concat(parts, '', 1, #parts - 1)}
  end
  return out
end
-- trim caps the log after a call that logged changes in entries: at
-- MAXLEN entries of one change each, and at MAXLEN / (changes per entry),
-- at least 100 entries, when they were bulk entries: the log then holds
-- about MAXLEN changes, and its memory stays near that of MAXLEN single
-- entries rather than growing a thousandfold.
local function trim(changes, entries)
  local keep = tonumber(ARGV[1])
  if changes > entries then
    keep = math.max(100, math.floor(keep * entries / changes))
  end
  redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', keep)
end
-- appendLog adds the entries (tables of fields) to the log; it returns
-- their IDs, or nil and the error with every entry it added deleted.
local function appendLog(es)
  local ids = {}
  for _, e in ipairs(es) do
    local r = redis.pcall('XADD', KEYS[2], '*', unpack(e))
    if type(r) == 'table' and r.err then
      for j = 1, #ids, 1000 do
        redis.call('XDEL', KEYS[2], unpack(ids, j, math.min(j + 999, #ids)))
      end
      if lt == 'none' then redis.call('DEL', KEYS[2]) end
      return nil, r.err
    end
    ids[#ids + 1] = r
  end
  return ids
end
local function commit(us, ss)
  local ids, err = appendLog(entries(us, ss))
  if not ids then return nil, err end
  -- In order, runs of sets as one HSET and of deletes as one HDEL (at
  -- most 500 users a call).
  local run, runSet = {}, true
  local function flush()
    if #run == 0 then return end
    if runSet then redis.call('HSET', KEYS[1], unpack(run)) else redis.call('HDEL', KEYS[1], unpack(run)) end
    run = {}
  end
  for i = 1, #us do
    local isSet = ss[i] and true or false
    if isSet ~= runSet or #run >= 1000 then flush() end
    runSet = isSet
    run[#run + 1] = us[i]
    if isSet then run[#run + 1] = ss[i] end
  end
  flush()
  if #ids == 0 then return lastid() end
  trim(#us, #ids)
  return ids[#ids]
end
local function failed(err)
  return redis.error_reply('shardmap: change log append failed, nothing written: ' .. tostring(err))
end
`

// setScript assigns each (user, shard) pair in ARGV[2:] and logs each real
// change; it returns the ID of the last change, or the stream's last ID when
// nothing changed, so a caller can always wait for that ID.
var setScript = redis.NewScript(prologue + `
local us, ss = {}, {}
prefetch()
for i = 2, #ARGV, 2 do
  local u, s = ARGV[i], ARGV[i+1]
  if get(u) ~= s then
    cur[u] = s
    us[#us + 1] = u
    ss[#ss + 1] = s
  end
end
local id, err = commit(us, ss)
if not id then return failed(err) end
return id
`)

// importScript is Import's script: it sets every pair it is given and
// logs each one (changed or not: it reads nothing, which halves Redis's
// work at 1M users), in bulk entries encoded by the caller (encodeBulk) from
// the same pairs. ARGV[2] is the number m of entries, ARGV[3..2+3m] their
// n, shards and sets, and the rest the pairs, user then shard, in order.
var importScript = redis.NewScript(prologue + `
local m = tonumber(ARGV[2])
local es = {}
for j = 0, m - 1 do
  es[#es + 1] = {'op', 'bulk', 'n', ARGV[3 + 3 * j], 'shards', ARGV[4 + 3 * j], 'sets', ARGV[5 + 3 * j]}
end
local ids, err = appendLog(es)
if not ids then return failed(err) end
for i = 3 + 3 * m, #ARGV, 2000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 1999, #ARGV)))
end
if #ids == 0 then return lastid() end
trim((#ARGV - 2 - 3 * m) / 2, #ids)
return ids[#ids]
`)

// delScript removes ARGV[2] and logs it; it returns {removed, id}.
var delScript = redis.NewScript(prologue + `
if not get(ARGV[2]) then return {0, lastid()} end
local id, err = commit({ARGV[2]}, {false})
if not id then return failed(err) end
return {1, id}
`)

// fillScript assigns each (user, shard) pair in ARGV[2:] only where the
// user has no shard (HSETNX semantics), and logs each write. It returns
// {id, written, same, user1, redisShard1, ...}: the ID to wait for, how many
// pairs it wrote, how many Redis already had, and each user it left alone
// because Redis has another shard for it.
var fillScript = redis.NewScript(prologue + `
local us, ss, same, res = {}, {}, 0, {}
prefetch()
for i = 2, #ARGV, 2 do
  local u, s = ARGV[i], ARGV[i+1]
  local have = get(u)
  if not have then
    cur[u] = s
    us[#us + 1] = u
    ss[#ss + 1] = s
  elseif have == s then
    same = same + 1
  else
    res[#res + 1] = u
    res[#res + 1] = have
  end
end
local id, err = commit(us, ss)
if not id then return failed(err) end
local out = {id, #us, same}
for _, v in ipairs(res) do out[#out + 1] = v end
return out
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
	w, wait, release, err := s.pin(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	id, err := setScript.Run(ctx, w, []string{s.UsersKey(), s.LogKey()}, args...).Text()
	if err != nil {
		return "", fmt.Errorf("redis set %d assignments: %w", len(as), err)
	}
	if err := wait(ctx); err != nil {
		return id, fmt.Errorf("redis set %d assignments: %w", len(as), err)
	}
	return id, nil
}

// Del removes user's assignment. It reports whether there was one, and the
// change-log ID to wait for.
func (s *Store) Del(ctx context.Context, user string) (id string, found bool, err error) {
	if err := ValidateUser(user); err != nil {
		return "", false, err
	}
	w, wait, release, err := s.pin(ctx)
	if err != nil {
		return "", false, err
	}
	defer release()
	res, err := delScript.Run(ctx, w, []string{s.UsersKey(), s.LogKey()}, s.maxLen, user).Slice()
	if err != nil {
		return "", false, fmt.Errorf("redis del %q: %w", user, err)
	}
	if len(res) != 2 {
		return "", false, fmt.Errorf("redis del %q: unexpected reply %v", user, res)
	}
	n, _ := res[0].(int64)
	id, _ = res[1].(string)
	if err := wait(ctx); err != nil {
		return id, n == 1, fmt.Errorf("redis del %q: %w", user, err)
	}
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

// StableSnapshot is Snapshot taken so that the hash is exactly the state at
// LogID: it reads the log's last ID again after the scan and retries, up to
// tries times, until no change was logged during the scan. exact is false
// when every try saw a change (the last snapshot is returned anyway). Every
// write through this store that changes the hash logs a new ID, so an
// unchanged last ID means an unchanged hash (hand edits aside). bad is
// called again for each try.
func (s *Store) StableSnapshot(ctx context.Context, bad func(BadEntry), tries int) (snap Snapshot, exact bool, err error) {
	for i := 0; i < max(tries, 1); i++ {
		snap, err = s.Snapshot(ctx, bad)
		if err != nil {
			return snap, false, err
		}
		after, err := s.LastLogID(ctx)
		if err != nil {
			return snap, false, err
		}
		if after == snap.LogID {
			return snap, true, nil
		}
	}
	return snap, false, nil
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

// LogHas reports whether a read of the change-log after id misses nothing
// that was logged after id; false is a gap: entries may have been lost, and
// a reader at id must reload. For an entry's ID it is whether the log still
// holds that entry: trimming removes the oldest entries first, so a log
// that holds id holds everything after it, and a log trimmed or deleted
// past id does not hold it. ZeroID is the start of the log (a reader that
// loaded an empty log): true while the log holds every entry ever added to
// it (XINFO STREAM: entries-added equals length), false once any was
// trimmed or deleted (also for the entries a failed write undid: a needless
// reload at worst). A log that is empty or missing now cannot tell: true
// (entries logged, then emptied or deleted by hand, go unseen there).
// Redis before 7.0 does not report entries-added, and an ACL user without
// XINFO STREAM may not ask (NOPERM, Redis's error code): ZeroID is true
// there, as it was before this check.
func (s *Store) LogHas(ctx context.Context, id string) (bool, error) {
	if id == ZeroID {
		return s.logComplete(ctx)
	}
	msgs, err := s.rdb.XRangeN(ctx, s.LogKey(), id, id, 1).Result()
	if err != nil {
		return false, fmt.Errorf("redis check %s in %s: %w", id, s.LogKey(), err)
	}
	return len(msgs) == 1, nil
}

// logComplete is LogHas(ZeroID): whether the log holds every entry it was
// ever given (true when it has no entries).
func (s *Store) logComplete(ctx context.Context) (bool, error) {
	// XRANGE rather than XLEN: the ACL users of the README have it already.
	first, err := s.rdb.XRangeN(ctx, s.LogKey(), "-", "+", 1).Result()
	if err != nil {
		return false, fmt.Errorf("redis first entry of %s: %w", s.LogKey(), err)
	}
	if len(first) == 0 {
		return true, nil
	}
	info, err := s.rdb.XInfoStream(ctx, s.LogKey()).Result()
	if redis.HasErrorPrefix(err, "NOPERM") {
		// An ACL user from before XINFO was needed (the README's lines
		// have it now): answer as before, rather than stop the reader.
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("redis XINFO STREAM %s: %w", s.LogKey(), err)
	}
	if info.EntriesAdded == 0 { // Redis < 7.0: not reported
		return true, nil
	}
	// Trimming does not move max-deleted-entry-id; entries-added counts
	// every entry ever added, so a log that lost any is shorter than it.
	return info.EntriesAdded == info.Length, nil
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

// ParseID splits a change-log ID "MS-SEQ" into its two numbers; ok is false
// for anything else.
func ParseID(id string) (ms, seq uint64, ok bool) {
	a, b, found := strings.Cut(id, "-")
	if !found {
		return 0, 0, false
	}
	var err1, err2 error
	ms, err1 = strconv.ParseUint(a, 10, 64)
	seq, err2 = strconv.ParseUint(b, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
}

func splitID(id string) (ms, seq uint64) {
	a, b, _ := strings.Cut(id, "-")
	ms, _ = strconv.ParseUint(a, 10, 64)
	seq, _ = strconv.ParseUint(b, 10, 64)
	return ms, seq
}

// BatchError reports a batched write (Import, Fill) that stopped part-way.
// Each batch is one script call, written whole or not at all; Done counts
// the pairs of the batches that succeeded, even those sent in the same round
// trip after the failed one. When Unknown is true the connection failed and
// the batches of the last round trip may or may not have been written:
// Done does not count them. With WithReplicaWait, a round trip whose WAIT
// fell short stops the run with Err a *ReplicaWaitError, and Done counts
// that trip's batches: they are written on the primary.
type BatchError struct {
	What    string // "import" or "fill"
	Done    int
	Total   int
	Batch   int
	Unknown bool
	Err     error
}

func (e *BatchError) Error() string {
	unknown := ""
	if e.Unknown {
		unknown = ", and the outcome of the last round trip is unknown (the connection failed)"
	}
	return fmt.Sprintf("redis %s stopped: %d of %d assignments written (each batch of up to %d is written whole or not at all%s): %v",
		e.What, e.Done, e.Total, e.Batch, unknown, e.Err)
}

func (e *BatchError) Unwrap() error { return e.Err }

// batches runs script over as in batches of batch pairs, several batches per
// round trip, and hands each batch's reply to done (with the batch's size).
// It stops after the first round trip in which a batch failed.
func (s *Store) batches(ctx context.Context, what string, script *redis.Script, as []Assignment, batch int,
	progress func(done int), reply func(n int, cmd *redis.Cmd)) (int, error) {
	if batch <= 0 {
		batch = 500
	}
	for _, a := range as {
		if err := a.Validate(); err != nil {
			return 0, err
		}
	}
	const perTrip = 8
	keys := []string{s.UsersKey(), s.LogKey()}
	w, wait, release, err := s.pin(ctx)
	if err != nil {
		return 0, err
	}
	defer release()
	done := 0
	for next := 0; next < len(as); {
		pipe := w.Pipeline()
		var cmds []*redis.Cmd
		var sizes []int
		for t := 0; t < perTrip && next < len(as); t++ {
			hi := min(next+batch, len(as))
			sc, args := s.scriptArgs(script, as[next:hi])
			cmds = append(cmds, sc.Eval(ctx, pipe, keys, args...))
			sizes = append(sizes, hi-next)
			next = hi
		}
		_, _ = pipe.Exec(ctx) // each command carries its own error
		var first error
		unknown := false
		for i, c := range cmds {
			if err := c.Err(); err != nil {
				var rerr redis.Error
				if !errors.As(err, &rerr) {
					unknown = true // not a reply from Redis: the trip's fate is unknown
				}
				if first == nil {
					first = err
				}
				continue
			}
			done += sizes[i]
			reply(sizes[i], c)
		}
		if first == nil {
			first = wait(ctx)
		}
		if first != nil {
			return done, &BatchError{What: what, Done: done, Total: len(as), Batch: batch, Unknown: unknown, Err: first}
		}
		if progress != nil {
			progress(done)
		}
	}
	return done, nil
}

// scriptArgs is the script and arguments for one batch: script's, or,
// for an import batch of at least BulkMin pairs, importScript's.
func (s *Store) scriptArgs(script *redis.Script, as []Assignment) (*redis.Script, []any) {
	if script == importScript && len(as) >= BulkMin {
		es := encodeBulk(as)
		args := make([]any, 0, 2+3*len(es)+2*len(as))
		args = append(args, s.maxLen, len(es))
		for _, e := range es {
			args = append(args, e.n, e.shards, e.sets)
		}
		for _, a := range as {
			args = append(args, a.User, a.Shard)
		}
		return importScript, args
	}
	if script == importScript {
		script = setScript
	}
	args := make([]any, 0, 1+2*len(as))
	args = append(args, s.maxLen)
	for _, a := range as {
		args = append(args, a.User, a.Shard)
	}
	return script, args
}

// Import assigns every pair in batches of batch pairs (500 when <= 0),
// several batches per round trip, and calls progress with the count done so
// far. Every pair is validated first. Each batch is atomic; a failure
// returns a *BatchError with the exact count written. It returns the
// change-log ID to wait for. A batch of BulkMin pairs or more is logged as
// bulk entries (see BulkMin) holding every pair of the batch, changed or
// not: Import reads nothing, so a re-import logs what it rewrites (readers
// apply final values, so that is harmless). A smaller batch logs only the
// pairs that change, one entry each, as SetMany does. A user given twice
// ends with its last shard.
func (s *Store) Import(ctx context.Context, as []Assignment, batch int, progress func(done int)) (string, error) {
	last := ZeroID
	_, err := s.batches(ctx, "import", importScript, as, batch, progress, func(_ int, c *redis.Cmd) {
		if id, err := c.Text(); err == nil && CompareIDs(id, last) > 0 {
			last = id
		}
	})
	return last, err
}

// Conflict is a user that Fill left alone because Redis already assigns it
// another shard.
type Conflict struct {
	User  string
	Redis string // the shard in Redis, kept
	Want  string // the shard Fill was given, not written
}

// FillResult is what Fill did.
type FillResult struct {
	LogID     string // change-log ID to wait for
	Written   int    // users that had no shard and got one
	Same      int    // users that already had the given shard
	Conflicts []Conflict
}

// Fill assigns each pair only where Redis has no shard for the user (for a
// restore after Redis lost data: what was assigned since stays). Every pair
// is validated first; each batch is one atomic script that writes its new
// pairs and their log entries together, or nothing. A failure returns the
// result so far and a *BatchError.
func (s *Store) Fill(ctx context.Context, as []Assignment, batch int, progress func(done int)) (FillResult, error) {
	res := FillResult{LogID: ZeroID}
	want := make(map[string]string, len(as))
	for _, a := range as {
		want[a.User] = a.Shard
	}
	var bad error
	_, err := s.batches(ctx, "fill", fillScript, as, batch, progress, func(_ int, c *redis.Cmd) {
		r, err := c.Slice()
		if err != nil || len(r) < 3 || len(r)%2 == 0 {
			bad = fmt.Errorf("redis fill: unexpected reply %v (%v)", r, err)
			return
		}
		id, _ := r[0].(string)
		w, _ := r[1].(int64)
		same, _ := r[2].(int64)
		if CompareIDs(id, res.LogID) > 0 {
			res.LogID = id
		}
		res.Written += int(w)
		res.Same += int(same)
		for i := 3; i+1 < len(r); i += 2 {
			u, _ := r[i].(string)
			sh, _ := r[i+1].(string)
			res.Conflicts = append(res.Conflicts, Conflict{User: u, Redis: sh, Want: want[u]})
		}
	})
	if err == nil {
		err = bad
	}
	return res, err
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

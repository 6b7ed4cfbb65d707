package ids

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Script is the generator's Lua script, documented verbatim in docs/IDS.md so
// that an application in any language can run the same one (EVAL or
// EVALSHA) and make IDs unique with ours.
//
// KEYS[1]: the counter key prefix, "{shardmap}:ids:seq" (declared so that
// Redis Cluster runs the script on the slot of {shardmap}; the counter keys
// are KEYS[1]..":"..logical..":"..ms, in the same slot).
// ARGV[1]: logical shard; ARGV[2]: epoch, Unix ms; ARGV[3]: max logical
// shard (8191); ARGV[4]: max sequence (1023); ARGV[5]: max ms since the
// epoch (MaxMillis); ARGV[6]: counter TTL in ms.
//
// Returns {1, ms, sequence}: the caller composes the ID (ms since the epoch,
// the logical shard it passed, sequence); or {0, ms, wait_us}: this logical
// shard's sequence for this millisecond is used up, call again in wait_us
// microseconds (the start of the next millisecond; a script cannot sleep).
// A bad argument or a clock outside the layout is an error reply.
const Script = `local logical = tonumber(ARGV[1])
local epoch = tonumber(ARGV[2])
local max_logical = tonumber(ARGV[3])
local max_seq = tonumber(ARGV[4])
local max_ms = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
if not (logical and epoch and max_logical and max_seq and max_ms and ttl) then
  return redis.error_reply('ids: ARGV must be 6 integers: logical, epoch_ms, max_logical, max_seq, max_ms, ttl_ms')
end
if logical < 0 or logical > max_logical or logical ~= math.floor(logical) then
  return redis.error_reply('ids: logical shard ' .. ARGV[1] .. ' out of range 0..' .. ARGV[3])
end
local t = redis.call('TIME')
local us = tonumber(t[2])
local ms = tonumber(t[1]) * 1000 + math.floor(us / 1000) - epoch
if ms < 0 or ms > max_ms then
  return redis.error_reply('ids: Redis clock is outside the ID layout (ms since epoch ' .. string.format('%d', ms) .. ', want 0..' .. ARGV[5] .. ')')
end
local key = KEYS[1] .. ':' .. string.format('%d', logical) .. ':' .. string.format('%d', ms)
local n = redis.call('INCR', key)
if n == 1 then
  redis.call('PEXPIRE', key, ttl)
end
if n - 1 > max_seq then
  return {0, ms, 1000 - us % 1000}
end
return {1, ms, n - 1}
`

// CounterTTL is how long a per-(logical shard, ms) counter lives. A counter
// only matters during its millisecond, but Redis's clock may step back (an
// NTP correction): while the counter of a repeated millisecond still exists
// its sequence continues, so IDs stay unique across a step back of up to
// this long.
const CounterTTL = 5 * time.Second

// DefaultTimeout bounds Generator.New when its context has no deadline.
const DefaultTimeout = 2 * time.Second

// ErrReply is wrapped when the script's reply is not what it returns.
var ErrReply = errors.New("unexpected reply from the ID script")

// Generator makes IDs unique across every process and machine that uses the
// same Redis, key prefix and layout. It is safe for concurrent use.
type Generator struct {
	rdb    redis.Scripter
	layout Layout
	key    string
	script *redis.Script
}

// NewGenerator returns a generator on rdb whose counter keys are under
// prefix ("{shardmap}" when empty; keep the hash tag for Redis Cluster).
func NewGenerator(rdb redis.Scripter, prefix string, l Layout) (*Generator, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if prefix == "" {
		prefix = "{shardmap}"
	}
	return &Generator{rdb: rdb, layout: l.WithDefaults(), key: prefix + ":ids:seq", script: redis.NewScript(Script)}, nil
}

// Layout is the generator's layout.
func (g *Generator) Layout() Layout { return g.layout }

// CounterKey is KEYS[1] of the script for this generator.
func (g *Generator) CounterKey() string { return g.key }

// Args are the script's ARGV for logical shard logical.
func (g *Generator) Args(logical int) []any {
	return []any{logical, g.layout.EpochMillis(), g.layout.LogicalShards() - 1, g.layout.MaxSequence(),
		g.layout.MaxMillis(), CounterTTL.Milliseconds()}
}

// New returns a new ID on logical shard logical (0..LogicalShards-1, else
// ErrRange before any Redis call). The time is Redis's, so IDs from every
// process are ordered by one clock. When the shard's sequence for the
// current millisecond is used up it waits for the next one and tries again,
// until ctx ends or, if ctx has no deadline, DefaultTimeout passes.
func (g *Generator) New(ctx context.Context, logical int) (int64, error) {
	if logical < 0 || logical >= g.layout.LogicalShards() {
		return 0, &Error{Input: fmt.Sprint(logical), Rule: ErrRange, Note: fmt.Sprintf("logical shard, want 0..%d", g.layout.LogicalShards()-1)}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	args := g.Args(logical)
	for {
		res, err := g.script.Run(ctx, g.rdb, []string{g.key}, args...).Int64Slice()
		if err != nil {
			return 0, fmt.Errorf("new ID on logical shard %d: %w", logical, err)
		}
		if len(res) != 3 || res[0] != 0 && res[0] != 1 {
			return 0, fmt.Errorf("new ID on logical shard %d: %w: %v", logical, ErrReply, res)
		}
		if res[0] == 1 {
			id, err := g.layout.Compose(Parts{Millis: res[1], Logical: logical, Sequence: int(res[2])})
			if err != nil {
				return 0, fmt.Errorf("new ID on logical shard %d: %w: %v", logical, ErrReply, err)
			}
			return id, nil
		}
		wait := time.Duration(res[2]) * time.Microsecond
		if wait <= 0 || wait > time.Millisecond {
			return 0, fmt.Errorf("new ID on logical shard %d: %w: wait %dus", logical, ErrReply, res[2])
		}
		tm := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tm.Stop()
			return 0, fmt.Errorf("new ID on logical shard %d: sequence used up, still at %d ms: %w", logical, res[1], ctx.Err())
		case <-tm.C:
		}
	}
}

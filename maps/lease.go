package maps

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// A Claim is a key in Redis that at most one holder owns at a time, for a
// time-to-live the holder keeps renewing: a syncer's name (so that two
// running syncers never report under one name) and a HAProxy map's lease (so
// that two syncers never interleave swaps on one map). A holder that stops
// renewing loses it after the TTL; another may then take it.
//
// Claims are written with SET NX PX and renewed or released by scripts that
// compare the holder first, so a holder never extends or drops another's.

// NameClaimKey and LeaseKey name the claim keys.
func (s *Store) NameClaimKey(name string) string { return s.prefix + ":name:" + name }
func (s *Store) LeaseKey(target string) string   { return s.prefix + ":lease:" + target }

// renewScript renews the holder's claim, or takes a key that is no live
// claim: one without a TTL (every claim has one; a key set by hand, or of
// another type, would otherwise block every syncer for ever).
var renewScript = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if t ~= 'none' and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

var releaseScript = redis.NewScript(`
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Claim takes key for holder for ttl if nobody holds it (or the key is no
// live claim: it has no TTL), or renews it if holder already does. It
// reports whether holder holds it now, and, when it does not, who does.
func (s *Store) Claim(ctx context.Context, key, holder string, ttl time.Duration) (held bool, other string, err error) {
	n, err := renewScript.Run(ctx, s.rdb, []string{key}, holder, ttl.Milliseconds()).Int64()
	if err != nil {
		return false, "", fmt.Errorf("redis renew %s: %w", key, err)
	}
	if n == 1 {
		return true, "", nil
	}
	ok, err := s.rdb.SetNX(ctx, key, holder, ttl).Result()
	if err != nil {
		return false, "", fmt.Errorf("redis claim %s: %w", key, err)
	}
	if ok {
		return true, "", nil
	}
	other, err = s.rdb.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) || redis.HasErrorPrefix(err, "WRONGTYPE") {
		return false, "", nil // expired meanwhile: the next try takes it
	}
	if err != nil {
		return false, "", fmt.Errorf("redis read %s: %w", key, err)
	}
	if other == holder {
		// Our own SET NX went through but its reply was lost, and the
		// client's retry found the key taken: by us.
		if err := s.rdb.PExpire(ctx, key, ttl).Err(); err != nil {
			return false, "", fmt.Errorf("redis renew %s: %w", key, err)
		}
		return true, "", nil
	}
	return false, other, nil
}

// Release drops key if holder holds it; it does nothing otherwise.
func (s *Store) Release(ctx context.Context, key, holder string) error {
	if err := releaseScript.Run(ctx, s.rdb, []string{key}, holder).Err(); err != nil {
		return fmt.Errorf("redis release %s: %w", key, err)
	}
	return nil
}

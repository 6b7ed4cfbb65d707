package maps

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// ChangedError is a compare-and-set (SetIf, DelIf) that found another value
// than the one it expected: nothing was written.
type ChangedError struct {
	User     string
	Expected string // "" = no assignment
	Current  string // what Redis holds now; "" = no assignment
}

func (e *ChangedError) Error() string {
	return fmt.Sprintf("user %q: expected %s, but Redis has %s (someone else changed it): nothing written",
		e.User, orAbsent(e.Expected), orAbsent(e.Current))
}

func orAbsent(shard string) string {
	if shard == "" {
		return "no assignment"
	}
	return fmt.Sprintf("shard %q", shard)
}

// ErrFenced is a fenced compare-and-set whose fence key no longer holds
// the caller's token (its lease passed to another holder): nothing written.
var ErrFenced = errors.New("fence lost: another holder owns the lease, nothing written")

// Fence makes a compare-and-set write only while the string Key (a lease,
// in the store's hash tag) holds Token.
type Fence struct{ Key, Token string }

// casScript sets ARGV[2] to ARGV[3] ("" = delete) only if its shard is
// ARGV[4] ("" = none), and logs the change like any set or del. With a
// third key (a Fence) it first checks that key holds ARGV[5]. It returns
// {1, id}: done (id is the change's, or the log's last ID when the value
// already was ARGV[3]), {0, current} ("" = none) with nothing written, or
// {2, ”}: the fence is lost, nothing written.
var casScript = redis.NewScript(prologue + `
if KEYS[3] and redis.call('GET', KEYS[3]) ~= ARGV[5] then return {2, ''} end
local u, want, expected = ARGV[2], ARGV[3], ARGV[4]
local have = get(u)
local hv = have or ''
if hv ~= expected then return {0, hv} end
if hv == want then return {1, lastid()} end
local w = want
if want == '' then w = false end
local id, err = commit({u}, {w})
if not id then return failed(err) end
return {1, id}
`)

// SetIf assigns a.User to a.Shard only if the user's shard is now expected
// ("" = the user has none), and returns the change-log ID to wait for (the
// log's last ID when expected already is a.Shard: nothing to write). Any
// other current value writes nothing and returns a *ChangedError saying
// what it is. The write is atomic and logged like Set's.
func (s *Store) SetIf(ctx context.Context, a Assignment, expected string) (string, error) {
	if err := a.Validate(); err != nil {
		return "", err
	}
	return s.cas(ctx, a.User, a.Shard, expected, nil)
}

// SetIfFenced is SetIf that writes only while fence.Key holds fence.Token
// (ErrFenced otherwise, nothing written), checked in the same atomic script.
func (s *Store) SetIfFenced(ctx context.Context, a Assignment, expected string, fence Fence) (string, error) {
	if err := a.Validate(); err != nil {
		return "", err
	}
	return s.cas(ctx, a.User, a.Shard, expected, &fence)
}

// DelIfFenced is DelIf that writes only while fence.Key holds fence.Token
// (ErrFenced otherwise, nothing written), checked in the same atomic script.
func (s *Store) DelIfFenced(ctx context.Context, user, expected string, fence Fence) (string, error) {
	if err := ValidateUser(user); err != nil {
		return "", err
	}
	return s.cas(ctx, user, "", expected, &fence)
}

// DelIf removes user's assignment only if its shard is now expected ("" =
// none: nothing to remove), and returns the change-log ID to wait for. Any
// other current value writes nothing and returns a *ChangedError.
func (s *Store) DelIf(ctx context.Context, user, expected string) (string, error) {
	if err := ValidateUser(user); err != nil {
		return "", err
	}
	return s.cas(ctx, user, "", expected, nil)
}

func (s *Store) cas(ctx context.Context, user, want, expected string, fence *Fence) (string, error) {
	if expected != "" {
		if err := ValidateShard(expected); err != nil {
			return "", err
		}
	}
	w, wait, release, err := s.pin(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	keys, args := []string{s.UsersKey(), s.LogKey()}, []any{s.maxLen, user, want, expected}
	if fence != nil {
		keys, args = append(keys, fence.Key), append(args, fence.Token)
	}
	res, err := casScript.Run(ctx, w, keys, args...).Slice()
	if err != nil {
		return "", fmt.Errorf("redis compare-and-set %q: %w", user, err)
	}
	if len(res) != 2 {
		return "", fmt.Errorf("redis compare-and-set %q: unexpected reply %v", user, res)
	}
	ok, _ := res[0].(int64)
	v, isStr := res[1].(string)
	if !isStr {
		return "", fmt.Errorf("redis compare-and-set %q: unexpected reply %v", user, res)
	}
	switch ok {
	case 1:
	case 2:
		return "", fmt.Errorf("compare-and-set %q: %w", user, ErrFenced)
	default:
		return "", &ChangedError{User: user, Expected: expected, Current: v}
	}
	if err := wait(ctx); err != nil {
		return v, fmt.Errorf("redis compare-and-set %q: %w", user, err)
	}
	return v, nil
}

package maps

import (
	"context"
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

// casScript sets ARGV[2] to ARGV[3] ("" = delete) only if its shard is
// ARGV[4] ("" = none), and logs the change like any set or del. It returns
// {1, id}: done (id is the change's, or the log's last ID when the value
// already was ARGV[3]), or {0, current} ("" = none) with nothing written.
var casScript = redis.NewScript(prologue + `
local u, want, expected = ARGV[2], ARGV[3], ARGV[4]
local have = get(u)
local hv = have or ''
if hv ~= expected then return {0, hv} end
if hv == want then return {1, lastid()} end
local w = {u, want}
if want == '' then w = {u, false} end
local id, err = commit({w})
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
	return s.cas(ctx, a.User, a.Shard, expected)
}

// DelIf removes user's assignment only if its shard is now expected ("" =
// none: nothing to remove), and returns the change-log ID to wait for. Any
// other current value writes nothing and returns a *ChangedError.
func (s *Store) DelIf(ctx context.Context, user, expected string) (string, error) {
	if err := ValidateUser(user); err != nil {
		return "", err
	}
	return s.cas(ctx, user, "", expected)
}

func (s *Store) cas(ctx context.Context, user, want, expected string) (string, error) {
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
	res, err := casScript.Run(ctx, w, []string{s.UsersKey(), s.LogKey()}, s.maxLen, user, want, expected).Slice()
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
	if ok != 1 {
		return "", &ChangedError{User: user, Expected: expected, Current: v}
	}
	if err := wait(ctx); err != nil {
		return v, fmt.Errorf("redis compare-and-set %q: %w", user, err)
	}
	return v, nil
}

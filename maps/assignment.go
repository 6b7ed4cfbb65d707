// Package maps holds shardmap's domain: user -> shard assignments, the rules
// that keep them safe to hand to HAProxy, the map file on disk and the Redis
// store that is the source of truth.
package maps

import (
	"errors"
	"fmt"
)

// Limits on the two halves of an assignment.
const (
	MaxUserLen  = 256
	MaxShardLen = 64
)

// ErrInvalid is wrapped by every validation error, so callers can tell bad
// input (exit 2) from an operational failure (exit 1) with errors.Is.
var ErrInvalid = errors.New("invalid input")

// UserRule and ShardRule state the rules in the words used by error messages.
const (
	UserRule  = `users are 1..256 bytes of printable ASCII without space, '"', ',', ';' or '\', not starting with '#' and not ending in "<<"`
	ShardRule = `shards are HAProxy backend names: 1..64 bytes of [A-Za-z0-9._:-]`
)

// HoldShard is the backend a user (or a logical shard) is routed to while
// its data moves with `mapctl move --freeze`: the rendered HAProxy config
// has a backend of this name that answers every request with 503 and a
// Retry-After header, so no write lands on either shard during the copy.
// It is a valid shard name, known to the store once a syncer has published
// HAProxy's backends, and never a destination of a move or a rebalance.
const HoldShard = "shardmap_hold"

// Assignment routes one user to one shard.
type Assignment struct {
	User  string
	Shard string
}

// Validate checks both halves of the assignment.
func (a Assignment) Validate() error {
	if err := ValidateUser(a.User); err != nil {
		return err
	}
	return ValidateShard(a.Shard)
}

// ValidateUser reports whether u can be a key in the map: it must be a cookie
// value that can neither corrupt the map file nor change the meaning of a
// Runtime API command line. The error names the input and the rule it broke.
func ValidateUser(u string) error {
	if len(u) == 0 || len(u) > MaxUserLen {
		return invalid("user", u, fmt.Sprintf("length %d", len(u)), UserRule)
	}
	if u[0] == '#' {
		return invalid("user", u, "starts with '#'", UserRule)
	}
	if len(u) >= 2 && u[len(u)-2:] == "<<" {
		// A command line ending in "<<" switches the Runtime API to payload mode.
		return invalid("user", u, `ends in "<<"`, UserRule)
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if c <= ' ' || c >= 0x7f || c == '"' || c == ',' || c == ';' || c == '\\' {
			return invalid("user", u, badByte(c, i), UserRule)
		}
	}
	return nil
}

// ValidateShard reports whether s is a valid HAProxy backend name. The error
// names the input and the rule it broke.
func ValidateShard(s string) error {
	if len(s) == 0 || len(s) > MaxShardLen {
		return invalid("shard", s, fmt.Sprintf("length %d", len(s)), ShardRule)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return invalid("shard", s, badByte(c, i), ShardRule)
		}
	}
	return nil
}

// badByte names the byte c at offset i (from 0): printable ASCII as itself,
// anything else in hex, since a lone byte of a UTF-8 sequence or a control
// byte printed as a character misleads ("'Ã'" for 0xc3).
func badByte(c byte, i int) string {
	if c > ' ' && c < 0x7f {
		return fmt.Sprintf("byte %q at %d", c, i)
	}
	return fmt.Sprintf("byte 0x%02x at %d", c, i)
}

// invalid builds an error that names the input (quoted and cut to a readable
// length) and the rule it broke.
func invalid(what, input, why, rule string) error {
	shown := input
	if len(shown) > 80 {
		shown = shown[:80] + "..."
	}
	return fmt.Errorf("%w: %s %q: %s; %s", ErrInvalid, what, shown, why, rule)
}

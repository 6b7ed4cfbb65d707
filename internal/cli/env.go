// Package cli holds what shardmap's commands share: defaults, environment
// variables and the Redis connection.
package cli

import (
	"context"
	"net/url"
	"os"
	"strings"
)

// Defaults and the environment variables that override them.
const (
	DefaultRedis = "redis://127.0.0.1:6379/0"
	EnvRedis     = "SHARDMAP_REDIS"
	EnvPrefix    = "SHARDMAP_PREFIX"
	EnvSocket    = "SHARDMAP_SOCKET"
	EnvMap       = "SHARDMAP_MAP"
)

// Env returns the environment variable key, or def when it is unset.
func Env(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

// quiet drops go-redis's own log lines (one per failed dial and retry): our
// commands report a failure once, in their own words.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// hidden stands for a string that may be a password as a whole.
const hidden = "xxxxx (not shown: not a URL with a scheme and a host)"

// RedactURL returns u safe to print. Of a URL with a scheme and a host, the
// password of the user part and the value of every query parameter are
// replaced by "xxxxx" (a password may come as ?password=). In a string that
// does not parse but has an "@", everything between "//" (or the start) and
// the last "@" is replaced, since where the password ends cannot be known.
// Anything else (no scheme or host: it may be a password typed in the wrong
// place) is not shown at all. Every message, log line and flag default that
// shows a Redis URL must show RedactURL(u), never u.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		at := strings.LastIndex(u, "@")
		if at < 0 {
			return hidden
		}
		start := 0
		if i := strings.Index(u, "//"); i >= 0 && i < at {
			start = i + 2
		}
		return u[:start] + "xxxxx" + u[at:]
	}
	if p.Scheme == "" || p.Host == "" {
		return hidden
	}
	if p.RawQuery != "" {
		q := p.Query()
		for k := range q {
			q[k] = []string{"xxxxx"}
		}
		p.RawQuery = q.Encode()
	}
	p.Fragment, p.RawFragment = "", ""
	return p.Redacted()
}

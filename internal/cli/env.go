// Package cli holds what shardmap's commands share: defaults, environment
// variables and the Redis connection.
package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
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

// Redis opens a client for a redis:// URL. It does not connect yet. With
// failFast, a Redis that is down fails the first command within about a
// second instead of being retried (for one-shot commands).
func Redis(url string, failFast bool) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("--redis %q: %w", url, err)
	}
	redis.SetLogger(quiet{})
	if failFast {
		opt.DialTimeout = time.Second
		opt.MaxRetries = -1
	}
	return redis.NewClient(opt), nil
}

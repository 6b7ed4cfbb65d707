// Package cli holds what shardmap's commands share: defaults, environment
// variables and the Redis connection.
package cli

import (
	"fmt"
	"os"

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

// Redis opens a client for a redis:// URL. It does not connect yet.
func Redis(url string) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("--redis %q: %w", url, err)
	}
	return redis.NewClient(opt), nil
}

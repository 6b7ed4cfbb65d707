package maps

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// ErrWrongType means a shardmap key holds another Redis type than the one
// shardmap keeps there (someone wrote it by hand). Operations on that key
// fail with it until the key is fixed or deleted.
var ErrWrongType = errors.New("redis key of the wrong type")

// checkShardsType turns a failed command on the shards key into ErrWrongType
// when the key is not a set. It asks Redis for the key's TYPE rather than
// reading the error's text.
func (s *Store) checkShardsType(ctx context.Context, what string, err error) error {
	if typ, terr := s.rdb.Type(ctx, s.ShardsKey()).Result(); terr == nil && typ != "set" && typ != "none" {
		return fmt.Errorf("redis %s: %w: %s is a %s, want a set of shard names", what, ErrWrongType, s.ShardsKey(), typ)
	}
	return fmt.Errorf("redis %s: %w", what, err)
}

// AddShards records shard names as known (HAProxy backends that exist). An
// invalid name fails the call (ErrInvalid) before anything is written; a
// shards key of another type than a set is ErrWrongType, which a caller
// can warn about and go on.
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
		return s.checkShardsType(ctx, "add shards", err)
	}
	return nil
}

// KnownShard reports whether shard was recorded as known (ErrWrongType when
// the shards key is not a set).
func (s *Store) KnownShard(ctx context.Context, shard string) (bool, error) {
	ok, err := s.rdb.SIsMember(ctx, s.ShardsKey(), shard).Result()
	if err != nil {
		return false, s.checkShardsType(ctx, fmt.Sprintf("check shard %q", shard), err)
	}
	return ok, nil
}

// KnownShards returns the known shard names, sorted (ErrWrongType when the
// shards key is not a set).
func (s *Store) KnownShards(ctx context.Context) ([]string, error) {
	out, err := s.rdb.SMembers(ctx, s.ShardsKey()).Result()
	if err != nil {
		return nil, s.checkShardsType(ctx, "read shards", err)
	}
	sort.Strings(out)
	return out, nil
}

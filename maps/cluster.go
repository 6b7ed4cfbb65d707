package maps

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// CheckPrefix checks a key prefix for a Redis Cluster (cluster true): it
// must hold a hash tag, a non-empty "{...}" (its first "{" and the first
// "}" after it), so that every key of the store hashes to that tag's slot,
// as the two-key scripts and a one-node scan need. Without cluster any
// prefix is accepted. The error is an ErrInvalid.
func CheckPrefix(prefix string, cluster bool) error {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !cluster {
		return nil
	}
	open := strings.IndexByte(prefix, '{')
	if open >= 0 {
		if end := strings.IndexByte(prefix[open+1:], '}'); end > 0 {
			return nil
		}
	}
	return fmt.Errorf("%w: prefix %q on a Redis Cluster: want a hash tag such as %q in it, so that all its keys are in one slot", ErrInvalid, prefix, DefaultPrefix)
}

// tagNode returns the client of the node that holds the store's keys: on a
// Cluster, the primary of the prefix's hash tag slot; otherwise the client
// itself. For commands without a key (TIME, WAIT) that must go there.
func (s *Store) tagNode(ctx context.Context) (redis.UniversalClient, error) {
	cc, ok := s.rdb.(*redis.ClusterClient)
	if !ok {
		return s.rdb, nil
	}
	c, err := cc.MasterForKey(ctx, s.UsersKey())
	if err != nil {
		return nil, fmt.Errorf("redis cluster: primary of %s: %w", s.UsersKey(), err)
	}
	return c, nil
}

// ReplicaWaitError is a write that Redis made but fewer replicas than
// asked acknowledged within the timeout (WAIT): it is on the primary and
// readers see it, but a failover now could lose it.
type ReplicaWaitError struct {
	Want    int           // replicas asked for
	Got     int64         // replicas that acknowledged
	Timeout time.Duration // how long WAIT waited
}

func (e *ReplicaWaitError) Error() string {
	return fmt.Sprintf("written on the Redis primary, but only %d of %d replicas acknowledged it within %s (WAIT): a failover now could lose it",
		e.Got, e.Want, e.Timeout)
}

// WithReplicaWait returns a copy of s whose assignment writes (Set,
// SetMany, Del, Import, Fill) each run on one connection to the primary and
// are followed there by WAIT n timeout; fewer than n acknowledging replicas
// fail the write with a *ReplicaWaitError (the write itself stays). n <= 0
// returns a copy without the wait. Reads and the syncer's own keys are
// unaffected.
func (s *Store) WithReplicaWait(n int, timeout time.Duration) *Store {
	c := *s
	c.waitN, c.waitTimeout = max(n, 0), timeout
	return &c
}

// writer is where assignment writes go: the client, or one connection.
type writer interface {
	redis.Scripter
	Pipeline() redis.Pipeliner
}

// pin returns where to send an assignment write and, after it, wait (WAIT
// on the same connection, a no-op without WithReplicaWait) and release.
// WAIT counts the replicas that have every write of its connection so far,
// hence one connection for the write and its WAIT.
func (s *Store) pin(ctx context.Context) (w writer, wait func(context.Context) error, release func(), err error) {
	if s.waitN <= 0 {
		return s.rdb, func(context.Context) error { return nil }, func() {}, nil
	}
	node, err := s.tagNode(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	c, ok := node.(*redis.Client)
	if !ok {
		return nil, nil, nil, fmt.Errorf("redis replica wait: needs one server, Sentinel or Cluster, not a %T", node)
	}
	conn := c.Conn()
	wait = func(ctx context.Context) error {
		got, err := conn.Wait(ctx, s.waitN, s.waitTimeout).Result()
		if err != nil {
			return fmt.Errorf("redis WAIT %d %d: %w", s.waitN, s.waitTimeout.Milliseconds(), err)
		}
		if got < int64(s.waitN) {
			return &ReplicaWaitError{Want: s.waitN, Got: got, Timeout: s.waitTimeout}
		}
		return nil
	}
	return conn, wait, func() { conn.Close() }, nil
}

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
)

// useRedis points the stack's syncer and mapctl at url (through
// s.redis.URL, which both take) and its checks at rdb.
func (s *stack) useRedis(r *testenv.Redis, url string, rdb redis.UniversalClient) {
	if r == nil {
		r = &testenv.Redis{}
	}
	r.URL = url
	s.redis, s.store = r, maps.NewStore(rdb, "")
}

// writeUsers writes a map file of n users u0..u(n-1) over shard1..shard3.
func writeUsers(t *testing.T, n int) (string, map[string]string) {
	want := map[string]string{}
	var b strings.Builder
	for i := range n {
		u, sh := fmt.Sprintf("u%d", i), shards[1+i%3]
		want[u] = sh
		fmt.Fprintf(&b, "%s %s\n", u, sh)
	}
	p := filepath.Join(t.TempDir(), "users.map")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, want
}

// TestRedisTLS: mapctl and the syncer reach a TLS-only Redis that requires
// client certificates, with rediss:// and --redis-ca/--redis-cert/--redis-key
// (or their environment variables); a wrong CA fails, saying why.
func TestRedisTLS(t *testing.T) {
	certs := testenv.MakeCerts(t)
	r := testenv.StartRedisTLS(t, certs)
	s := newStack(t)
	s.useRedis(r, r.URL, r.Client(t))
	files := []string{"--redis-ca", certs.CA, "--redis-cert", certs.ClientCert, "--redis-key", certs.ClientKey}
	s.startSyncer(files...)
	s.mustMapctl(append([]string{"set", "alice", "shard1", "--wait"}, files...)...)
	s.mustRoute("alice", "shard1")

	t.Setenv(cli.EnvRedisCA, certs.CA)
	t.Setenv(cli.EnvRedisCert, certs.ClientCert)
	t.Setenv(cli.EnvRedisKey, certs.ClientKey)
	if out := s.mustMapctl("get", "alice"); !strings.Contains(out, "shard1") {
		t.Errorf("mapctl get over TLS, files from the environment: %q", out)
	}
	_, errs, code := s.mapctl("get", "alice", "--redis-ca", certs.OtherCA)
	if code != 1 || !strings.Contains(errs, "certificate signed by unknown authority") || !strings.Contains(errs, "--redis-ca") {
		t.Errorf("wrong CA: exit %d, %q; want exit 1 saying the certificate is not signed by --redis-ca", code, errs)
	}
	t.Setenv(cli.EnvRedisCert, "")
	t.Setenv(cli.EnvRedisKey, "")
	if _, errs, code := s.mapctl("get", "alice"); code != 1 {
		t.Errorf("no client certificate: exit %d, %q; want 1", code, errs)
	}
	if _, errs, code := s.mapctl("--redis", strings.Replace(r.URL, "rediss:", "redis:", 1), "get", "alice"); code != 2 || !strings.Contains(errs, "need a TLS URL") {
		t.Errorf("CA with redis://: exit %d, %q; want 2", code, errs)
	}
}

// TestRedisCluster: on a 3-primary Redis Cluster, mapctl set, import and
// set --wait, and the syncer, work; every key is on the node of the
// {shardmap} hash tag's slot; a prefix without a hash tag is refused.
func TestRedisCluster(t *testing.T) {
	c := testenv.StartCluster(t, 3)
	s := newStack(t)
	cc := c.Client(t)
	s.useRedis(nil, c.URL, cc)
	s.mustMapctl("set", "alice", "shard1", "--force")
	file, want := writeUsers(t, 3000)
	s.mustMapctl("import", file, "--force")
	s.startSyncer()
	s.mustMapctl("set", "alice", "shard2", "--wait")
	s.mustRoute("alice", "shard2")
	s.waitConverged(60 * time.Second)
	want["alice"] = "shard2"
	if d := diff(want, s.redisMap()); d != "" {
		t.Errorf("redis: %s", d)
	}
	if out := s.mustMapctl("list"); strings.Count(out, "\n") < len(want) {
		t.Errorf("mapctl list on a cluster: %d lines, want %d", strings.Count(out, "\n"), len(want))
	}
	s.mustMapctl("del", "alice", "--wait")

	ctx := context.Background()
	home, err := cc.MasterForKey(ctx, s.store.UsersKey())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := home.Keys(ctx, "*").Result()
	if err != nil || len(keys) < 4 {
		t.Fatalf("keys on the tag's node: %v %v", keys, err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, maps.DefaultPrefix+":") {
			t.Errorf("key %q lacks the hash tag", k)
		}
	}
	total := 0
	for _, r := range c.Nodes {
		n, err := r.Client(t).DBSize(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		total += int(n)
	}
	if total != len(keys) {
		t.Errorf("%d keys in the cluster, %d on the tag's node: some key is elsewhere", total, len(keys))
	}
	if _, errs, code := s.mapctl("--prefix", "shardmap", "get", "bob"); code != 2 || !strings.Contains(errs, "hash tag") {
		t.Errorf("untagged prefix on a cluster: exit %d, %q; want 2 naming the hash tag", code, errs)
	}
}

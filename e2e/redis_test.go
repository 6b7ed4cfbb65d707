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
	// --redis-wait-replicas runs the script and WAIT on one connection to
	// the tag's primary, which has no replica here.
	if _, errs, code := s.mapctl("set", "carol", "shard1", "--force", "--redis-wait-replicas", "1", "--redis-wait-timeout", "100ms"); code != 1 || !strings.Contains(errs, "only 0 of 1 replicas") {
		t.Errorf("set with a replica wait on a cluster without replicas: exit %d, %q", code, errs)
	}
	if sh, _, err := s.store.Get(ctx, "carol"); err != nil || sh != "shard1" {
		t.Errorf("the set is on the primary all the same: %q %v", sh, err)
	}

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
	for _, args := range [][]string{{"get", "bob"}, {"set", "bob", "shard1", "--force"}} {
		if _, errs, code := s.mapctl(append([]string{"--prefix", "shardmap"}, args...)...); code != 2 || !strings.Contains(errs, "hash tag") {
			t.Errorf("untagged prefix on a cluster, %v: exit %d, %q; want 2 naming the hash tag", args, code, errs)
		}
	}
}

// TestRedisSentinelFailover: with a primary, a replica and three sentinels,
// the syncer and mapctl reach Redis through the sentinels
// (redis-sentinel://); mapctl sets (with --redis-wait-replicas 1) run while
// SENTINEL FAILOVER promotes the replica, and every set mapctl acknowledged
// ends up in HAProxy's live map. (Without --redis-wait-replicas, sets
// acknowledged by the old primary after the promotion are lost: seen.)
func TestRedisSentinelFailover(t *testing.T) {
	ctx := context.Background()
	primary := testenv.StartRedis(t)
	replica := testenv.StartRedis(t, "--replicaof", "127.0.0.1", fmt.Sprint(primary.Port))
	rc := replica.Client(t)
	testenv.WaitFor(t, 20*time.Second, "the replica in sync", func() error {
		if info := rc.Info(ctx, "replication").Val(); !strings.Contains(info, "master_link_status:up") {
			return fmt.Errorf("replica: %s", info)
		}
		return nil
	})
	var addrs []string
	var sentinels []*testenv.Sentinel
	for range 3 {
		sn := testenv.StartSentinel(t, "mymaster", primary.Port, 2)
		sentinels = append(sentinels, sn)
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", sn.Port))
	}
	for _, sn := range sentinels {
		sc := sn.Client(t)
		testenv.WaitFor(t, 30*time.Second, "sentinels to know the replica and each other", func() error {
			reps, err := sc.Replicas(ctx, "mymaster").Result()
			if err != nil || len(reps) != 1 || reps[0]["flags"] != "slave" {
				return fmt.Errorf("replicas %v %v", reps, err)
			}
			others, err := sc.Sentinels(ctx, "mymaster").Result()
			if err != nil || len(others) != 2 {
				return fmt.Errorf("sentinels %v %v", others, err)
			}
			return nil
		})
	}
	url := "redis-sentinel://" + strings.Join(addrs, ",") + "/mymaster/0"
	rdb, err := cli.Redis(url, false, cli.TLSFiles{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	s := newStack(t)
	s.useRedis(nil, url, rdb)
	s.startSyncer()

	sc := sentinels[0].Client(t)
	promoted := func() bool {
		a, err := sc.GetMasterAddrByName(ctx, "mymaster").Result()
		return err == nil && len(a) == 2 && a[1] == fmt.Sprint(replica.Port)
	}
	acked := map[string]string{}
	const maxSets, before, after = 300, 10, 20
	deadline := time.Now().Add(90 * time.Second)
	failedOver, ackedAfter, failed := false, 0, 0
	for i := 0; i < maxSets && time.Now().Before(deadline) && ackedAfter < after; i++ {
		if i == before {
			if err := sc.Failover(ctx, "mymaster").Err(); err != nil {
				t.Fatalf("SENTINEL FAILOVER: %v", err)
			}
		}
		if !failedOver && i >= before && promoted() {
			failedOver = true
			t.Logf("failover seen after %d sets", i)
		}
		u, sh := fmt.Sprintf("churn%d", i), shards[1+i%3]
		_, errs, code := s.mapctl("set", u, sh, "--force", "--redis-wait-replicas", "1", "--timeout", "5s")
		switch {
		case code == 0:
			acked[u] = sh
			if failedOver {
				ackedAfter++
			}
		case code == 1:
			failed++
			t.Logf("set %s: %s", u, strings.TrimSpace(errs))
		default:
			t.Fatalf("set %s: exit %d: %s", u, code, errs)
		}
	}
	if !failedOver || ackedAfter < after {
		t.Fatalf("failover seen %v, %d sets acknowledged after it (want %d), %d failed", failedOver, ackedAfter, after, failed)
	}
	t.Logf("%d sets acknowledged, %d failed", len(acked), failed)
	testenv.WaitFor(t, 60*time.Second, "every acknowledged set in HAProxy's live map", func() error {
		live, err := s.live()
		if err != nil {
			return err
		}
		for u, sh := range acked {
			if live[u] != sh {
				return fmt.Errorf("%s: live map has %q, mapctl acknowledged %q", u, live[u], sh)
			}
		}
		return nil
	})
}

// readmeACL returns the README's ACL file line for user, so that the test
// checks exactly what the README tells users to run.
func readmeACL(t *testing.T, user string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "user "+user+" ") {
			return l
		}
	}
	t.Fatalf("README.md has no ACL line for %s", user)
	return ""
}

// TestRedisACL: with the README's least-privilege users (its ACL file
// lines, loaded with --aclfile), mapctl (set, import,
// del, get, list, status, syncers, reconcile --force, set --wait) and the
// syncer do their jobs, and nothing more: the mapctl user cannot FLUSHALL,
// CONFIG or touch the syncers' keys; the syncer user cannot change the
// assignments or the log.
func TestRedisACL(t *testing.T) {
	ctx := context.Background()
	acl := filepath.Join(t.TempDir(), "users.acl")
	mu, su := "shardmap-mapctl", "shardmap-syncer"
	lines := "user default on nopass ~* &* +@all\n" + strings.ReplaceAll(readmeACL(t, mu), "PASSWORD", "m-secret") + "\n" +
		strings.ReplaceAll(readmeACL(t, su), "PASSWORD", "s-secret") + "\n"
	if err := os.WriteFile(acl, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	r := testenv.StartRedis(t, "--aclfile", acl)
	s := newStack(t)
	admin := r.Client(t)
	s.useRedis(r, r.URL, admin)
	mapctlURL := strings.Replace(r.URL, "redis://", "redis://"+mu+":m-secret@", 1)
	syncerURL := strings.Replace(r.URL, "redis://", "redis://"+su+":s-secret@", 1)
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := admin.Do(ctx, "ACL", "LOG").Result()
			t.Logf("ACL LOG: %v", log)
		}
	})
	s.redis.URL = syncerURL
	s.startSyncer()
	s.redis.URL = mapctlURL
	s.mustMapctl("set", "alice", "shard1", "--wait")
	file, _ := writeUsers(t, 50)
	s.mustMapctl("import", file, "--wait")
	s.mustMapctl("del", "u1", "--wait")
	if out := s.mustMapctl("get", "alice"); !strings.Contains(out, "shard1") {
		t.Errorf("get: %q", out)
	}
	s.mustMapctl("list")
	s.mustMapctl("export")
	s.mustMapctl("syncers")
	s.mustMapctl("status")
	s.mustMapctl("reconcile", "--force")
	s.mustMapctl("move", "u2", "--to", "shard1", "--copy-cmd", "true")
	s.mustMapctl("moves", "--all")
	if o := s.mustMapctl("moves", "--prune", "--older-than", "0s"); !strings.HasPrefix(o, "ID") || !strings.Contains(o, "removed 1 ") {
		t.Errorf("moves --prune: %q", o)
	}
	s.mustRoute("u2", "shard1")
	s.mustRoute("alice", "shard1")
	s.waitConverged(30 * time.Second)
	if n, err := admin.Do(ctx, "ACL", "LOG").Slice(); err != nil || len(n) != 0 {
		t.Errorf("ACL LOG after the jobs: %v %v, want no denial", n, err)
	}

	as := func(user, pw string) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.redis.Port), Username: user, Password: pw})
		t.Cleanup(func() { c.Close() })
		return c
	}
	denied := func(who string, cmd *redis.Cmd) {
		t.Helper()
		if err := cmd.Err(); err == nil || !strings.HasPrefix(err.Error(), "NOPERM") {
			t.Errorf("%s %v: %v, want NOPERM", who, cmd.Args(), err)
		}
	}
	m, sy := as(mu, "m-secret"), as(su, "s-secret")
	denied(mu, m.Do(ctx, "FLUSHALL"))
	denied(mu, m.Do(ctx, "CONFIG", "GET", "*"))
	denied(mu, m.Do(ctx, "KEYS", "*"))
	denied(mu, m.Do(ctx, "HSET", s.store.SyncersKey(), "e2e", "{}"))
	denied(mu, m.Do(ctx, "SET", "other", "1"))
	denied(mu, m.Do(ctx, "SET", s.store.UsersKey(), "1"))
	denied(mu, m.Do(ctx, "DEL", s.store.UsersKey()))
	denied(su, sy.Do(ctx, "HSET", s.store.UsersKey(), "mallory", "shard1"))
	denied(su, sy.Do(ctx, "XADD", s.store.LogKey(), "*", "op", "set", "user", "mallory", "shard", "shard1"))
	denied(su, sy.Do(ctx, "DEL", s.store.UsersKey()))
	denied(su, sy.Do(ctx, "FLUSHALL"))
	// A script cannot do more than its caller: the syncer user's EVAL of
	// an HSET on the hash is refused too.
	denied(su, sy.Do(ctx, "EVAL", "return redis.call('HSET', KEYS[1], 'mallory', 'shard1')", 1, s.store.UsersKey()))
}

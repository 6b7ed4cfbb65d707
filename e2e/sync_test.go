package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// mapctl set moves the user's very next request; del sends it back to the
// default; a loop of 1,000 sets ends with the live map, the file and Redis
// identical; HAProxy was never reloaded.
func TestSetRoutesDelRestoresDefault(t *testing.T) {
	s := newStack(t)
	pid := s.haproxyPid()
	if int64(s.haproxy.Pid()) != pid {
		t.Fatalf("show info Pid %d, started %d", pid, s.haproxy.Pid())
	}
	s.startSyncer()

	s.mustRoute("alice", "shard0")
	s.mustMapctl("set", "alice", "shard3", "--wait")
	s.mustRoute("alice", "shard3")
	if out := s.mustMapctl("get", "alice"); out != "shard3\n" {
		t.Fatalf("mapctl get: %q", out)
	}
	s.mustMapctl("set", "alice", "shard1", "--wait")
	s.mustRoute("alice", "shard1")
	s.mustMapctl("del", "alice", "--wait")
	s.mustRoute("alice", "shard0")
	if _, _, code := s.mapctl("get", "alice"); code != 1 {
		t.Fatalf("get of a deleted user: exit %d, want 1", code)
	}

	// 1,000 sets through mapctl, over 100 users, so that adds, sets of a
	// present key and repeated values all occur; every 10th user deleted.
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 1000; i++ {
		u := fmt.Sprintf("user%03d", rng.IntN(100))
		s.mustMapctl("set", u, shards[rng.IntN(len(shards))])
	}
	for i := 0; i < 100; i += 10 {
		s.mapctl("del", fmt.Sprintf("user%03d", i))
	}
	s.waitConverged(20 * time.Second)
	for u, sh := range s.redisMap() {
		s.mustRoute(u, sh)
	}
	s.mustRoute("user000", "shard0") // deleted: the default

	if got := s.haproxyPid(); got != pid || s.haproxy.Exited() {
		t.Fatalf("HAProxy PID changed from %d to %d: it was reloaded or restarted", pid, got)
	}
	s.stopSyncer()
}

// A syncer started against a Redis that already holds 100k assignments puts
// all of them into the live map and the file, and requests route by them.
func TestSyncerLoads100k(t *testing.T) {
	s := newStack(t)
	var as []maps.Assignment
	for i := 0; i < 100_000; i++ {
		as = append(as, maps.Assignment{User: fmt.Sprintf("u%07d", i), Shard: shards[i%len(shards)]})
	}
	if _, err := s.store.Import(context.Background(), as, 1000, nil); err != nil {
		t.Fatal(err)
	}
	s.startSyncer()
	s.waitConverged(60 * time.Second)
	live, _ := s.live()
	if len(live) != 100_000 {
		t.Fatalf("live map has %d entries", len(live))
	}
	for _, i := range []int{0, 1, 2, 3, 4999, 50_001, 99_998, 99_999} {
		s.mustRoute(as[i].User, as[i].Shard)
	}
	s.waitLog(10*time.Second, "full sync", "entries=100000")
}

// mapctl set --wait returns only once the live map holds the change: the map
// is read right after it returns, with no polling.
func TestSetWaitReturnsAfterLive(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	for i := 0; i < 30; i++ {
		u, sh := fmt.Sprintf("w%d", i%7), shards[i%len(shards)]
		s.mustMapctl("set", u, sh, "--wait")
		live, err := s.live()
		if err != nil {
			t.Fatal(err)
		}
		if live[u] != sh {
			t.Fatalf("set %s %s --wait returned, live map says %q", u, sh, live[u])
		}
		s.mustRoute(u, sh)
	}
	s.mustMapctl("del", "w1", "--wait")
	if live, _ := s.live(); live["w1"] != "" {
		t.Fatalf("del --wait returned, live map still has w1 -> %s", live["w1"])
	}

	// With the syncer gone, --wait fails (exit 1) and says why; the change
	// stays in Redis.
	s.stopSyncer()
	_, errs, code := s.mapctl("set", "w2", "shard1", "--wait", "--timeout", "7s")
	if code != 1 || !strings.Contains(errs, "no syncer reported") {
		t.Fatalf("--wait with no syncer: exit %d, %q", code, errs)
	}
	if out := s.mustMapctl("get", "w2"); out != "shard1\n" {
		t.Fatalf("change lost: %q", out)
	}
}

// Bad input never reaches HAProxy: mapctl refuses it (exit 2, naming the
// input and the rule); entries written to Redis by someone else are skipped
// and counted; unknown shards are refused unless --force.
func TestBadInputNeverReachesHAProxy(t *testing.T) {
	s := newStack(t)
	// A second map in the same HAProxy would be the target of an injected
	// "clear map": the test's config has only one, so count its entries.
	ctx := context.Background()
	rdb := s.redis.Client(t)
	s.store.Set(ctx, maps.Assignment{User: "keep", Shard: "shard2"})
	hostile := []string{
		"evil\nclear map " + s.mapPath,
		"evil;clear map " + s.mapPath,
		"evil shard3",
		"evil\n\nadd map " + s.mapPath + " pwned shard3",
		"evil<<",
		"#0x1",
		`a\ b`,
		"",
		strings.Repeat("x", 257),
	}
	for _, u := range hostile {
		_, errs, code := s.mapctl("set", u, "shard1")
		if code != 2 || !strings.Contains(errs, "users are") {
			t.Errorf("mapctl set %q: exit %d, %q; want 2 naming the rule", u, code, errs)
		}
	}
	for _, sh := range []string{"shard1;clear map " + s.mapPath, "shard1\n", "shard 1", "shard1\n\nclear map " + s.mapPath} {
		_, errs, code := s.mapctl("set", "bob", sh)
		if code != 2 || !strings.Contains(errs, "backend names") {
			t.Errorf("mapctl set bob %q: exit %d, %q; want 2 naming the rule", sh, code, errs)
		}
	}
	// Someone else writes garbage straight into Redis: hash and log.
	for _, u := range hostile[:5] {
		rdb.HSet(ctx, s.store.UsersKey(), u, "shard1")
	}
	rdb.HSet(ctx, s.store.UsersKey(), "big", strings.Repeat("s", 1<<20), "inj", "shard1\nclear map "+s.mapPath)
	s.startSyncer()
	s.waitConverged(20 * time.Second)
	for _, u := range hostile[:4] {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: s.store.LogKey(), Values: []string{"op", "set", "user", u, "shard", "shard1"}})
	}
	s.mustMapctl("set", "after", "shard1", "--wait")
	live, err := s.live()
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 2 || live["keep"] != "shard2" || live["after"] != "shard1" {
		t.Fatalf("live map %v, want exactly keep and after", live)
	}
	s.mustRoute("keep", "shard2")
	s.mustRoute("pwned", "shard0")
	s.waitLog(10*time.Second, "skipped invalid entry")
	file, err := os.ReadFile(s.mapPath)
	if err != nil || strings.Contains(string(file), "evil") || strings.Contains(string(file), "clear") {
		t.Fatalf("map file holds hostile input: %v\n%s", err, file)
	}

	// Unknown shard: refused (exit 2) listing the known ones, unless --force.
	_, errs, code := s.mapctl("set", "carol", "shard9")
	if code != 2 || !strings.Contains(errs, `shard "shard9" is not a backend`) || !strings.Contains(errs, "shard0, shard1, shard2, shard3") {
		t.Fatalf("unknown shard: exit %d, %q", code, errs)
	}
	s.mustMapctl("set", "carol", "shard9", "--force")

	// Usage errors exit 2.
	if _, _, code := s.mapctl("set", "onlyuser"); code != 2 {
		t.Fatalf("missing argument: exit %d, want 2", code)
	}
	if _, _, code := s.mapctl("set", "a", "b", "--nope"); code != 2 {
		t.Fatalf("unknown flag: exit %d, want 2", code)
	}
}

// import, list, export and status agree with each other and with HAProxy.
func TestImportListExportStatus(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	var src strings.Builder
	src.WriteString("# a comment\n")
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&src, "imp%04d %s\n", i, shards[i%len(shards)])
	}
	in := s.dir + "/in.map"
	os.WriteFile(in, []byte(src.String()), 0o644)
	s.mustMapctl("import", in, "--wait")
	s.mustRoute("imp0002", "shard2")

	// A bad file writes nothing and names the lines.
	os.WriteFile(in, []byte("ok1 shard1\nbad;user shard1\nok2 shard1 x\n"), 0o644)
	_, errs, code := s.mapctl("import", in)
	if code != 2 || !strings.Contains(errs, "line 2") || !strings.Contains(errs, "line 3") || !strings.Contains(errs, "nothing written") {
		t.Fatalf("bad import: exit %d, %q", code, errs)
	}
	if _, _, code := s.mapctl("get", "ok1"); code != 1 {
		t.Fatal("bad import wrote ok1")
	}

	list := s.mustMapctl("list", "--shard", "shard1")
	if n := strings.Count(list, "\n"); n != 750 || !strings.HasPrefix(list, "imp0001 shard1\n") {
		t.Fatalf("list --shard shard1: %d lines, starts %.40q", n, list)
	}
	export := s.mustMapctl("export")
	mf, err := maps.ParseMapFile(strings.NewReader(export))
	if err != nil || len(mf.Entries) != 3000 || mf.LogID == "" {
		t.Fatalf("export: %d entries, id %q, %v", len(mf.Entries), mf.LogID, err)
	}
	s.waitConverged(20 * time.Second)
	out, errs, code := s.mapctl("status", "--socket", s.socket, "--map", s.mapPath)
	if code != 0 || !strings.Contains(out, "redis:  3000 assignments") || !strings.Contains(out, "live:   3000 entries (0 duplicate keys)") ||
		strings.Count(out, "in sync") != 2 || !strings.Contains(out, "syncer e2e: ready") {
		t.Fatalf("status: exit %d\n%s%s", code, out, errs)
	}

	// Drift by hand over the socket shows up in status (exit 1).
	res, err := s.rt.Apply(context.Background(), s.mapPath, handEdit())
	if err != nil || res[0] != nil {
		t.Fatalf("hand edit: %v %v", err, res)
	}
	out, _, code = s.mapctl("status", "--socket", s.socket, "--map", s.mapPath)
	if code != 1 || !strings.Contains(out, "live:   3001 entries (0 duplicate keys) in "+s.socket+": DRIFT: 0 missing, 1 extra") {
		t.Fatalf("status after a hand edit: exit %d\n%s", code, out)
	}
}

func handEdit() []runtime.Op {
	return []runtime.Op{{Kind: runtime.Add, Key: "intruder", Value: "shard3"}}
}

package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// seed assigns n users u0000.. to shards in turn and waits until it is live.
func (s *stack) seed(n int) map[string]string {
	s.t.Helper()
	var as []maps.Assignment
	want := map[string]string{}
	for i := 0; i < n; i++ {
		a := maps.Assignment{User: fmt.Sprintf("u%04d", i), Shard: shards[i%len(shards)]}
		as = append(as, a)
		want[a.User] = a.Shard
	}
	if _, err := s.store.Import(context.Background(), as, 500, nil); err != nil {
		s.t.Fatal(err)
	}
	s.waitConverged(20 * time.Second)
	return want
}

// checkRoutes fails the test if any of the users is not routed to its shard.
func (s *stack) checkRoutes(want map[string]string, sample int) {
	s.t.Helper()
	n := 0
	for u, sh := range want {
		if n++; n > sample {
			return
		}
		s.mustRoute(u, sh)
	}
}

// Redis comes back empty: the syncer must not wipe the live map. It refuses,
// says so in status, keeps serving; restore seeds Redis back from the file;
// reconcile --force lets a human empty the map on purpose.
func TestRedisEmptiedIsRefused(t *testing.T) {
	s := newStack(t)
	health := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	s.startSyncer("--listen", health)
	want := s.seed(200)
	rdb := s.redis.Client(t)

	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 15*time.Second, "status to report the refused reconcile", func() error {
		out, _, code := s.mapctl("status")
		if code != 1 || !strings.Contains(out, "NOT READY: guard: refusing to delete 200 of 200 live entries") {
			return fmt.Errorf("exit %d: %s", code, out)
		}
		return nil
	})
	live, err := s.live()
	if err != nil || len(live) != 200 {
		t.Fatalf("live map after FLUSHALL: %d entries, %v", len(live), err)
	}
	s.checkRoutes(want, 50)
	s.waitLog(10*time.Second, "refusing to delete")
	// /readyz says not ready; /metrics counts the refusal.
	if resp, err := s.http.Get("http://" + health + "/readyz"); err != nil || resp.StatusCode != 503 {
		t.Fatalf("/readyz during the refusal: %v %v", resp, err)
	}
	resp, err := s.http.Get("http://" + health + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`(?m)^shardmap_syncer_refused_reconciles_total\{map="[^"]+"\} [1-9]`).Match(metrics) ||
		!regexp.MustCompile(`(?m)^shardmap_syncer_ready\{map="[^"]+"\} 0$`).Match(metrics) {
		t.Fatalf("/metrics during the refusal:\n%s", metrics)
	}
	if n := strings.Count(s.syncer.Output(), "refusing to delete"); n != 1 {
		t.Errorf("the refusal was logged %d times, want once (per state change)", n)
	}

	s.mustMapctl("restore", "--from", s.mapPath, "--wait")
	s.waitReady(15 * time.Second)
	s.waitConverged(15 * time.Second)
	if len(s.redisMap()) != 200 {
		t.Fatalf("restore gave %d assignments", len(s.redisMap()))
	}

	// A human decides Redis is right, empty as it is.
	rdb.FlushAll(context.Background())
	if _, _, code := s.mapctl("reconcile"); code != 2 {
		t.Fatalf("reconcile without --force: exit %d, want 2", code)
	}
	s.mustMapctl("reconcile", "--force")
	testenv.WaitFor(t, 15*time.Second, "forced reconcile to empty the live map", func() error {
		live, err := s.live()
		if err != nil || len(live) != 0 {
			return fmt.Errorf("%d entries (%v)", len(live), err)
		}
		return nil
	})
	s.mustRoute("u0001", "shard0")
}

// Hand edits of the live map (over the socket) and of users.map are put back
// by the periodic reconcile, which logs what it corrected.
func TestDriftIsCorrected(t *testing.T) {
	s := newStack(t)
	s.startSyncer("--reconcile-every", "300ms")
	want := s.seed(100)
	res, err := s.rt.Apply(context.Background(), s.mapPath, []runtime.Op{
		{Kind: runtime.Add, Key: "intruder", Value: "shard3"},
		{Kind: runtime.Set, Key: "u0001", Value: "shard3"},
		{Kind: runtime.Del, Key: "u0002"},
	})
	if err != nil || res[0] != nil || res[1] != nil || res[2] != nil {
		t.Fatalf("hand edit: %v %v", err, res)
	}
	s.waitConverged(10 * time.Second)
	s.checkRoutes(want, 100)
	s.mustRoute("intruder", "shard0")
	s.waitLog(10*time.Second, "drift: live map edited outside shardmap")

	f, _ := os.OpenFile(s.mapPath, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("intruder2 shard3\n")
	f.Close()
	s.waitConverged(10 * time.Second)
	s.waitLog(10*time.Second, "drift: map file changed outside shardmap")
}

// A syncer stopped with SIGTERM starts again by sending HAProxy only the
// difference between the live map and Redis (no whole-map swap); one killed
// with -9 loses nothing either; nor does a log trimmed while it was away.
func TestSyncerRestartResumesOrReloads(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	want := s.seed(300)
	s.stopSyncer()

	// Changes while the syncer is away; HAProxy keeps serving meanwhile.
	s.mustMapctl("set", "u0001", "shard0")
	s.mustMapctl("del", "u0002")
	s.mustMapctl("set", "fresh", "shard2")
	s.mustRoute("u0003", want["u0003"])
	s.startSyncer()
	s.waitConverged(15 * time.Second)
	s.waitLog(10*time.Second, "full sync", "how=diff", "missing=1 extra=1 changed=1")
	if out := s.syncer.Output(); strings.Contains(out, "how=swap") {
		t.Fatalf("restart after SIGTERM swapped the whole map instead of sending the difference:\n%s", out)
	}

	// kill -9, changes, restart.
	if err := s.syncer.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.syncer.Wait(10 * time.Second)
	s.mustMapctl("set", "u0004", "shard1")
	if _, err := maps.ReadMapFile(s.mapPath); err != nil {
		t.Fatalf("map file unreadable after kill -9: %v", err)
	}
	s.startSyncer()
	s.waitConverged(15 * time.Second)
	s.mustRoute("u0004", "shard1")

	// A gap: the log is trimmed past the file's position while the syncer is away.
	s.stopSyncer()
	s.mustMapctl("set", "u0005", "shard3")
	s.redis.Client(t).XTrimMaxLen(context.Background(), s.store.LogKey(), 0)
	s.mustMapctl("set", "u0006", "shard3")
	s.startSyncer()
	s.waitConverged(15 * time.Second)
	s.waitLog(10*time.Second, "full sync")
	s.mustRoute("u0005", "shard3")
}

// Redis stops for a while and comes back: HAProxy and the file stay as they
// are, every user keeps its route, mapctl fails fast (exit 1), the syncer
// logs the failure once and catches up after.
func TestRedisOutage(t *testing.T) {
	s := newStack(t)
	health := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	s.startSyncer("--listen", health)
	want := s.seed(100)
	s.redis.Stop(t)

	// The outage: 30 s of requests (about 30 retries by the syncer), all
	// routed as before.
	end := time.Now().Add(30 * time.Second)
	requests := 0
	for time.Now().Before(end) && requests < 100_000 {
		u := fmt.Sprintf("u%04d", requests%100)
		s.mustRoute(u, want[u])
		requests++
	}
	if resp, err := s.http.Get("http://" + health + "/readyz"); err != nil || resp.StatusCode != 503 {
		t.Fatalf("/readyz during the outage: %v %v", resp, err)
	}
	start := time.Now()
	_, errs, code := s.mapctl("set", "u0001", "shard0")
	if code != 1 || !strings.Contains(errs, "connection refused") || time.Since(start) > 5*time.Second {
		t.Fatalf("mapctl with Redis down: exit %d after %s: %q", code, time.Since(start), errs)
	}
	if file, _, err := s.file(); err != nil || len(file) != 100 {
		t.Fatalf("map file during the outage: %d entries, %v", len(file), err)
	}

	s.redis.Restart(t)
	s.mustMapctl("set", "u0001", "shard0", "--wait")
	s.waitConverged(15 * time.Second)
	s.waitLog(10*time.Second, "syncer recovered")
	if n := strings.Count(s.syncer.Output(), "syncer not ready"); n != 1 {
		t.Fatalf("outage logged %d times, want once:\n%s", n, s.syncer.Output())
	}
	t.Logf("%d requests routed right during the outage", requests)
}

// A syncer killed in the middle of a 1M-entry load leaves HAProxy serving the
// committed map (the uncommitted version is never visible) and the file
// whole; the next syncer completes the load.
func TestSyncerKilledMidFullLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("1M entries")
	}
	s := newStack(t)
	s.startSyncer()
	want := s.seed(3)
	s.stopSyncer()
	fileBefore, _ := os.ReadFile(s.mapPath)

	const n = 1_000_000
	rdb := s.redis.Client(t)
	ctx := context.Background()
	for lo := 0; lo < n; lo += 10_000 { // straight into the hash: the load reads the hash
		pipe := rdb.Pipeline()
		args := make([]any, 0, 20_000)
		for i := lo; i < lo+10_000; i++ {
			args = append(args, fmt.Sprintf("m%07d", i), shards[i%len(shards)])
		}
		pipe.HSet(ctx, s.store.UsersKey(), args...)
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Written behind the log, and the log trimmed past the file's position:
	// the next syncer cannot catch up and must load the whole hash.
	rdb.XTrimMaxLen(ctx, s.store.LogKey(), 0)

	s.syncer = testenv.Start(t, "syncer", []string{binDir + "/syncer", "--redis", s.redis.URL, "--socket", s.socket, "--map", s.mapPath, "--name", "e2e"})
	killed := false
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && !killed {
		cnt, err := s.rt.MapEntryCount(ctx, s.mapPath)
		if err == nil && cnt > 3+1000 && cnt < 3+n { // a version is being loaded
			s.syncer.Signal(syscall.SIGKILL)
			s.syncer.Wait(10 * time.Second)
			killed = true
			t.Logf("killed the syncer with %d entries in HAProxy (3 committed)", cnt)
		}
		if strings.Contains(s.syncer.Output(), "full sync") {
			t.Fatal("the load finished before the test could kill it")
		}
		time.Sleep(5 * time.Millisecond) // poll interval, bounded by the deadline
	}
	if !killed {
		t.Fatal("never saw the load in progress")
	}
	live, err := s.live()
	if err != nil || len(live) != 3 {
		t.Fatalf("live map after the kill: %d entries (%v), want the 3 committed", len(live), err)
	}
	s.checkRoutes(want, 3)
	if after, _ := os.ReadFile(s.mapPath); string(after) != string(fileBefore) {
		t.Fatal("map file changed by the killed load")
	}

	s.startSyncer()
	testenv.WaitFor(t, 120*time.Second, "the next syncer to load 1M entries", func() error {
		cnt, err := s.rt.MapEntryCount(ctx, s.mapPath)
		if err != nil || cnt != n+3 {
			return fmt.Errorf("entry_cnt %d (%v)", cnt, err)
		}
		return nil
	})
	s.waitConverged(120 * time.Second)
	s.mustRoute("m0999999", shards[999_999%len(shards)])
	// The killed load's version was cleared before anything else was sent
	// (HAProxy 3.2.0 loops on a set of a key held by a pending version).
	s.waitLog(10*time.Second, "cleared uncommitted map versions left by an interrupted load")
}

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// otherShard is a shard that is not sh.
func otherShard(sh string) string {
	if sh == shards[1] {
		return shards[2]
	}
	return shards[1]
}

// readyz returns the syncer's /readyz status code (0 when it does not
// answer).
func (s *stack) readyz(health string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + health + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitReadyz waits until /readyz answers code and returns how long it took.
func (s *stack) waitReadyz(health string, code int, timeout time.Duration) time.Duration {
	s.t.Helper()
	start := time.Now()
	testenv.WaitFor(s.t, timeout, fmt.Sprintf("/readyz %d", code), func() error {
		if got := s.readyz(health); got != code {
			return fmt.Errorf("/readyz %d", got)
		}
		return nil
	})
	return time.Since(start)
}

// An assignment changed straight in the Redis hash (no change-log entry,
// same count) is found by the periodic drift pass and applied to the live
// map and the file as Redis says.
func TestHashChangedBehindLogIsApplied(t *testing.T) {
	s := newStack(t)
	s.startSyncer("--reconcile-every", "1s")
	want := s.seed(100)
	to := otherShard(want["u0005"])
	if err := s.redis.Client(t).HSet(context.Background(), s.store.UsersKey(), "u0005", to).Err(); err != nil {
		t.Fatal(err)
	}
	s.waitConverged(20 * time.Second)
	s.mustRoute("u0005", to)
	s.waitLog(10*time.Second, "drift: redis hash changed behind the change log")
}

// A `set map` typed on the socket while the syncer is stopped is not taken
// as truth by the next syncer: it checks the live map against Redis at start.
func TestSocketEditWhileStoppedIsRepairedAtStart(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	want := s.seed(100)
	s.stopSyncer()
	res, err := s.rt.Apply(context.Background(), s.mapPath, []runtime.Op{{Kind: runtime.Set, Key: "u0007", Value: otherShard(want["u0007"])}})
	if err != nil || res[0] != nil {
		t.Fatalf("hand edit: %v %v", err, res)
	}
	// A kill -9 during a write leaves a temp file; an operator chose the
	// file's mode. Both are looked after at start.
	stale := filepath.Join(s.dir, ".users.map.tmp-12345")
	if err := os.WriteFile(stale, []byte("half a map"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(s.mapPath, 0o600); err != nil {
		t.Fatal(err)
	}
	s.startSyncer()
	s.waitConverged(15 * time.Second)
	s.mustRoute("u0007", want["u0007"])
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale temp file still there: %v", err)
	}
	s.mustMapctl("set", "u0008", otherShard(want["u0008"]), "--wait")
	s.waitConverged(15 * time.Second)
	if fi, err := os.Stat(s.mapPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("map file mode after rewrites: %v %v, want 0600 kept", fi.Mode(), err)
	}
}

// The syncer never prints the Redis password: not in --help (the default
// comes from SHARDMAP_REDIS), not when a flag is mistyped, not in its logs.
func TestSyncerHidesRedisPassword(t *testing.T) {
	const secret = "s3cretPW"
	env := []string{"SHARDMAP_REDIS=redis://:" + secret + "@127.0.0.1:1/0"}
	for _, args := range [][]string{{"--help"}, {"--no-such-flag"}, {"--socket", "/nonexistent.sock", "--map", "/m.map", "--redis", "redis://:" + secret + "@127.0.0.1:1/0%zz"}} {
		cmd := exec.Command(filepath.Join(binDir, "syncer"), args...)
		cmd.Env = append(os.Environ(), env...)
		out, _ := cmd.CombinedOutput()
		if strings.Contains(string(out), secret) {
			t.Errorf("syncer %v printed the password:\n%s", args, out)
		}
		if len(out) == 0 {
			t.Errorf("syncer %v printed nothing", args)
		}
	}
}

// A HAProxy that stops answering (SIGSTOP) makes the syncer not ready, with
// one clear log line, within the runtime timeout (3 s) plus a check period;
// it is ready again once HAProxy answers.
func TestHungHAProxyIsNotReady(t *testing.T) {
	s := newStack(t)
	health := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	s.startSyncer("--listen", health)
	s.seed(10)
	s.waitReadyz(health, 200, 10*time.Second)
	pid := s.haproxy.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	took := s.waitReadyz(health, 503, 30*time.Second)
	t.Logf("not ready %s after SIGSTOP", took.Round(10*time.Millisecond))
	s.waitLog(10*time.Second, "state=haproxy_no_answer")
	syscall.Kill(pid, syscall.SIGCONT)
	s.waitReadyz(health, 200, 30*time.Second)
	if n := strings.Count(s.syncer.Output(), "state=haproxy_no_answer"); n != 1 {
		t.Fatalf("a hung HAProxy was logged %d times, want once:\n%s", n, s.syncer.Output())
	}
}

// Every stats-socket connection slot taken by someone else (HAProxy's
// default stats maxconn is 10): the syncer's calls get no answer; it reports
// not ready instead of hanging ready.
func TestStatsSlotsTakenIsNotReady(t *testing.T) {
	s := newStack(t)
	health := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	s.startSyncer("--listen", health)
	s.seed(10)
	s.waitReadyz(health, 200, 10*time.Second)
	// Hold connections until HAProxy stops accepting: each one sits in
	// prompt mode, which HAProxy keeps open until "stats timeout".
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for i := 0; i < 12; i++ {
		c, err := net.DialTimeout("unix", s.socket, time.Second)
		if err != nil {
			break
		}
		c.Write([]byte("prompt\n"))
		held = append(held, c)
	}
	took := s.waitReadyz(health, 503, 30*time.Second)
	t.Logf("not ready %s after taking %d connections", took.Round(10*time.Millisecond), len(held))
	s.waitLog(10*time.Second, "state=haproxy_no_answer")
	for _, c := range held {
		c.Close()
	}
	held = nil
	s.waitReadyz(health, 200, 30*time.Second)
}

// A map file that cannot be written is one state: /readyz stays 503 (no
// flapping), one log line, backed-off retries; writing works again once the
// obstacle is gone, and mapctl status shows the recovery at once.
func TestUnwritableMapFileIsOneState(t *testing.T) {
	s := newStack(t)
	health := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	s.startSyncer("--listen", health)
	s.seed(10)
	// A non-empty directory where the file goes: the rename fails, as root too.
	if err := os.Remove(s.mapPath); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(s.mapPath, "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	s.mustMapctl("set", "u0001", "shard2", "--wait")
	s.waitReadyz(health, 503, 15*time.Second)
	for i := 0; i < 100; i++ {
		if code := s.readyz(health); code != 503 {
			t.Fatalf("probe %d: /readyz %d while the file cannot be written (flapping)", i, code)
		}
		time.Sleep(20 * time.Millisecond) // probe interval, as a load balancer would
	}
	if n := strings.Count(s.syncer.Output(), "state=file"); n != 1 {
		t.Fatalf("the file failure was logged %d times, want once:\n%s", n, s.syncer.Output())
	}
	if err := os.RemoveAll(s.mapPath); err != nil {
		t.Fatal(err)
	}
	s.waitReadyz(health, 200, 60*time.Second)
	// The recovery is in Redis as soon as /readyz says so.
	all, err := s.store.Syncers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range all {
		if st.Name == "e2e" && (!st.Ready || st.Problem != "") {
			t.Fatalf("registry after recovery: %+v, want ready at once", st)
		}
	}
	s.waitConverged(15 * time.Second)
}

// SIGHUP does not stop the syncer; it looks for drift at once. SIGTERM then
// stops it cleanly with the file written.
func TestSighupChecksNow(t *testing.T) {
	s := newStack(t)
	s.startSyncer() // the periodic check is a minute away
	want := s.seed(10)
	res, err := s.rt.Apply(context.Background(), s.mapPath, []runtime.Op{{Kind: runtime.Set, Key: "u0003", Value: otherShard(want["u0003"])}})
	if err != nil || res[0] != nil {
		t.Fatalf("hand edit: %v %v", err, res)
	}
	if err := s.syncer.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	s.waitConverged(15 * time.Second)
	s.waitLog(10*time.Second, "SIGHUP", "drift: live map edited outside shardmap")
	if s.syncer.Exited() {
		t.Fatal("SIGHUP stopped the syncer")
	}
	s.stopSyncer()
}

// Two running syncers may not share a name: the second refuses to start
// (exit 2) naming the first's instance.
func TestDuplicateSyncerNameIsRefused(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	other := filepath.Join(s.dir, "other.map")
	os.WriteFile(other, nil, 0o644)
	second := testenv.Start(t, "syncer2", []string{filepath.Join(binDir, "syncer"), "--redis", s.redis.URL,
		"--socket", s.socket, "--map", other, "--name", "e2e"})
	err, done := second.Wait(30 * time.Second)
	var ee interface{ ExitCode() int }
	if !done || !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("second syncer with the same name: done=%v err=%v\n%s", done, err, second.Output())
	}
	if !strings.Contains(second.Output(), "another running syncer has this name") {
		t.Fatalf("no clear refusal:\n%s", second.Output())
	}
	if s.syncer.Exited() {
		t.Fatal("the first syncer stopped")
	}
}

// Two syncers (different names) on one socket and map: one holds the lease
// and writes, the other is a standby; when the active one dies, the standby
// takes over and changes keep going live.
func TestLeaseStandbyTakesOver(t *testing.T) {
	s := newStack(t)
	first := s.startSyncer()
	s.seed(20)
	standby := testenv.Start(t, "standby", []string{filepath.Join(binDir, "syncer"), "--redis", s.redis.URL,
		"--socket", s.socket, "--map", s.mapPath, "--name", "standby"})
	s.waitSyncer("standby", "standby", 15*time.Second, func(st maps.SyncerState) bool { return st.Standby })
	if strings.Contains(standby.Output(), "full sync") {
		t.Fatalf("the standby wrote to HAProxy:\n%s", standby.Output())
	}
	first.Signal(syscall.SIGKILL)
	first.Wait(10 * time.Second)
	s.mustMapctl("set", "u0001", "shard3")
	testenv.WaitFor(t, 30*time.Second, "the standby to take over", func() error {
		if got, err := s.route("u0001"); err != nil || got != "shard3" {
			return fmt.Errorf("u0001 on %q (%v)", got, err)
		}
		return nil
	})
	if !strings.Contains(standby.Output(), "holding the map's lease") {
		t.Fatalf("standby did not log the takeover:\n%s", standby.Output())
	}
	s.waitConverged(15 * time.Second)
}

// An assignment to a shard HAProxy has no backend for (mapctl set --force,
// or an HSET by hand) routes the user to the default shard: status says so
// and exits 1 instead of "in sync" (found by a hostile test).
func TestStatusNamesUnknownShards(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	s.seed(5)
	s.mustMapctl("set", "--force", "u0001", "nosuchshard", "--wait")
	out, _, code := s.mapctl("status")
	if code != 1 || !strings.Contains(out, "UNKNOWN SHARDS: 1 assignments") || !strings.Contains(out, "u0001 -> nosuchshard") {
		t.Fatalf("status with an unknown shard: exit %d:\n%s", code, out)
	}
	s.mustMapctl("set", "u0001", "shard2", "--wait")
	if out, _, code := s.mapctl("status"); code != 0 {
		t.Fatalf("status after the fix: exit %d:\n%s", code, out)
	}
}

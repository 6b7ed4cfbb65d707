// Package e2e tests shardmap end to end with real processes: redis-server,
// haproxy (Debian's 2.6, or the one $SHARDMAP_HAPROXY names, such as 3.0),
// HTTP backends, and the syncer and mapctl binaries built from this tree, all
// on loopback in the test's temp dir.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

var (
	raceEnabled bool
	binDir      string // holds syncer and mapctl
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "shardmap-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	args := []string{"build", "-o", dir + "/"}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "../cmd/syncer", "../cmd/mapctl", "../cmd/demo-backends")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build binaries:", err)
		os.Exit(1)
	}
	// A race-built binary sleeps 1 s at exit by default; mapctl runs often.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	// The tests read the syncer's log as text (msg="full sync"); its default,
	// auto, logs JSON when stderr is not a terminal, as here. The variable
	// reaches every syncer a test starts (testenv.Start and exec.Command
	// pass the environment on); a test that wants JSON says --log-format.
	os.Setenv("SHARDMAP_LOG_FORMAT", "text")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// shards are the backends of the test config; shard0 is the default.
var shards = []string{"shard0", "shard1", "shard2", "shard3"}

// stack is one shardmap deployment: Redis, HAProxy routing by a map, one
// HTTP server per shard answering with the shard's name, and a syncer.
type stack struct {
	t       *testing.T
	dir     string
	redis   *testenv.Redis
	haproxy *testenv.HAProxy
	syncer  *testenv.Proc
	store   *maps.Store
	rt      *runtime.Client
	mapPath string
	socket  string
	front   string // http://127.0.0.1:port
	http    *http.Client
}

func newStack(t *testing.T) *stack {
	t.Helper()
	return newStackWith(t, func(_ int, sh string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, sh) }))
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	})
}

// newStackWith is newStack with shard i's one server at server(i, shard)
// (host:port).
func newStackWith(t *testing.T, server func(i int, shard string) string) *stack {
	t.Helper()
	s := &stack{t: t, dir: t.TempDir()}
	s.mapPath = filepath.Join(s.dir, "users.map")
	s.socket = filepath.Join(s.dir, "admin.sock")
	s.redis = testenv.StartRedis(t)
	s.store = maps.NewStore(s.redis.Client(t), "")
	if err := os.WriteFile(s.mapPath, nil, 0o644); err != nil { // HAProxy will not start without it
		t.Fatal(err)
	}
	port := testenv.FreePort(t)
	s.front = fmt.Sprintf("http://127.0.0.1:%d", port)
	// The routing rules come from the product's renderer, so the tests follow
	// it when it changes; only the backends' addresses are the test's.
	topo := &haproxy.Topology{
		Cookie:       "user",
		DefaultShard: "shard0",
		Map:          s.mapPath,
		Frontend:     fmt.Sprintf("127.0.0.1:%d", port),
		Stats:        fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Socket:       s.socket,
		StatsTimeout: 10 * time.Second,
		Shards:       map[string]haproxy.Shard{},
	}
	for i, sh := range shards {
		topo.Shards[sh] = haproxy.Shard{Servers: []haproxy.Server{{Addr: server(i, sh)}}}
	}
	cfg, err := haproxy.Render(topo, "e2e newStack")
	if err != nil {
		t.Fatal(err)
	}
	s.haproxy = testenv.StartHAProxy(t, s.dir, string(cfg), s.socket)
	rt, err := runtime.New(s.socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	s.rt = rt
	s.http = &http.Client{Timeout: 5 * time.Second}
	return s
}

// startSyncer runs the syncer binary against the stack and waits until it
// reports itself ready in Redis.
func (s *stack) startSyncer(extra ...string) *testenv.Proc {
	s.t.Helper()
	args := append([]string{filepath.Join(binDir, "syncer"), "--redis", s.redis.URL, "--socket", s.socket,
		"--map", s.mapPath, "--name", "e2e"}, extra...)
	// A syncer stopped just before left a ready report under the same name:
	// wait for one from the new process.
	before := map[string]bool{}
	if all, err := s.store.Syncers(context.Background()); err == nil {
		for _, st := range all {
			before[st.Instance] = true
		}
	}
	s.syncer = testenv.Start(s.t, "syncer", args)
	s.waitSyncer("e2e", "ready", 120*time.Second, func(st maps.SyncerState) bool { // a full load of 1M entries under -race on 2 cores
		if s.syncer.Exited() {
			s.t.Fatalf("syncer exited: %s", s.syncer.Output())
		}
		return st.Ready && !before[st.Instance]
	})
	return s.syncer
}

func (s *stack) waitReady(timeout time.Duration) {
	s.t.Helper()
	s.waitSyncer("e2e", "ready", timeout, func(st maps.SyncerState) bool {
		if s.syncer.Exited() {
			s.t.Fatalf("syncer exited: %s", s.syncer.Output())
		}
		return st.Ready
	})
}

// waitSyncer waits until the live syncer name reports a state ok accepts.
func (s *stack) waitSyncer(name, what string, timeout time.Duration, ok func(maps.SyncerState) bool) {
	s.t.Helper()
	testenv.WaitFor(s.t, timeout, "syncer "+name+" "+what, func() error {
		all, err := s.store.Syncers(context.Background())
		if err != nil {
			return err
		}
		for _, st := range all {
			if st.Name == name && st.Live(time.Now(), maps.LiveWithin) && ok(st) {
				return nil
			}
		}
		return errors.New("not reported " + what)
	})
}

// waitLog waits until the current syncer has logged every one of want: a
// line is written after the state it reports, so a test that sees the state
// may be ahead of the log.
func (s *stack) waitLog(timeout time.Duration, want ...string) {
	s.t.Helper()
	testenv.WaitFor(s.t, timeout, fmt.Sprintf("syncer to log %q", want), func() error {
		out := s.syncer.Output()
		for _, w := range want {
			if !strings.Contains(out, w) {
				return fmt.Errorf("no %q in:\n%s", w, out)
			}
		}
		return nil
	})
}

// mapctl runs the mapctl binary and returns stdout, stderr and exit code.
func (s *stack) mapctl(args ...string) (string, string, int) {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "mapctl"), append([]string{"--redis", s.redis.URL}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("mapctl %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// mustMapctl runs mapctl and fails the test unless it exits 0.
func (s *stack) mustMapctl(args ...string) string {
	s.t.Helper()
	out, errs, code := s.mapctl(args...)
	if code != 0 {
		s.t.Fatalf("mapctl %v: exit %d: %s", args, code, errs)
	}
	return out
}

// route sends a request as user and returns the shard that answered.
func (s *stack) route(user string) (string, error) {
	req, _ := http.NewRequest("GET", s.front+"/", nil)
	if user != "" {
		req.AddCookie(&http.Cookie{Name: "user", Value: user})
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), err
}

func (s *stack) mustRoute(user, want string) {
	s.t.Helper()
	got, err := s.route(user)
	if err != nil || got != want {
		s.t.Fatalf("request as %q went to %q (%v), want %q", user, got, err, want)
	}
}

// live returns the live map, failing on a duplicated key.
func (s *stack) live() (map[string]string, error) {
	m := map[string]string{}
	err := s.rt.Dump(context.Background(), s.mapPath, func(k, v string) error {
		if _, dup := m[k]; dup {
			return fmt.Errorf("duplicate key %q in live map", k)
		}
		m[k] = v
		return nil
	})
	return m, err
}

func (s *stack) file() (map[string]string, string, error) {
	mf, err := maps.ReadMapFile(s.mapPath)
	m := map[string]string{}
	for _, e := range mf.Entries {
		m[e.User] = e.Shard
	}
	return m, mf.LogID, err
}

func (s *stack) redisMap() map[string]string {
	snap, err := s.store.Snapshot(context.Background(), nil)
	if err != nil {
		s.t.Fatal(err)
	}
	return snap.Entries
}

// diff describes how got differs from want, or returns "".
func diff(want, got map[string]string) string {
	var b strings.Builder
	n := 0
	for k, v := range want {
		if got[k] != v && n < 5 {
			fmt.Fprintf(&b, " %s: want %q got %q;", k, v, got[k])
			n++
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok && n < 5 {
			fmt.Fprintf(&b, " %s: extra %q;", k, v)
			n++
		}
	}
	if n == 0 && len(want) == len(got) {
		return ""
	}
	return fmt.Sprintf("%d vs %d entries:%s", len(want), len(got), b.String())
}

// waitConverged waits until the live map and the file both equal Redis and
// the file's header names the log's last ID.
func (s *stack) waitConverged(timeout time.Duration) {
	s.t.Helper()
	testenv.WaitFor(s.t, timeout, "live map == file == redis", func() error {
		want := s.redisMap()
		last, err := s.store.LastLogID(context.Background())
		if err != nil {
			return err
		}
		live, err := s.live()
		if err != nil {
			return err
		}
		if d := diff(want, live); d != "" {
			return fmt.Errorf("live map: %s", d)
		}
		file, id, err := s.file()
		if err != nil {
			return err
		}
		if d := diff(want, file); d != "" {
			return fmt.Errorf("file: %s", d)
		}
		if id != last {
			return fmt.Errorf("file header log-id %s, log at %s", id, last)
		}
		return nil
	})
}

// haproxyPid returns the PID HAProxy reports over the socket.
func (s *stack) haproxyPid() int64 {
	s.t.Helper()
	info, err := s.rt.Info(context.Background())
	if err != nil {
		s.t.Fatal(err)
	}
	return info.Pid
}

// stopSyncer sends SIGTERM and expects a clean exit 0.
func (s *stack) stopSyncer() {
	s.t.Helper()
	if err := s.syncer.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatal(err)
	}
	err, done := s.syncer.Wait(20 * time.Second)
	if !done || err != nil {
		s.t.Fatalf("syncer after SIGTERM: done=%v err=%v\n%s", done, err, s.syncer.Output())
	}
}

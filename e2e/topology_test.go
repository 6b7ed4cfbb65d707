package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// backend starts an HTTP server that answers with name.
func backend(t *testing.T, name string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) }))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// newTopologyStack runs HAProxy with the config that mapctl config render
// writes for a two-shard topology.
func newTopologyStack(t *testing.T) (*stack, string) {
	s := &stack{t: t, dir: t.TempDir()}
	s.mapPath = filepath.Join(s.dir, "users.map")
	s.socket = filepath.Join(s.dir, "admin.sock")
	s.redis = testenv.StartRedis(t)
	s.store = maps.NewStore(s.redis.Client(t), "")
	port := testenv.FreePort(t)
	s.front = fmt.Sprintf("http://127.0.0.1:%d", port)
	topo := filepath.Join(s.dir, "topology.yaml")
	os.WriteFile(topo, []byte(fmt.Sprintf(`cookie: user
default_shard: shard0
map: %s
frontend: 127.0.0.1:%d
stats: 127.0.0.1:%d
socket: %s
health_check: GET /
shards:
  shard0:
    servers: [{addr: "%s"}]
  shard1:
    servers: [{addr: "%s", check: true}]
`, s.mapPath, port, testenv.FreePort(t), s.socket, backend(t, "shard0/a"), backend(t, "shard1/a"))), 0o644)
	cfgPath := filepath.Join(s.dir, "rendered.cfg")
	s.mustMapctl("config", "render", "--topology", topo, "-o", cfgPath)
	cfg, _ := os.ReadFile(cfgPath)
	os.WriteFile(s.mapPath, nil, 0o644)
	s.haproxy = testenv.StartHAProxy(t, s.dir, string(cfg), s.socket)
	rt, _ := runtime.New(s.socket, 10*time.Second)
	t.Cleanup(func() { rt.Close() })
	s.rt = rt
	s.http = &http.Client{Timeout: 5 * time.Second}
	return s, topo
}

// A server joins a shard and takes requests with no reload, and is in the
// topology for the next render; then it is drained and removed the same way.
func TestAddServerWithoutReload(t *testing.T) {
	s, topo := newTopologyStack(t)
	pid := s.haproxyPid()
	s.startSyncer()
	s.mustMapctl("set", "alice", "shard1", "--wait")
	s.mustRoute("alice", "shard1/a")
	s.mustRoute("", "shard0/a") // no cookie: the default shard

	newAddr := backend(t, "shard1/new")
	s.mustMapctl("shard", "add-server", "shard1", newAddr, "--topology", topo)
	testenv.WaitFor(t, 10*time.Second, "a request on the new server", func() error {
		got, err := s.route("alice")
		if err != nil {
			return err
		}
		if got == "shard1/new" {

			return nil
		}
		return fmt.Errorf("served by %s", got)
	})
	if got := s.haproxyPid(); got != pid || s.haproxy.Exited() {
		t.Fatalf("HAProxy PID %d -> %d: it was reloaded", pid, got)
	}
	if out := s.mustMapctl("config", "render", "--topology", topo); !strings.Contains(out, "server "+strings.ReplaceAll(newAddr, ":", "_")+" "+newAddr) {
		t.Fatalf("new server missing from the next render:\n%s", out)
	}

	s.mustMapctl("shard", "remove-server", "shard1", newAddr, "--topology", topo)
	for i := 0; i < 20; i++ {
		s.mustRoute("alice", "shard1/a")
	}
	if out := s.mustMapctl("config", "render", "--topology", topo); strings.Contains(out, newAddr) {
		t.Fatalf("removed server still rendered:\n%s", out)
	}
	if got := s.haproxyPid(); got != pid {
		t.Fatalf("HAProxy PID %d -> %d after remove-server", pid, got)
	}

	// Shards come from HAProxy's backends: an unknown one is refused.
	if _, errs, code := s.mapctl("set", "bob", "shard7"); code != 2 || !strings.Contains(errs, "known: shard0, shard1") {
		t.Fatalf("unknown shard: exit %d %q", code, errs)
	}
	if _, errs, code := s.mapctl("shard", "add-server", "shard7", "127.0.0.1:1", "--topology", topo); code != 2 || !strings.Contains(errs, `shard "shard7" is not in`) {
		t.Fatalf("add-server to unknown shard: exit %d %q", code, errs)
	}
}

// One file feeds both mapctl config render and the syncer: the map is named
// only in the syncer file the topology points to, and haproxy.cfg and the
// syncer agree on it, so a user set in Redis is routed by the live map.
func TestOneFileRendersAndSyncs(t *testing.T) {
	s := &stack{t: t, dir: t.TempDir()}
	s.mapPath = filepath.Join(s.dir, "users.map")
	s.socket = filepath.Join(s.dir, "admin.sock")
	s.redis = testenv.StartRedis(t)
	s.store = maps.NewStore(s.redis.Client(t), "")
	port := testenv.FreePort(t)
	s.front = fmt.Sprintf("http://127.0.0.1:%d", port)
	topo := filepath.Join(s.dir, "topology.yaml")
	os.WriteFile(filepath.Join(s.dir, "syncer.yaml"), []byte(fmt.Sprintf("map: %s\nredis: %s\nname: e2e\n", s.mapPath, s.redis.URL)), 0o644)
	os.WriteFile(topo, []byte(fmt.Sprintf(`default_shard: shard0
frontend: 127.0.0.1:%d
stats: 127.0.0.1:%d
socket: %s
syncer_config: syncer.yaml
shards:
  shard0:
    servers: [{addr: "%s"}]
  shard1:
    servers: [{addr: "%s"}]
`, port, testenv.FreePort(t), s.socket, backend(t, "shard0/a"), backend(t, "shard1/a"))), 0o644)
	cfg := s.mustMapctl("config", "render", "--topology", topo)
	if !strings.Contains(cfg, "map("+s.mapPath+",shard0)") {
		t.Fatalf("rendered config does not use the syncer file's map %s:\n%s", s.mapPath, cfg)
	}
	os.WriteFile(s.mapPath, nil, 0o644)
	s.haproxy = testenv.StartHAProxy(t, s.dir, cfg, s.socket)
	s.http = &http.Client{Timeout: 5 * time.Second}
	s.syncer = testenv.Start(t, "syncer", []string{filepath.Join(binDir, "syncer"), "--config", topo})
	s.waitReady(60 * time.Second)
	s.mustMapctl("set", "alice", "shard1", "--wait")
	s.mustRoute("alice", "shard1/a")
}

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// deltaRig is Redis and one HAProxy rendered with delta_map, whose shards
// answer with their names, for the tests of the delta layout.
type deltaRig struct {
	dir, mapPath, socket, front string
	redis                       *testenv.Redis
	store                       *maps.Store
	hap                         *testenv.HAProxy
	rt                          *runtime.Client
	http                        *http.Client
}

// startDeltaRig starts the rig; users user(0..n-1) are imported at shard0.
func startDeltaRig(t *testing.T, name string, n int, user func(int) string) *deltaRig {
	t.Helper()
	dir := t.TempDir()
	r := &deltaRig{dir: dir, mapPath: filepath.Join(dir, "users.map"), socket: filepath.Join(dir, "admin.sock"),
		http: &http.Client{Timeout: 2 * time.Second}}
	r.redis = testenv.StartRedis(t)
	r.store = maps.NewStore(r.redis.Client(t), "")
	port := testenv.FreePort(t)
	r.front = fmt.Sprintf("http://127.0.0.1:%d", port)
	topo := &haproxy.Topology{
		Cookie: "user", DefaultShard: "shard0", Map: r.mapPath, DeltaMap: true,
		Frontend: fmt.Sprintf("127.0.0.1:%d", port), Stats: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Socket: r.socket, StatsTimeout: 10 * time.Second, Shards: map[string]haproxy.Shard{},
	}
	for _, sh := range shards {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, sh) }))
		t.Cleanup(srv.Close)
		topo.Shards[sh] = haproxy.Shard{Servers: []haproxy.Server{{Addr: strings.TrimPrefix(srv.URL, "http://")}}}
	}
	if err := os.WriteFile(r.mapPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := haproxy.CreateDeltaMap(topo); err != nil {
		t.Fatal(err)
	}
	cfg, err := haproxy.Render(topo, "e2e "+name)
	if err != nil {
		t.Fatal(err)
	}
	r.hap = testenv.StartHAProxy(t, dir, string(cfg), r.socket)
	if r.rt, err = runtime.New(r.socket, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.rt.Close() })
	var seed []maps.Assignment
	for i := range n {
		seed = append(seed, maps.Assignment{User: user(i), Shard: "shard0"})
	}
	if _, err := r.store.Import(context.Background(), seed, 1000, nil); err != nil {
		t.Fatal(err)
	}
	return r
}

// route sends a request as user and returns the shard that answered.
func (r *deltaRig) route(user string) (string, error) {
	req, _ := http.NewRequest("GET", r.front+"/", nil)
	req.AddCookie(&http.Cookie{Name: "user", Value: user})
	resp, err := r.http.Do(req)
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

// waitRoutes waits until each of users is routed as want says (shard0,
// the default, for a user want lacks).
func (r *deltaRig) waitRoutes(t *testing.T, users []string, want map[string]string) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, "every user routed as Redis says", func() error {
		for _, u := range users {
			sh, ok := want[u]
			if !ok {
				sh = "shard0"
			}
			got, err := r.route(u)
			if err != nil {
				return err
			}
			if got != sh {
				return fmt.Errorf("%s routed to %s, redis says %s", u, got, sh)
			}
		}
		return nil
	})
}

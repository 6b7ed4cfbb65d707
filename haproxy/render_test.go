package haproxy

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite golden files")

// The demo topology renders to the committed golden file, byte for byte.
func TestRenderGolden(t *testing.T) {
	topo, err := LoadTopology("../demo/topology.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Render(topo, "demo/topology.yaml")
	if err != nil {
		t.Fatal(err)
	}
	golden := "testdata/demo.cfg"
	if *update {
		os.WriteFile(golden, got, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("render differs from %s (go test ./haproxy -update to accept):\n%s", golden, got)
	}
}

// Same topology, servers and shards listed in another order: same bytes.
func TestRenderDeterministic(t *testing.T) {
	a := `cookie: user
default_shard: b
map: /x/users.map
frontend: 127.0.0.1:7000
stats: 127.0.0.1:8404
socket: /x/admin.sock
shards:
  b:
    servers: [{addr: "127.0.0.1:9002"}, {addr: "127.0.0.1:9001", weight: 5}]
  a:
    servers: [{addr: "127.0.0.1:9003"}]
`
	b := `socket: /x/admin.sock
shards:
  a:
    servers: [{addr: "127.0.0.1:9003"}]
  b:
    servers: [{addr: "127.0.0.1:9001", weight: 5}, {addr: "127.0.0.1:9002"}]
default_shard: b
map: /x/users.map
frontend: 127.0.0.1:7000
stats: 127.0.0.1:8404
`
	var outs [][]byte
	for _, src := range []string{a, b, a} {
		topo, err := ParseTopology([]byte(src))
		if err != nil {
			t.Fatal(err)
		}
		out, err := Render(topo, "t.yaml")
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, out)
	}
	if !bytes.Equal(outs[0], outs[1]) || !bytes.Equal(outs[0], outs[2]) {
		t.Fatalf("renders differ:\n%s\n---\n%s", outs[0], outs[1])
	}
	s := string(outs[0])
	if strings.Index(s, "\nbackend a\n") > strings.Index(s, "\nbackend b\n") ||
		strings.Index(s, "127.0.0.1_9001") > strings.Index(s, "127.0.0.1_9002") {
		t.Fatalf("shards or servers not sorted:\n%s", s)
	}
	if !strings.Contains(s, "use_backend %[req.cook(user),map(/x/users.map,b)]") || strings.Contains(strings.ToLower(s), "lua") {
		t.Fatalf("no native map lookup:\n%s", s)
	}
}

// haproxy -c accepts the rendered config.
func TestRenderPassesHAProxyCheck(t *testing.T) {
	bin := testenv.Need(t, "haproxy")
	dir := t.TempDir()
	src, _ := os.ReadFile("../demo/topology.yaml")
	src = bytes.ReplaceAll(src, []byte("/tmp/shardmap-demo"), []byte(dir))
	topo, err := ParseTopology(src)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Render(topo, "test")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "users.map"), nil, 0o644) // HAProxy needs the map file
	path := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(path, cfg, 0o644)
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	// With socket_group, for the packaged syncer (the haproxy package makes
	// the group).
	if _, err := user.LookupGroup("haproxy"); err != nil {
		t.Logf("no haproxy group here (%v): socket_group not checked with haproxy -c", err)
		return
	}
	topo.SocketGroup = "haproxy"
	if cfg, err = Render(topo, "test"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, cfg, 0o644)
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c with socket_group: %v\n%s", err, out)
	}
}

func TestTopologyValidation(t *testing.T) {
	base := "default_shard: s0\nmap: /m/users.map\nfrontend: 127.0.0.1:7000\nstats: 127.0.0.1:8404\nsocket: /m/a.sock\n"
	cases := map[string]string{
		"unknown field":   base + "shards: {s0: {servers: [{addr: '127.0.0.1:1'}]}}\nbogus: 1\n",
		"default missing": base + "shards: {s1: {servers: [{addr: '127.0.0.1:1'}]}}\n",
		"bad shard name":  strings.Replace(base, "s0", "s 0", 1) + "shards: {'s 0': {servers: [{addr: '127.0.0.1:1'}]}}\n",
		"no servers":      base + "shards: {s0: {servers: []}}\n",
		"bad address":     base + "shards: {s0: {servers: [{addr: '127.0.0.1'}]}}\n",
		"server twice":    base + "shards: {s0: {servers: [{addr: '127.0.0.1:1'}]}, s1: {servers: [{addr: '127.0.0.1:1'}]}}\n",
		"check no health": base + "shards: {s0: {servers: [{addr: '127.0.0.1:1', check: true}]}}\n",
		"bad weight":      base + "shards: {s0: {servers: [{addr: '127.0.0.1:1', weight: 999}]}}\n",
		"relative map":    strings.Replace(base, "/m/users.map", "users.map", 1) + "shards: {s0: {servers: [{addr: '127.0.0.1:1'}]}}\n",
		"injected map":    strings.Replace(base, "/m/users.map", "'/m/u.map,x)] #'", 1) + "shards: {s0: {servers: [{addr: '127.0.0.1:1'}]}}\n",
	}
	for name, src := range cases {
		if _, err := ParseTopology([]byte(src)); !errors.Is(err, ErrTopology) {
			t.Errorf("%s: err = %v, want ErrTopology", name, err)
		}
	}
	if _, err := ParseTopology([]byte(base + "shards: {s0: {servers: [{addr: '127.0.0.1:1'}]}}\n")); err != nil {
		t.Errorf("valid topology refused: %v", err)
	}
}

// checkOption renders a minimal topology with each extra YAML line and
// wants its line in the config; each refused value of key is ErrTopology.
func checkOption(t *testing.T, key string, renders map[string]string, refused []string) {
	t.Helper()
	base := "default_shard: s0\nmap: /m/users.map\nfrontend: 127.0.0.1:7000\nstats: 127.0.0.1:8404\nsocket: /m/a.sock\nshards: {s0: {servers: [{addr: '127.0.0.1:1'}]}}\n"
	for extra, want := range renders {
		topo, err := ParseTopology([]byte(base + extra))
		if err != nil {
			t.Fatalf("%q: %v", extra, err)
		}
		cfg, err := Render(topo, "t")
		if err != nil || !strings.Contains(string(cfg), want) {
			t.Errorf("%q: want %q in:\n%s (%v)", extra, want, cfg, err)
		}
	}
	for _, v := range refused {
		if _, err := ParseTopology([]byte(base + key + ": " + strconv.Quote(v) + "\n")); !errors.Is(err, ErrTopology) {
			t.Errorf("%s %q: err = %v, want ErrTopology", key, v, err)
		}
	}
}

// stats_timeout sets HAProxy's Runtime API idle timeout; unset keeps 30s.
func TestRenderStatsTimeout(t *testing.T) {
	checkOption(t, "stats_timeout", map[string]string{
		"":                      "    stats timeout 30s\n",
		"stats_timeout: 10s\n":  "    stats timeout 10s\n",
		"stats_timeout: 1.5s\n": "    stats timeout 1500ms\n",
	}, []string{"1us", "-1s", "25h", "ten"})
}

// socket_group makes the Runtime API socket group-accessible (the packaged
// syncer runs in the haproxy group); unset keeps it to HAProxy's user.
func TestRenderSocketGroup(t *testing.T) {
	checkOption(t, "socket_group", map[string]string{
		"":                        "    stats socket /m/a.sock mode 600 level admin\n",
		"socket_group: haproxy\n": "    stats socket /m/a.sock mode 660 level admin group haproxy\n",
	}, []string{"Hap", "1x", "a b", "x;y", "haproxy\n"})
}

// delta_map renders the delta lookup before the map's; haproxy -c accepts
// it (the delta file created by CreateDeltaMap); routing: ids refuses it.
func TestRenderDeltaMap(t *testing.T) {
	checkOption(t, "delta_map", map[string]string{
		"": "    use_backend %[req.cook(user),map(/m/users.map,s0)]\n",
		"delta_map: true\n": "    http-request set-var(txn.shard) req.cook(user),map(/m/users.delta.map)\n" +
			"    http-request set-var(txn.shard) req.cook(user),map(/m/users.map,s0) unless { var(txn.shard) -m found }\n" +
			"    use_backend %[var(txn.shard)]\n",
	}, []string{"maybe"})
	checkPatternCache(t, "default_shard: s0\nmap: /m/users.map\nfrontend: 127.0.0.1:7000\nstats: 127.0.0.1:8404\nsocket: /m/a.sock\nshards: {s0: {servers: [{addr: '127.0.0.1:1'}]}}\n")
	bin := testenv.Need(t, "haproxy")
	dir := t.TempDir()
	src, _ := os.ReadFile("../demo/topology.yaml")
	src = bytes.ReplaceAll(src, []byte("/tmp/shardmap-demo"), []byte(dir))
	topo, err := ParseTopology(append(src, []byte("\ndelta_map: true\n")...))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "users.map"), nil, 0o644)
	if created, err := CreateDeltaMap(topo); err != nil || !created {
		t.Fatalf("CreateDeltaMap: %v %v", created, err)
	}
	if created, err := CreateDeltaMap(topo); err != nil || created {
		t.Fatalf("CreateDeltaMap again: %v %v, want kept", created, err)
	}
	cfg, err := Render(topo, "test")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(path, cfg, 0o644)
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	if _, err := ParseTopology([]byte("routing: ids\ndelta_map: true\n" + string(src))); !errors.Is(err, ErrTopology) {
		t.Errorf("routing: ids with delta_map: %v, want ErrTopology", err)
	}
}

// checkPatternCache wants HAProxy's pattern LRU cache off (tune.pattern.cache-size
// 0, in global) with delta_map: true and routing: ids, whose lookups mostly
// miss a map, and left at HAProxy's default in the plain users config.
func checkPatternCache(t *testing.T, base string) {
	t.Helper()
	const line = "\n    tune.pattern.cache-size 0\n"
	for extra, want := range map[string]bool{"": false, "delta_map: true\n": true, "routing: ids\n": true} {
		topo, err := ParseTopology([]byte(base + extra))
		if err != nil {
			t.Fatalf("%q: %v", extra, err)
		}
		cfg, err := Render(topo, "t")
		if err != nil {
			t.Fatal(err)
		}
		global, _, _ := strings.Cut(string(cfg), "\ndefaults\n")
		if got := strings.Contains(global, line); got != want {
			t.Errorf("%q: tune.pattern.cache-size 0 in global: %v, want %v:\n%s", extra, got, want, cfg)
		}
	}
}

// The holding backend maps.HoldShard is rendered in both routing modes and,
// on a real HAProxy (2.6, or 3.0 with SHARDMAP_HAPROXY), answers a user the
// map routes to it with 503, the topology's Retry-After (default 5) and a
// body naming it, while the other users still reach their shard.
func TestRenderHoldBackend(t *testing.T) {
	checkOption(t, "hold_retry_after", map[string]string{
		"":                       "\nbackend shardmap_hold\n    http-request return status 503 content-type text/plain string \"shardmap_hold: this user is being moved between shards, retry in 5 s\" hdr Retry-After 5\n",
		"hold_retry_after: 30\n": " hdr Retry-After 30\n",
	}, []string{"-1", "3601", "soon"})
	reserved := "default_shard: s0\nmap: /m/users.map\nfrontend: 127.0.0.1:7000\nstats: 127.0.0.1:8404\nsocket: /m/a.sock\n" +
		"shards: {s0: {servers: [{addr: '127.0.0.1:1'}]}, shardmap_hold: {servers: [{addr: '127.0.0.1:2'}]}}\n"
	if _, err := ParseTopology([]byte(reserved)); !errors.Is(err, ErrTopology) || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("a shard named shardmap_hold: err = %v, want ErrTopology saying the name is reserved", err)
	}

	shard := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "s0") }))
	defer shard.Close()
	for _, routing := range []string{RoutingUsers, RoutingIDs} {
		t.Run(routing, func(t *testing.T) {
			dir := t.TempDir()
			port := testenv.FreePort(t)
			topo := &Topology{
				Cookie:         "user",
				DefaultShard:   "s0",
				Map:            filepath.Join(dir, "users.map"),
				Frontend:       fmt.Sprintf("127.0.0.1:%d", port),
				Stats:          fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
				Socket:         filepath.Join(dir, "admin.sock"),
				HoldRetryAfter: 7,
				Shards:         map[string]Shard{"s0": {Servers: []Server{{Addr: strings.TrimPrefix(shard.URL, "http://")}}}},
			}
			held := "alice"
			if routing == RoutingIDs {
				topo.Routing = RoutingIDs
				held = "123456789"
				if _, err := CreateLogicalMap(topo); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(topo.Map, []byte(held+" shardmap_hold\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := Render(topo, "test")
			if err != nil {
				t.Fatal(err)
			}
			testenv.StartHAProxy(t, dir, string(cfg), topo.Socket)
			get := func(user string) (*http.Response, string) {
				t.Helper()
				req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/x", port), nil)
				req.AddCookie(&http.Cookie{Name: "user", Value: user})
				resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp, string(b)
			}
			resp, body := get(held)
			if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "7" || !strings.HasPrefix(body, "shardmap_hold: ") {
				t.Errorf("held user: %d Retry-After %q body %q, want 503, 7, shardmap_hold: ...", resp.StatusCode, resp.Header.Get("Retry-After"), body)
			}
			if resp, body := get("4242"); resp.StatusCode != 200 || body != "s0" {
				t.Errorf("another user: %d %q, want 200 s0", resp.StatusCode, body)
			}
		})
	}
}

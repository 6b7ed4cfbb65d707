package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/ids"
	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/runtime"
)

// startDemoBackends runs cmd/demo-backends with one server per shard on n
// consecutive free loopback ports and returns the first port; with admin,
// its admin endpoint (the move hooks') listens on the next port, base+n.
// Free ports can be taken between the check and the start: it tries again
// on another range.
func startDemoBackends(t *testing.T, n int, admin bool) int {
	t.Helper()
	ports := n
	if admin {
		ports++
	}
	for try := 0; try < 5; try++ {
		base := testenv.FreePort(t)
		free := true
		for i := 1; i < ports && free; i++ {
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(base+i)))
			if err != nil {
				free = false
				continue
			}
			ln.Close()
		}
		if !free {
			continue
		}
		args := []string{filepath.Join(binDir, "demo-backends"),
			"--base-port", strconv.Itoa(base), "--shards", strconv.Itoa(n), "--servers", "1"}
		if admin {
			args = append(args, "--admin", net.JoinHostPort("127.0.0.1", strconv.Itoa(base+n)))
		}
		p := testenv.Start(t, "demo-backends", args)
		up := false
		testenv.WaitFor(t, 10*time.Second, "demo backends up", func() error {
			if p.Exited() || strings.Contains(p.Output(), "demo backends up") {
				up = !p.Exited()
				return nil
			}
			return fmt.Errorf("not up yet")
		})
		if up {
			return base
		}
	}
	t.Fatal("demo-backends: no free range of ports in 5 tries")
	return 0
}

// routing: ids on real HAProxy (2.6, or $SHARDMAP_HAPROXY) and the demo
// backends: an ID made by the generator lands on the shard its logical
// shard has in the logical map; an entry in the moved map (the syncer's map)
// overrides it; a cookie that is not an ID goes to the default shard; a
// "set map" of the logical map re-routes a whole logical shard live.
func TestIDsRouting(t *testing.T) {
	names := []string{"shard0", "shard1", "shard2", "shard3"}
	base := startDemoBackends(t, len(names), false)
	dir := t.TempDir()
	port := testenv.FreePort(t)
	topo := &haproxy.Topology{
		Cookie: "user",
		// Not shard0 or shard3: a non-numeric cookie would compute logical
		// shard 0 (shard0), an overflowing one 8191 (shard3), without the guard.
		DefaultShard: "shard1",
		Map:          filepath.Join(dir, "moved.map"),
		Frontend:     fmt.Sprintf("127.0.0.1:%d", port),
		Stats:        fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Socket:       filepath.Join(dir, "admin.sock"),
		Routing:      haproxy.RoutingIDs,
		Shards:       map[string]haproxy.Shard{},
	}
	for i, n := range names {
		topo.Shards[n] = haproxy.Shard{Servers: []haproxy.Server{{Addr: fmt.Sprintf("127.0.0.1:%d", base+i)}}}
	}
	if err := os.WriteFile(topo.Map, nil, 0o644); err != nil { // HAProxy will not start without it
		t.Fatal(err)
	}
	if created, err := haproxy.CreateLogicalMap(topo); err != nil || !created {
		t.Fatalf("CreateLogicalMap: %v %v", created, err)
	}
	cfg, err := haproxy.Render(topo, "e2e TestIDsRouting")
	if err != nil {
		t.Fatal(err)
	}
	testenv.StartHAProxy(t, dir, string(cfg), topo.Socket)
	rt, err := runtime.New(topo.Socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })

	rdb := testenv.StartRedis(t).Client(t)
	gen, err := ids.NewGenerator(rdb, "", ids.Default)
	if err != nil {
		t.Fatal(err)
	}
	logical, err := haproxy.ReadLogicalMap(topo.EffectiveLogicalMap(), ids.Default.LogicalShards())
	if err != nil {
		t.Fatal(err)
	}
	front := "http://127.0.0.1:" + strconv.Itoa(port)
	client := &http.Client{Timeout: 5 * time.Second}
	route := func(cookie *string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", front+"/", nil)
		if cookie != nil {
			req.AddCookie(&http.Cookie{Name: "user", Value: *cookie})
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request with cookie %v: %v", cookie, err)
		}
		resp.Body.Close()
		shard, _, _ := strings.Cut(resp.Header.Get("X-Served-By"), "/")
		if resp.StatusCode != 200 || shard == "" {
			t.Fatalf("request with cookie %v: status %d, X-Served-By %q", cookie, resp.StatusCode, resp.Header.Get("X-Served-By"))
		}
		return shard
	}
	newID := func(l int) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		id, err := gen.New(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		return strconv.FormatInt(id, 10)
	}

	// Generated IDs land where the logical map says, across every block.
	for _, l := range []int{0, 1, 2047, 2048, 4095, 4096, 6143, 6144, 8191, 1234, 5678} {
		id := newID(l)
		if got, want := route(&id), logical[l]; got != want {
			t.Errorf("ID %s (logical %d) went to %s, want %s", id, l, got, want)
		}
	}

	// A moved ID: its entry in the moved map wins over its logical shard.
	moved, stays := newID(0), newID(0)
	if res, err := rt.Apply(context.Background(), topo.Map, []runtime.Op{{Kind: runtime.Add, Key: moved, Value: "shard2"}}); err != nil || res[0] != nil {
		t.Fatalf("add map moved.map: %v %v", res, err)
	}
	if got := route(&moved); got != "shard2" {
		t.Errorf("moved ID %s went to %s, want shard2 (moved.map)", moved, got)
	}
	if got := route(&stays); got != logical[0] {
		t.Errorf("ID %s (logical 0, not moved) went to %s, want %s", stays, got, logical[0])
	}

	// Not an ID: the default shard.
	for _, c := range []string{"abc", "12345678901234567890", "-1024", "12 34", ""} {
		if got := route(&c); got != topo.DefaultShard {
			t.Errorf("cookie %q went to %s, want the default %s", c, got, topo.DefaultShard)
		}
	}
	// Documented edge (docs/IDS.md): 19 digits above 2^63-1 pass the guard
	// and HAProxy saturates them to 2^63-1, logical shard 8191. No ID is
	// that large, so no real request is misrouted.
	if c := "9999999999999999999"; route(&c) != logical[8191] {
		t.Errorf("cookie %s did not go to logical 8191's %s", c, logical[8191])
	}
	if got := route(nil); got != topo.DefaultShard {
		t.Errorf("no cookie went to %s, want the default %s", got, topo.DefaultShard)
	}

	// A logical shard moved live: every ID of it follows, others stay.
	on5, on6 := newID(5), newID(6)
	if logical[5] != "shard0" || logical[6] != "shard0" {
		t.Fatalf("logical 5 and 6 on %s and %s, want shard0", logical[5], logical[6])
	}
	if res, err := rt.Apply(context.Background(), topo.EffectiveLogicalMap(), []runtime.Op{{Kind: runtime.Set, Key: "5", Value: "shard3"}}); err != nil || res[0] != nil {
		t.Fatalf("set map logical.map 5 shard3: %v %v", res, err)
	}
	if got := route(&on5); got != "shard3" {
		t.Errorf("ID %s (logical 5, moved live to shard3) went to %s", on5, got)
	}
	if got := route(&on6); got != "shard0" {
		t.Errorf("ID %s (logical 6) went to %s, want shard0", on6, got)
	}
	if id := newID(5); route(&id) != "shard3" {
		t.Errorf("a new ID on logical 5 did not follow it to shard3")
	}
}

// mapctl id new makes IDs on the logical shard asked (a random one without
// --logical), id parse reads them back and, with a logical map, says where
// they route; a string that is not an ID exits 2 naming it and the rule.
// config render -o of a routing: ids topology creates the logical map once.
func TestIDsCLI(t *testing.T) {
	s := &stack{t: t, redis: testenv.StartRedis(t)}
	seen := map[string]bool{}
	for i := 0; i < 3; i++ {
		out := strings.TrimSpace(s.mustMapctl("id", "new", "--logical", "42"))
		_, p, err := ids.Parse(out)
		if err != nil || p.Logical != 42 || seen[out] {
			t.Fatalf("id new --logical 42 printed %q: %+v %v (seen before: %v)", out, p, err, seen[out])
		}
		seen[out] = true
	}
	if out := strings.TrimSpace(s.mustMapctl("id", "new")); func() error { _, _, err := ids.Parse(out); return err }() != nil {
		t.Fatalf("id new printed %q, not an ID", out)
	}
	var made struct {
		ID       string `json:"id"`
		Logical  int    `json:"logical"`
		Sequence int    `json:"sequence"`
		Millis   int64  `json:"millis"`
		Shard    string `json:"shard"`
	}
	if err := json.Unmarshal([]byte(s.mustMapctl("id", "new", "--logical", "7", "-o", "json")), &made); err != nil || made.Logical != 7 {
		t.Fatalf("id new -o json: %+v %v", made, err)
	}
	if id, _ := ids.Default.Compose(ids.Parts{Millis: made.Millis, Logical: 7, Sequence: made.Sequence}); strconv.FormatInt(id, 10) != made.ID {
		t.Fatalf("id new -o json: parts %+v do not compose to its id", made)
	}

	lmap := filepath.Join(t.TempDir(), "logical.map")
	os.WriteFile(lmap, []byte("# test\n7 shard5\n"), 0o644)
	var parsed struct {
		ID      string `json:"id"`
		Logical int    `json:"logical"`
		Shard   string `json:"shard"`
	}
	if err := json.Unmarshal([]byte(s.mustMapctl("id", "parse", made.ID, "--logical-map", lmap, "-o", "json")), &parsed); err != nil ||
		parsed.ID != made.ID || parsed.Logical != 7 || parsed.Shard != "shard5" {
		t.Fatalf("id parse -o json: %+v %v", parsed, err)
	}
	if out := s.mustMapctl("id", "parse", made.ID, "--logical-map", lmap); !strings.Contains(out, "routes to  shard5") {
		t.Fatalf("id parse: %s", out)
	}
	other := strings.TrimSpace(s.mustMapctl("id", "new", "--logical", "8"))
	if out := s.mustMapctl("id", "parse", other, "--logical-map", lmap); !strings.Contains(out, "the default shard") {
		t.Fatalf("id parse of logical 8, not in the map: %s", out)
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"id", "parse", "0123"}, 2, `ID "0123": leading zero`},
		{[]string{"id", "parse", "abc"}, 2, `ID "abc": not a decimal number`},
		{[]string{"id", "parse", "--", "-5"}, 2, `ID "-5": not a decimal number`},
		{[]string{"id", "parse", "9223372036854775808"}, 2, `larger than the largest ID`},
		{[]string{"id", "new", "--logical", "8192"}, 2, "--logical 8192: want a logical shard, 0..8191"},
		{[]string{"id", "parse", made.ID, "--logical-map", lmap + ".missing"}, 1, "no such file"},
	} {
		_, errs, code := s.mapctl(c.args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("mapctl %v: exit %d, stderr %q; want exit %d and %q", c.args, code, errs, c.code, c.want)
		}
	}

	// config render -o creates the logical map once and keeps it after.
	dir := t.TempDir()
	topo := fmt.Sprintf("routing: ids\ndefault_shard: a\nmap: %[1]s/moved.map\nfrontend: 127.0.0.1:1\nstats: 127.0.0.1:2\nsocket: %[1]s/a.sock\nshards: {a: {servers: [{addr: '127.0.0.1:3'}]}, b: {servers: [{addr: '127.0.0.1:4'}]}}\n", dir)
	os.WriteFile(filepath.Join(dir, "t.yaml"), []byte(topo), 0o644)
	s.mustMapctl("config", "render", "--topology", filepath.Join(dir, "t.yaml"), "-o", filepath.Join(dir, "haproxy.cfg"))
	m, err := haproxy.ReadLogicalMap(filepath.Join(dir, "logical.map"), 8192)
	if err != nil || len(m) != 8192 || m[0] != "a" || m[8191] != "b" {
		t.Fatalf("logical map after config render: %d entries, 0=%s 8191=%s, %v", len(m), m[0], m[8191], err)
	}
	os.WriteFile(filepath.Join(dir, "logical.map"), []byte("0 b\n"), 0o644)
	s.mustMapctl("config", "render", "--topology", filepath.Join(dir, "t.yaml"), "-o", filepath.Join(dir, "haproxy.cfg"))
	if b, _ := os.ReadFile(filepath.Join(dir, "logical.map")); string(b) != "0 b\n" {
		t.Fatalf("config render replaced an existing logical map: %q", b)
	}
}

package suite

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/ids"
	"github.com/shardmap/shardmap/maps"
)

// shardNames are the two shards every key set routes to; spareShard is a
// third backend that only the reassignment scenario moves users to.
var shardNames = []string{"shard0", "shard1"}

const spareShard = "shard2"

// frontend is one HAProxy serving one design's routing rules.
type frontend struct {
	name    string
	dir     string
	addr    string // the frontend, host:port
	mapPath string // users or moved map ("" for none)
	h       *haproxyProc
}

// topology is the product's topology for a design in dir, rendered by
// haproxy.Render like any deployment's.
func topology(dir, routing string) (*haproxy.Topology, error) {
	fport, err := freePort()
	if err != nil {
		return nil, err
	}
	sport, err := freePort()
	if err != nil {
		return nil, err
	}
	t := &haproxy.Topology{
		Cookie:       "user",
		DefaultShard: "shard0",
		Map:          filepath.Join(dir, "users.map"),
		Frontend:     fmt.Sprintf("127.0.0.1:%d", fport),
		Stats:        fmt.Sprintf("127.0.0.1:%d", sport),
		Socket:       filepath.Join(dir, "admin.sock"),
		StatsTimeout: 30 * time.Second,
		Shards: map[string]haproxy.Shard{
			// No traffic reaches these servers: each backend answers itself.
			"shard0":   {Servers: []haproxy.Server{{Addr: "127.0.0.1:9"}}},
			"shard1":   {Servers: []haproxy.Server{{Addr: "127.0.0.1:10"}}},
			spareShard: {Servers: []haproxy.Server{{Addr: "127.0.0.1:11"}}},
		},
	}
	if routing == haproxy.RoutingIDs {
		t.Routing = haproxy.RoutingIDs
		t.Map = filepath.Join(dir, "moved.map")
		t.LogicalMap = filepath.Join(dir, "logical.map")
	}
	return t, nil
}

// benchConfig renders t and adapts it for the benchmark, keeping the
// routing rules as rendered: one thread, and each backend answers the
// request itself with its name in the x-shard header, so that only HAProxy's
// routing is measured and no backend competes for the CPU. frontendRules,
// when set, replaces the rendered use_backend line (static and Lua designs).
func benchConfig(t *haproxy.Topology, frontendRules []string, globals ...string) ([]byte, error) {
	cfg, err := haproxy.Render(t, "shardmap-bench")
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	var out []string
	backend := ""
	replaced := false
	for _, line := range strings.Split(string(cfg), "\n") {
		trim := strings.TrimSpace(line)
		if frontendRules != nil && strings.HasPrefix(trim, "use_backend %[") {
			for _, r := range frontendRules {
				out = append(out, "    "+r)
			}
			replaced = true
			continue
		}
		out = append(out, line)
		switch {
		case trim == "global":
			out = append(out, "    nbthread 1")
			for _, g := range globals {
				out = append(out, "    "+g)
			}
		case strings.HasPrefix(trim, "backend "):
			backend = strings.TrimPrefix(trim, "backend ")
		case trim == "balance roundrobin" && backend != "":
			out = append(out, fmt.Sprintf("    http-request return status 200 content-type text/plain string %s hdr %s %s", backend, ShardHeader, backend))
		}
	}
	if frontendRules != nil && !replaced {
		return nil, fmt.Errorf("render: no use_backend line to replace in:\n%s", cfg)
	}
	return []byte(strings.Join(out, "\n")), nil
}

func writeUsersMap(path string, n int) error {
	mf := maps.MapFile{Entries: make([]maps.Assignment, n)}
	for i := range mf.Entries {
		mf.Entries[i] = maps.Assignment{User: userName(i), Shard: shardNames[i%2]}
	}
	if _, err := maps.WriteMapFile(path, mf, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// startFrontend writes cfg into dir and starts HAProxy on cpu.
func startFrontend(ctx context.Context, bin, name, dir string, t *haproxy.Topology, cfg []byte, cpu int) (*frontend, error) {
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	h, err := startHAProxy(ctx, bin, path, t.Socket, cpu)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &frontend{name: name, dir: dir, addr: t.Frontend, mapPath: t.Map, h: h}, nil
}

// idKeys are n generated IDs: ID i has logical shard i%8192, sequence
// (i/8192)%1024 and time base+i/(8192*1024) ms; moved IDs (every 1000th
// below 1M) are in the moved map on the other shard than their logical
// shard's. Requests draw IDs at random, so the cost does not depend on
// which: only the moved map's size could matter, and it is small.
type idKeys struct {
	n       int
	layout  ids.Layout
	base    int64
	logical []string // logical shard -> shard
}

func newIDKeys(n int, t *haproxy.Topology) idKeys {
	l := t.IDLayout()
	return idKeys{n: n, layout: l, base: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Sub(l.Epoch).Milliseconds(),
		logical: haproxy.Spread(l.LogicalShards(), t.ShardNames())}
}

const movedEvery, movedBelow = 1000, 1_000_000

func (k idKeys) id(i int) (int64, string) {
	ls, seqs := k.layout.LogicalShards(), k.layout.MaxSequence()+1
	logical := i % ls
	id, err := k.layout.Compose(ids.Parts{Millis: k.base + int64(i/(ls*seqs)), Logical: logical, Sequence: (i / ls) % seqs})
	if err != nil { // parts are in range by construction
		return 0, ""
	}
	shard := k.logical[logical]
	if i%movedEvery == 0 && i < movedBelow {
		shard = other(shard)
	}
	return id, shard
}

func other(shard string) string {
	if shard == shardNames[0] {
		return shardNames[1]
	}
	return shardNames[0]
}

func (k idKeys) Key(r *rand.Rand) (string, string) {
	id, shard := k.id(r.IntN(k.n))
	return strconv.FormatInt(id, 10), shard
}

func (k idKeys) movedMap() maps.MapFile {
	var mf maps.MapFile
	for i := 0; i < movedBelow && i < k.n; i += movedEvery {
		id, shard := k.id(i)
		mf.Entries = append(mf.Entries, maps.Assignment{User: strconv.FormatInt(id, 10), Shard: shard})
	}
	return mf
}

// luaScript is the seed's old design: an HAProxy Lua action that opens a
// TCP connection per request to a lookup service and asks for the user's
// shard.
const luaScript = `-- shardmap-bench: the old design, one TCP lookup per request.
core.register_action("shard_lookup", {"http-req"}, function(txn)
  local user = txn.f:req_cook("user")
  if user == nil or user == "" then return end
  local s = core.tcp()
  s:settimeout(1)
  if s:connect("127.0.0.1", %d) == nil then s:close() return end
  s:send(user .. "\n")
  local shard = s:receive("*l")
  s:close()
  if shard ~= nil and shard ~= "" then txn:set_var("txn.shard", shard) end
end)
`

// lookupService answers "user\n" with "shard\n" from a map of users, one
// question per connection (what the Lua action does), on 127.0.0.1.
type lookupService struct {
	ln    net.Listener
	users map[string]string
}

func startLookup(n int) (*lookupService, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("lookup service: %w", err)
	}
	s := &lookupService{ln: ln, users: make(map[string]string, n)}
	for i := 0; i < n; i++ {
		s.users[userName(i)] = shardNames[i%2]
	}
	go s.serve()
	return s, nil
}

func (s *lookupService) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *lookupService) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReaderSize(c, 256).ReadString('\n')
			if err != nil {
				return
			}
			shard, ok := s.users[strings.TrimSpace(line)]
			if !ok {
				shard = "shard0"
			}
			c.Write([]byte(shard + "\n"))
		}()
	}
}

func (s *lookupService) close() { s.ln.Close() }

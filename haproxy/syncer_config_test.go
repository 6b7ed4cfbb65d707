package haproxy

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestCheckRuntimeAddr(t *testing.T) {
	for _, a := range []string{
		"/run/haproxy/admin.sock",
		"unix@/run/haproxy/admin.sock",
		"ipv4@127.0.0.1:9999",
		"ipv4@lb1.example:9999",
		"ipv6@[::1]:9999",
		"127.0.0.1:9999",
		"localhost:9999",
		"[::1]:9999",
	} {
		if err := CheckRuntimeAddr(a); err != nil {
			t.Errorf("%q refused: %v", a, err)
		}
	}
	for a, rule := range map[string]string{
		"":                        "want an absolute unix path",
		"admin.sock":              "must be absolute",
		"run/admin.sock":          "must be absolute",
		"unix@admin.sock":         "unix@ wants an absolute path",
		"unix@":                   "unix@ wants an absolute path",
		"ipv4@127.0.0.1":          "want HOST:PORT",
		"ipv4@[::1]:9999":         "ipv4@ wants an IPv4 address",
		"ipv6@::1:9999":           "ipv6@ wants [HOST]:PORT",
		"ipv6@[127.0.0.1]:9999":   "ipv6@ wants an IPv6 address",
		"ipv6@[lb1]:9999":         "ipv6@ wants an IPv6 address",
		"127.0.0.1:0":             "port must be 1..65535",
		"127.0.0.1:65536":         "port must be 1..65535",
		"127.0.0.1:http":          "port must be 1..65535",
		":9999":                   "empty host",
		"bad_host!:9999":          "neither an IP address nor a host name",
		"abns@haproxy":            `unknown prefix "abns@"`,
		"tcp@127.0.0.1:1":         `unknown prefix "tcp@"`,
		"/run/a.sock,/run/b.sock": "no blanks, ','",
		"/run/my admin.sock":      "no blanks",
	} {
		err := CheckRuntimeAddr(a)
		if err == nil || !strings.Contains(err.Error(), rule) || !strings.Contains(err.Error(), `"`+a+`"`) {
			t.Errorf("%q: err = %v, want it to name the address and %q", a, err, rule)
		}
	}
}

func write(t *testing.T, dir, name, src string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const topoBase = "default_shard: s0\nfrontend: 127.0.0.1:7000\nstats: 127.0.0.1:8404\nsocket: /m/a.sock\nshards: {s0: {servers: [{addr: '127.0.0.1:1'}]}}\n"

func TestLoadSyncerConfig(t *testing.T) {
	share := func(f float64) *float64 { return &f }
	full := `targets: [/run/a.sock, "unix@/run/b.sock", "ipv4@127.0.0.1:9999", "localhost:9998"]
map: /etc/haproxy/users.map
map_file: /srv/haproxy/etc/haproxy/users.map
redis: redis://:pw@127.0.0.1:6379/0
redis_ca: /etc/ssl/ca.pem
redis_cert: /etc/ssl/c.pem
redis_key: /etc/ssl/c.key
prefix: "{x}"
listen: 127.0.0.1:9477
name: lb1
flush_delay: 50ms
reconcile_every: 2m
runtime_timeout: 1.5s
replace_above: 10
max_delete_share: 0
file_mode: 0600
log_format: json
log_level: debug
`
	fullWant := SyncerConfig{
		Targets: []string{"/run/a.sock", "unix@/run/b.sock", "ipv4@127.0.0.1:9999", "localhost:9998"},
		Map:     "/etc/haproxy/users.map", MapFile: "/srv/haproxy/etc/haproxy/users.map",
		Redis: "redis://:pw@127.0.0.1:6379/0", RedisCA: "/etc/ssl/ca.pem", RedisCert: "/etc/ssl/c.pem", RedisKey: "/etc/ssl/c.key",
		Prefix: "{x}", Listen: "127.0.0.1:9477", Name: "lb1",
		FlushDelay: 50 * time.Millisecond, ReconcileEvery: 2 * time.Minute, RuntimeTimeout: 1500 * time.Millisecond,
		ReplaceAbove: 10, MaxDeleteShare: share(0), FileMode: "0600", LogFormat: "json", LogLevel: "debug",
	}
	indent := func(s string) string {
		return "  " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ") + "\n"
	}
	for _, c := range []struct {
		name  string
		files map[string]string // "main" is loaded
		want  SyncerConfig
	}{
		{"syncer file, every key", map[string]string{"main": full}, fullWant},
		{"empty syncer file", map[string]string{"main": ""}, SyncerConfig{}},
		{"topology without a syncer section: its map and socket",
			map[string]string{"main": topoBase + "map: /m/users.map\n"},
			SyncerConfig{Map: "/m/users.map", Targets: []string{"/m/a.sock"}}},
		{"topology with a syncer section",
			map[string]string{"main": topoBase + "map: /etc/haproxy/users.map\nsyncer:\n" + indent(full)}, fullWant},
		{"topology map unset: the syncer section's",
			map[string]string{"main": topoBase + "syncer: {map: /x/users.map, map_file: /y/users.map}\n"},
			SyncerConfig{Map: "/x/users.map", MapFile: "/y/users.map", Targets: []string{"/m/a.sock"}}},
		{"routing: ids topology: its logical map too",
			map[string]string{"main": topoBase + "routing: ids\nmap: /m/moved.map\n"},
			SyncerConfig{Map: "/m/moved.map", LogicalMap: "/m/logical.map", Targets: []string{"/m/a.sock"}}},
		{"routing: ids topology, logical map named in both",
			map[string]string{"main": topoBase + "routing: ids\nmap: /m/moved.map\nlogical_map: /m/l.map\nsyncer: {logical_map: /m/l.map, logical_map_file: /y/l.map}\n"},
			SyncerConfig{Map: "/m/moved.map", LogicalMap: "/m/l.map", LogicalMapFile: "/y/l.map", Targets: []string{"/m/a.sock"}}},
		{"syncer file with a logical map",
			map[string]string{"main": "map: /m/moved.map\nlogical_map: /m/l.map\n"},
			SyncerConfig{Map: "/m/moved.map", LogicalMap: "/m/l.map"}},
		{"topology pointing to a syncer file (relative to it)",
			map[string]string{"main": topoBase + "map: /etc/haproxy/users.map\nsyncer_config: syncer.yaml\n", "syncer.yaml": full}, fullWant},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, src := range c.files {
				write(t, dir, name, src)
			}
			got, err := LoadSyncerConfig(filepath.Join(dir, "main"))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, c.want) {
				t.Errorf("got  %+v\nwant %+v", *got, c.want)
			}
		})
	}
}

// Each bad file is refused with an error naming the file and what is wrong,
// wrapping ErrSyncerConfig (a file of its own) or ErrTopology.
func TestLoadSyncerConfigRefuses(t *testing.T) {
	for _, c := range []struct {
		name  string
		files map[string]string
		is    error
		want  []string // in the error, besides the loaded file's path
	}{
		{"unknown key", map[string]string{"main": "map: /m\nsockets: [/a]\n"}, ErrSyncerConfig, []string{`unknown key "sockets"`, "line 2", "targets"}},
		{"unknown key in a topology's section", map[string]string{"main": topoBase + "map: /m\nsyncer: {socket: /a}\n"}, ErrTopology, []string{`syncer: line 7: unknown key "socket"`}},
		{"unknown key in the pointed file", map[string]string{"main": topoBase + "map: /m\nsyncer_config: s.yaml\n", "s.yaml": "bogus: 1\n"}, ErrTopology, []string{`unknown key "bogus"`, "s.yaml"}},
		{"both section and pointer", map[string]string{"main": topoBase + "map: /m\nsyncer: {}\nsyncer_config: s.yaml\n", "s.yaml": ""}, ErrTopology, []string{"not both"}},
		{"pointed file missing", map[string]string{"main": topoBase + "map: /m\nsyncer_config: nope.yaml\n"}, ErrTopology, []string{"nope.yaml"}},
		{"pointed file is a topology", map[string]string{"main": topoBase + "map: /m\nsyncer_config: t2.yaml\n", "t2.yaml": topoBase}, ErrTopology, []string{"is a topology"}},
		{"maps disagree", map[string]string{"main": topoBase + "map: /m/a.map\nsyncer: {map: /m/b.map}\n"}, ErrTopology, []string{"/m/b.map", "/m/a.map", "same map"}},
		{"logical maps disagree", map[string]string{"main": topoBase + "routing: ids\nmap: /m/moved.map\nsyncer: {logical_map: /m/other.map}\n"}, ErrTopology, []string{"/m/other.map", "/m/logical.map", "same map"}},
		{"logical map with routing: users", map[string]string{"main": topoBase + "map: /m/users.map\nsyncer: {logical_map: /m/l.map}\n"}, ErrTopology, []string{"/m/l.map", "only for routing: ids"}},
		{"logical map file without logical map", map[string]string{"main": "logical_map_file: /m/l.map\n"}, ErrSyncerConfig, []string{"logical_map_file needs logical_map"}},
		{"logical map is the map", map[string]string{"main": "map: /m/a.map\nlogical_map: /m/a.map\n"}, ErrSyncerConfig, []string{"must differ from map"}},
		{"relative logical map", map[string]string{"main": "logical_map: l.map\n"}, ErrSyncerConfig, []string{"logical_map", "absolute"}},
		{"no map anywhere", map[string]string{"main": topoBase}, ErrTopology, []string{"map"}},
		{"bad target", map[string]string{"main": "targets: [admin.sock]\n"}, ErrSyncerConfig, []string{"admin.sock", "absolute"}},
		{"target twice", map[string]string{"main": "targets: [/a, /a]\n"}, ErrSyncerConfig, []string{"twice"}},
		{"duration not Go", map[string]string{"main": "flush_delay: 200\n"}, ErrSyncerConfig, []string{`flush_delay "200"`, "Go duration"}},
		{"duration word", map[string]string{"main": "reconcile_every: soon\n"}, ErrSyncerConfig, []string{`reconcile_every "soon"`, "Go duration"}},
		{"negative duration", map[string]string{"main": "runtime_timeout: -1s\n"}, ErrSyncerConfig, []string{"runtime_timeout"}},
		{"share above 1", map[string]string{"main": "max_delete_share: 2\n"}, ErrSyncerConfig, []string{"max_delete_share"}},
		{"bad file mode", map[string]string{"main": "file_mode: rw\n"}, ErrSyncerConfig, []string{"file_mode", "octal"}},
		{"bad log format", map[string]string{"main": "log_format: xml\n"}, ErrSyncerConfig, []string{"log_format", "xml"}},
		{"bad log level", map[string]string{"main": "log_level: loud\n"}, ErrSyncerConfig, []string{"log_level", "loud"}},
		{"relative map", map[string]string{"main": "map: users.map\n"}, ErrSyncerConfig, []string{"map", "absolute"}},
		{"relative map_file", map[string]string{"main": "map_file: users.map\n"}, ErrSyncerConfig, []string{"map_file", "absolute"}},
		{"cert without key", map[string]string{"main": "redis_cert: /c.pem\n"}, ErrSyncerConfig, []string{"redis_key"}},
		{"bad listen", map[string]string{"main": "listen: 9477\n"}, ErrSyncerConfig, []string{"listen"}},
		{"not a mapping", map[string]string{"main": "- /a\n"}, ErrSyncerConfig, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, src := range c.files {
				write(t, dir, name, src)
			}
			path := filepath.Join(dir, "main")
			_, err := LoadSyncerConfig(path)
			if !errors.Is(err, c.is) {
				t.Fatalf("err = %v, want %v", err, c.is)
			}
			for _, w := range append(c.want, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err %q does not name %q", err, w)
				}
			}
		})
	}
	if _, err := LoadSyncerConfig(filepath.Join(t.TempDir(), "none.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want os.ErrNotExist", err)
	}
}

// The rendered haproxy.cfg names the map the syncer section names, also
// when only the syncer section names it; editing the topology keeps the
// section and a syncer_config pointer working.
func TestRenderUsesSyncerMap(t *testing.T) {
	topo, err := ParseTopology([]byte(topoBase + "syncer: {map: /x/users.map, map_file: /y/users.map}\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Render(topo, "t")
	if err != nil || !strings.Contains(string(cfg), "map(/x/users.map,s0)") {
		t.Fatalf("render: %v\n%s", err, cfg)
	}
	dir := t.TempDir()
	write(t, dir, "s.yaml", "map: /x/users.map\ntargets: [/m/a.sock, 127.0.0.1:9999]\n")
	path := write(t, dir, "topology.yaml", topoBase+"syncer_config: s.yaml\n")
	f, err := OpenTopologyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.AddServer("s0", Server{Addr: "127.0.0.1:2"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Topology(); got.Map != "/x/users.map" || len(got.Syncer.Targets) != 2 {
		t.Errorf("after an edit: map %q, syncer %+v", got.Map, got.Syncer)
	}
	// A topology built in code, with a syncer map that differs, is refused.
	topo.Syncer.Map = "/z/users.map"
	if _, err := Render(topo, "t"); !errors.Is(err, ErrTopology) {
		t.Errorf("render with disagreeing maps: %v, want ErrTopology", err)
	}
}

// The packaged example topology is a syncer configuration too.
func TestExampleTopologyConfiguresSyncer(t *testing.T) {
	c, err := LoadSyncerConfig("../deploy/topology.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Map != "/etc/haproxy/shardmap/users.map" || !reflect.DeepEqual(c.Targets, []string{"/run/haproxy/admin.sock"}) || c.Listen == "" {
		t.Errorf("example: %+v", c)
	}
}

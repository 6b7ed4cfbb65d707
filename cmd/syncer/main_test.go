package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/syncer"
)

func TestEveryCommandHasAnExample(t *testing.T) {
	cli.WalkCommands(newRoot(), func(c *cobra.Command) {
		if c.Example == "" {
			t.Errorf("%s has no example", c.CommandPath())
		}
	})
}

// Flags given the standard flag package's way keep working.
func TestSingleDashLong(t *testing.T) {
	got := singleDashLong(newRoot(), []string{"-redis", "redis://h:1", "-map=/m", "-v", "--socket", "/s", "-x", "--", "-name"})
	want := []string{"--redis", "redis://h:1", "--map=/m", "-v", "--socket", "/s", "-x", "--", "-name"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("redis away"), 1},
		{cli.Usagef("bad"), 2},
		{loggedError{syncer.ErrNameTaken}, 2},
		{loggedError{errors.New("x")}, 1},
	} {
		if got := exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

func TestBadFlagValuesExit2(t *testing.T) {
	for _, args := range [][]string{
		{"--socket", "/s", "--map", "/m", "--file-mode", "999"},
		{"--socket", "/s", "--map", "/m", "--max-delete-share", "2"},
		{"--socket", "/s", "--map", "/m", "--log-format", "xml"},
		{"--socket", "/s", "--map", "/m", "--log-level", "loud"},
		{"--socket", "/s", "--map", "/m", "--memory-limit-mb", "-1"},
		{"--map", "/m"},
	} {
		if got := run(args); got != 2 {
			t.Errorf("syncer %v: exit %d, want 2", args, got)
		}
	}
}

// "-help", which the standard flag package took, still prints the help and
// exits 0 (found by review).
func TestSingleDashHelp(t *testing.T) {
	if code := run([]string{"-help"}); code != 0 {
		t.Fatalf("syncer -help: exit %d, want 0", code)
	}
}

// envs are every environment variable the syncer reads; tests start with
// all of them empty (which the syncer takes as unset).
var envs = []string{envConfig, envMapFile, cli.EnvRedis, cli.EnvPrefix, cli.EnvSocket, cli.EnvMap, cli.EnvLogFormat, cli.EnvLogLevel}

// resolved runs the command line with env set and returns the options the
// syncer would run with, without running it.
func resolved(t *testing.T, env map[string]string, args ...string) (*options, error) {
	t.Helper()
	for _, k := range envs {
		t.Setenv(k, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	var got *options
	root := newRootRun(func(_ *cobra.Command, o *options) error { got = o; return nil })
	root.SetArgs(singleDashLong(root, args))
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	return got, root.Execute()
}

func writeFile(t *testing.T, name, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Today's invocations give the syncer exactly the configuration they gave
// it before the configuration file: the socket, the map as both name and
// file, the name HOST:MAP and every default.
func TestOldInvocationsUnchanged(t *testing.T) {
	host, _ := os.Hostname()
	want := syncer.Config{
		Name: host + ":/etc/haproxy/users.map", MapName: "/etc/haproxy/users.map", MapFile: "/etc/haproxy/users.map",
		Targets:    []string{"/run/haproxy/admin.sock"},
		FlushDelay: 200 * time.Millisecond, ReplaceAbove: 64, DeltaMax: 50_000, MaxDeleteShare: syncer.DefaultMaxDeleteShare,
		ReconcileEvery: time.Minute, FileMode: 0o640,
	}
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"flags", nil, []string{"--redis", "redis://127.0.0.1:1/0", "--socket", "/run/haproxy/admin.sock", "--map", "/etc/haproxy/users.map", "--listen", "127.0.0.1:9477"}},
		{"single-dash flags", nil, []string{"-socket", "/run/haproxy/admin.sock", "-map=/etc/haproxy/users.map"}},
		{"environment", map[string]string{cli.EnvSocket: "/run/haproxy/admin.sock", cli.EnvMap: "/etc/haproxy/users.map"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			o, err := resolved(t, c.env, c.args...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := syncerConfig(*o)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

// flag > environment > file > default, setting by setting.
func TestPrecedence(t *testing.T) {
	file := writeFile(t, "syncer.yaml", `targets: [/file.sock]
map: /file/users.map
map_file: /file/written.map
redis: redis://file:6379/0
prefix: "{file}"
listen: 127.0.0.1:1111
name: file
flush_delay: 1s
reconcile_every: 1h
runtime_timeout: 9s
replace_above: 7
max_delete_share: 0
file_mode: "0600"
log_format: json
log_level: warn
`)
	type view struct {
		Targets                                   []string
		Map, MapFile, Redis, Prefix, Listen, Name string
		Flush, Reconcile, Timeout                 time.Duration
		ReplaceAbove                              int
		Share                                     float64
		Mode                                      os.FileMode
		LogFormat, LogLevel                       string
	}
	see := func(o *options) view {
		return view{o.targets, o.mapName, o.mapFile, o.redis.URL, o.prefix, o.listen, o.name, o.flush, o.reconcileEvery,
			o.runtimeTimeout, o.replaceAbove, o.maxDeleteShare, o.mode, o.logFormat, o.logLevel}
	}
	fromFile := view{[]string{"/file.sock"}, "/file/users.map", "/file/written.map", "redis://file:6379/0", "{file}", "127.0.0.1:1111", "file",
		time.Second, time.Hour, 9 * time.Second, 7, 0, 0o600, "json", "warn"}
	envAll := map[string]string{
		cli.EnvSocket: "/env-a.sock, /env-b.sock", cli.EnvMap: "/env/users.map", envMapFile: "/env/written.map",
		cli.EnvRedis: "redis://env:6379/0", cli.EnvPrefix: "{env}", cli.EnvLogFormat: "text", cli.EnvLogLevel: "error",
	}
	fromEnv := fromFile
	fromEnv.Targets, fromEnv.Map, fromEnv.MapFile = []string{"/env-a.sock", "/env-b.sock"}, "/env/users.map", "/env/written.map"
	fromEnv.Redis, fromEnv.Prefix, fromEnv.LogFormat, fromEnv.LogLevel = "redis://env:6379/0", "{env}", "text", "error"
	flags := []string{"--config", file, "--socket", "/flag-a.sock", "--socket", "unix@/flag-b.sock,/flag-c.sock", "--map", "/flag/users.map",
		"--map-file", "/flag/written.map", "--redis", "redis://flag:6379/0", "--prefix", "{flag}", "--listen", "127.0.0.1:2222",
		"--name", "flag", "--flush-delay", "2s", "--reconcile-every", "2h", "--runtime-timeout", "2s", "--replace-above", "2",
		"--max-delete-share", "0.5", "--file-mode", "0644", "--log-format", "text", "--log-level", "info"}
	fromFlags := view{[]string{"/flag-a.sock", "unix@/flag-b.sock", "/flag-c.sock"}, "/flag/users.map", "/flag/written.map", "redis://flag:6379/0", "{flag}",
		"127.0.0.1:2222", "flag", 2 * time.Second, 2 * time.Hour, 2 * time.Second, 2, 0.5, 0o644, "text", "info"}
	host, _ := os.Hostname()
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		want view
	}{
		{"file over defaults", nil, []string{"--config", file}, fromFile},
		{"file named by the environment", map[string]string{envConfig: file}, nil, fromFile},
		{"environment over file", envAll, []string{"--config", file}, fromEnv},
		{"flags over environment and file", envAll, flags, fromFlags},
		{"map_file defaults to the effective map", nil, []string{"--socket", "/s", "--map", "/m"},
			view{[]string{"/s"}, "/m", "/m", cli.DefaultRedis, maps.DefaultPrefix, "", host + ":/m", 200 * time.Millisecond, time.Minute,
				3 * time.Second, 64, syncer.DefaultMaxDeleteShare, 0o640, cli.LogAuto, "info"}},
		{"-v beats the file's log level", nil, []string{"--config", file, "-v"}, func() view { v := fromFile; v.LogLevel = "debug"; return v }()},
	} {
		t.Run(c.name, func(t *testing.T) {
			o, err := resolved(t, c.env, c.args...)
			if err != nil {
				t.Fatal(err)
			}
			if got := see(o); !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

// The topology file itself is a configuration: its map and socket, then
// its syncer: section; a flag still wins.
func TestConfigIsTopology(t *testing.T) {
	topo := writeFile(t, "topology.yaml", `default_shard: s0
map: /etc/haproxy/users.map
frontend: 127.0.0.1:7000
stats: 127.0.0.1:8404
socket: /run/haproxy/admin.sock
shards: {s0: {servers: [{addr: "127.0.0.1:8000"}]}}
syncer:
  map_file: /srv/lb/users.map
  listen: 127.0.0.1:9477
`)
	o, err := resolved(t, nil, "--config", topo, "--listen", "127.0.0.1:9478")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.targets, []string{"/run/haproxy/admin.sock"}) || o.mapName != "/etc/haproxy/users.map" ||
		o.mapFile != "/srv/lb/users.map" || o.listen != "127.0.0.1:9478" {
		t.Errorf("from the topology: %+v", o)
	}
}

// Bad configuration is bad usage: exit 2, with the input and the rule named.
func TestConfigErrors(t *testing.T) {
	bad := writeFile(t, "bad.yaml", "map: /m\nsocket: /s\n")
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--config", bad}, []string{bad, "socket"}},
		{[]string{"--config", "/nonexistent/syncer.yaml"}, []string{"/nonexistent/syncer.yaml"}},
		{[]string{"--socket", "admin.sock", "--map", "/m"}, []string{`"admin.sock"`, "absolute"}},
		{[]string{"--socket", "tcp@127.0.0.1:1", "--map", "/m"}, []string{`"tcp@127.0.0.1:1"`, "unknown prefix"}},
		{[]string{"--socket", "127.0.0.1:0", "--map", "/m"}, []string{`"127.0.0.1:0"`, "port"}},
		{[]string{"--socket", "/s,/s", "--map", "/m"}, []string{`"/s"`, "twice"}},
		{[]string{"--socket", "/s"}, []string{"--socket and --map are required"}},
	} {
		_, err := resolved(t, nil, c.args...)
		var u cli.UsageError
		if !errors.As(err, &u) {
			t.Errorf("%v: err = %v, want a usage error", c.args, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: %q does not name %q", c.args, err, w)
			}
		}
	}
}

// Several targets, TCP targets and a map file apart from the map reach the
// syncer as given; the file's Redis TLS files reach the Redis flags unless
// a flag says otherwise.
func TestSyncerConfigTargets(t *testing.T) {
	o, err := resolved(t, nil, "--socket", "/a", "--socket", "ipv4@127.0.0.1:9999", "--map", "/m", "--map-file", "/f")
	if err != nil {
		t.Fatal(err)
	}
	c, err := syncerConfig(*o)
	if err != nil || !slices.Equal(c.Targets, []string{"/a", "ipv4@127.0.0.1:9999"}) || c.MapName != "/m" || c.MapFile != "/f" {
		t.Errorf("two targets and a map file: %+v, %v", c, err)
	}
	tls := writeFile(t, "tls.yaml", "redis_ca: /ca.pem\nredis_cert: /c.pem\nredis_key: /k.pem\n")
	o, err = resolved(t, nil, "--config", tls, "--socket", "/a", "--map", "/m", "--redis-cert", "/flag.pem")
	if err != nil {
		t.Fatal(err)
	}
	if o.redis.TLS.CA != "/ca.pem" || o.redis.TLS.Cert != "/flag.pem" || o.redis.TLS.Key != "/k.pem" {
		t.Errorf("TLS files %+v, want the file's CA and the flag's cert", o.redis.TLS)
	}
}

// A routing: ids topology as --config runs the second syncer: the logical
// map (the topology's) as its map and file, named NAME:logical, with the
// same targets; --logical-map does it without a topology. Without either,
// there is no second syncer.
func TestLogicalSyncerFromTopology(t *testing.T) {
	topo := writeFile(t, "topology.yaml", `default_shard: s0
routing: ids
map: /etc/haproxy/moved.map
frontend: 127.0.0.1:7000
stats: 127.0.0.1:8404
socket: /run/haproxy/admin.sock
shards: {s0: {servers: [{addr: "127.0.0.1:8000"}]}}
syncer: {name: lb1}
`)
	o, err := resolved(t, nil, "--config", topo)
	if err != nil {
		t.Fatal(err)
	}
	if o.logicalMap != "/etc/haproxy/logical.map" || o.logicalMapFile != "/etc/haproxy/logical.map" {
		t.Fatalf("logical map from the topology: %q, file %q", o.logicalMap, o.logicalMapFile)
	}
	cfg, err := syncerConfig(*o)
	if err != nil {
		t.Fatal(err)
	}
	l := logicalConfig(*o, cfg)
	if l.Name != "lb1:logical" || l.MapName != "/etc/haproxy/logical.map" || l.MapFile != "/etc/haproxy/logical.map" ||
		!slices.Equal(l.Targets, cfg.Targets) || cfg.MapName != "/etc/haproxy/moved.map" {
		t.Errorf("logical syncer config %+v (main %+v)", l, cfg)
	}
	o, err = resolved(t, nil, "--socket", "/s", "--map", "/m/moved.map", "--logical-map", "/m/logical.map", "--logical-map-file", "/f/logical.map")
	if err != nil || o.logicalMap != "/m/logical.map" || o.logicalMapFile != "/f/logical.map" {
		t.Errorf("flags: %+v, %v", o, err)
	}
	o, err = resolved(t, nil, "--socket", "/s", "--map", "/m/users.map")
	if err != nil || o.logicalMap != "" {
		t.Errorf("no logical map: %q, %v", o.logicalMap, err)
	}
	for _, args := range [][]string{
		{"--socket", "/s", "--map", "/m/a.map", "--logical-map", "/m/a.map"},
		{"--socket", "/s", "--map", "/m/a.map", "--logical-map-file", "/m/l.map"},
		{"--socket", "/s", "--map", "/m/a.map", "--logical-map", "/m/l.map", "--logical-map-file", "/m/a.map"},
	} {
		var u cli.UsageError
		if _, err := resolved(t, nil, args...); !errors.As(err, &u) {
			t.Errorf("%v: err = %v, want a usage error", args, err)
		}
	}
}

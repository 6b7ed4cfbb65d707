package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

// noRedis is an environment in which any use of Redis fails: the URL does
// not even parse, so a command that opened a client would exit 2.
var noRedis = []string{"SHARDMAP_REDIS=%zz not a url"}

// runBin runs a binary of binDir with env added and returns stdout, stderr
// and the exit code.
func runBin(t *testing.T, env []string, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return out.String(), errb.String(), 0
}

// --version and version print the name, version and Go version, need no
// Redis, and a link-time version replaces the module's.
func TestCLIVersion(t *testing.T) {
	for _, bin := range []string{"syncer", "mapctl"} {
		for _, args := range [][]string{{"--version"}, {"version"}} {
			out, errs, code := runBin(t, noRedis, bin, args...)
			if code != 0 || !strings.HasPrefix(out, bin+" ") || !strings.Contains(out, "go:       "+goruntime.Version()) {
				t.Errorf("%s %v: exit %d, stdout %q, stderr %q", bin, args, code, out, errs)
			}
		}
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir+"/", "-ldflags", "-X github.com/shardmap/shardmap/internal/cli.Version=v9.9.9-e2e", "../cmd/mapctl")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out, err := exec.Command(filepath.Join(dir, "mapctl"), "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "mapctl v9.9.9-e2e\n") {
		t.Errorf("mapctl built with -X Version: %v %q", err, out)
	}
}

// An unknown flag or command is bad usage: exit 2, named on stderr.
func TestCLIUnknownFlagOrCommandExits2(t *testing.T) {
	for _, c := range []struct {
		bin  string
		args []string
		want string
	}{
		{"syncer", []string{"--no-such-flag"}, "--no-such-flag"},
		{"syncer", []string{"no-such-command"}, `unknown command "no-such-command"`},
		{"mapctl", []string{"--no-such-flag", "list"}, "--no-such-flag"},
		{"mapctl", []string{"list", "--no-such-flag"}, "--no-such-flag"},
		{"mapctl", []string{"no-such-command"}, `unknown command "no-such-command"`},
		{"mapctl", []string{"config", "no-such-command"}, `unknown command "no-such-command"`},
		{"mapctl", []string{"list", "-o", "yaml"}, "yaml"},
	} {
		out, errs, code := runBin(t, noRedis, c.bin, c.args...)
		if code != 2 || !strings.Contains(errs, c.want) {
			t.Errorf("%s %v: exit %d, stderr %q (stdout %q), want 2 and %q", c.bin, c.args, code, errs, out, c.want)
		}
	}
}

// Completion scripts for bash, zsh and fish, and help, come without Redis.
func TestCLICompletionNeedsNoRedis(t *testing.T) {
	for _, bin := range []string{"syncer", "mapctl"} {
		for _, sh := range []string{"bash", "zsh", "fish"} {
			out, errs, code := runBin(t, noRedis, bin, "completion", sh)
			if code != 0 || !strings.Contains(out, bin) || len(out) < 500 {
				t.Errorf("%s completion %s: exit %d, %d bytes, stderr %q", bin, sh, code, len(out), errs)
			}
		}
		out, errs, code := runBin(t, noRedis, bin, "help")
		if code != 0 || !strings.Contains(out, "Examples:") {
			t.Errorf("%s help: exit %d, stdout %q, stderr %q", bin, code, out, errs)
		}
	}
	for _, args := range [][]string{{}, {"config"}, {"set", "--help"}} {
		if out, errs, code := runBin(t, noRedis, "mapctl", args...); code != 0 || !strings.Contains(out, "Examples:") {
			t.Errorf("mapctl %v: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	// Completion of mapctl's -o values.
	out, errs, code := runBin(t, noRedis, "mapctl", "__complete", "get", "alice", "-o", "")
	if code != 0 || !strings.Contains(out, "json") || !strings.Contains(out, "table") {
		t.Errorf("mapctl __complete get -o: exit %d, %q %q", code, out, errs)
	}
}

// mapctl -o json prints one JSON document per command with the documented
// fields, and keeps the exit codes.
func TestMapctlOutputJSON(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	s.mustMapctl("set", "alice", "shard1", "--wait")
	s.mustMapctl("set", "bob", "shard2", "--wait")

	var one map[string]any
	mustJSON(t, s.mustMapctl("get", "alice", "-o", "json"), &one)
	if len(one) != 2 || one["user"] != "alice" || one["shard"] != "shard1" {
		t.Errorf("get -o json: %v", one)
	}
	if out, _, code := s.mapctl("get", "nobody", "--output", "json"); code != 1 || out != "" {
		t.Errorf("get -o json of a user with no shard: exit %d, stdout %q; want 1 and nothing", code, out)
	}

	var list []map[string]any
	mustJSON(t, s.mustMapctl("list", "-o", "json"), &list)
	if len(list) != 2 || list[0]["user"] != "alice" || list[0]["shard"] != "shard1" || list[1]["user"] != "bob" || len(list[0]) != 2 {
		t.Errorf("list -o json: %v", list)
	}
	mustJSON(t, s.mustMapctl("list", "-o", "json", "--shard", "shard3"), &list)
	if list == nil || len(list) != 0 {
		t.Errorf("list -o json of an empty shard: %v, want []", list)
	}

	var syncers struct {
		Syncers []map[string]any `json:"syncers"`
		Hidden  *int             `json:"hidden"`
	}
	mustJSON(t, s.mustMapctl("syncers", "-o", "json"), &syncers)
	if len(syncers.Syncers) != 1 || syncers.Hidden == nil {
		t.Fatalf("syncers -o json: %+v", syncers)
	}
	sy := syncers.Syncers[0]
	for _, k := range []string{"name", "state", "detail", "map", "ready", "standby", "entries", "applied", "behind", "lag_ms", "last_seen", "last_seen_ago_ms", "problem"} {
		if _, ok := sy[k]; !ok {
			t.Errorf("syncers -o json: no %q in %v", k, sy)
		}
	}
	if sy["name"] != "e2e" || sy["state"] != "ready" || sy["entries"] != 2.0 {
		t.Errorf("syncers -o json: %v", sy)
	}

	var st struct {
		Redis    map[string]any   `json:"redis"`
		Syncers  []map[string]any `json:"syncers"`
		File     map[string]any   `json:"file"`
		Live     map[string]any   `json:"live"`
		Problems *int             `json:"problems"`
	}
	mustJSON(t, s.mustMapctl("status", "-o", "json", "--socket", s.socket, "--map", s.mapPath), &st)
	if st.Problems == nil || *st.Problems != 0 || st.Redis["assignments"] != 2.0 || len(st.Syncers) != 1 ||
		st.Live["entries"] != 2.0 || st.Live["problem"] != false || st.File == nil || st.File["path"] != s.mapPath {
		t.Errorf("status -o json: %+v", st)
	}
	// A problem: still one JSON document on stdout, and exit 1.
	s.mustMapctl("set", "carol", "shard9", "--force")
	out, _, code := s.mapctl("status", "-o", "json")
	st.Problems, st.File, st.Live = nil, nil, nil
	mustJSON(t, out, &st)
	if code != 1 || st.Problems == nil || *st.Problems != 1 || st.Redis["unknown_shards"] != 1.0 || st.File != nil || st.Live != nil {
		t.Errorf("status -o json with an unknown shard: exit %d, %+v", code, st)
	}
}

func mustJSON(t *testing.T, doc string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(doc), v); err != nil {
		t.Fatalf("not one JSON document: %v\n%s", err, doc)
	}
}

// --log-format json, and auto off a terminal, log one JSON object a line;
// --log-level warn drops the info lines.
func TestSyncerLogFormatJSON(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		env  []string
	}{
		{"flag", []string{"--log-format", "json"}, nil},
		{"auto", nil, []string{"SHARDMAP_LOG_FORMAT=auto"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStack(t)
			args := append([]string{filepath.Join(binDir, "syncer"), "--redis", s.redis.URL, "--socket", s.socket,
				"--map", s.mapPath, "--name", "e2e"}, c.args...)
			s.syncer = testenv.Start(t, "syncer", args, c.env...)
			s.waitReady(60 * time.Second)
			s.waitLog(10*time.Second, `"msg":"syncer starting"`)
			lines := strings.Split(strings.TrimSpace(s.syncer.Output()), "\n")
			for _, l := range lines {
				var m map[string]any
				if err := json.Unmarshal([]byte(l), &m); err != nil || m["msg"] == nil || m["level"] == nil || m["time"] == nil {
					t.Errorf("not a JSON log line (%v): %q", err, l)
				}
			}
		})
	}
	t.Run("warn", func(t *testing.T) {
		s := newStack(t)
		s.startSyncer("--log-level", "warn")
		s.mustMapctl("set", "alice", "shard1", "--wait")
		if out := s.syncer.Output(); strings.Contains(out, "level=INFO") {
			t.Errorf("--log-level warn logged info lines:\n%s", out)
		}
	})
}

// syncer --config alone runs the syncer on a real HAProxy and Redis: from a
// file of syncer keys, and from the topology file itself (its map and
// socket, and its syncer: section).
func TestSyncerConfigFile(t *testing.T) {
	for _, c := range []struct {
		name string
		file func(s *stack) string
	}{
		{"syncer file", func(s *stack) string {
			return "targets: [\"unix@" + s.socket + "\"]\nmap: " + s.mapPath + "\nredis: " + s.redis.URL + "\nname: e2e\nflush_delay: 50ms\n"
		}},
		{"topology", func(s *stack) string {
			return "default_shard: shard0\nmap: " + s.mapPath + "\nfrontend: 127.0.0.1:7000\nstats: 127.0.0.1:8404\nsocket: " + s.socket +
				"\nshards: {shard0: {servers: [{addr: \"127.0.0.1:8000\"}]}}\nsyncer:\n  redis: " + s.redis.URL + "\n  name: e2e\n"
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStack(t)
			path := filepath.Join(s.dir, "config.yaml")
			if err := os.WriteFile(path, []byte(c.file(s)), 0o644); err != nil {
				t.Fatal(err)
			}
			s.syncer = testenv.Start(t, "syncer", []string{filepath.Join(binDir, "syncer"), "--config", path})
			s.waitReady(60 * time.Second)
			s.mustMapctl("set", "alice", "shard1", "--wait")
			s.mustRoute("alice", "shard1")
			s.waitLog(10*time.Second, "config="+path)
		})
	}
	// An address HAProxy would not take either is refused at start, exit 2.
	_, errs, code := runBin(t, noRedis, "syncer", "--socket", "tcp@127.0.0.1:9999", "--map", "/m")
	if code != 2 || !strings.Contains(errs, "tcp@127.0.0.1:9999") {
		t.Errorf("syncer --socket tcp@...: exit %d, stderr %q; want 2 and the address named", code, errs)
	}
}

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/internal/testenv"
)

// unitPath is where the package puts the syncer's systemd unit.
const unitPath = "/lib/systemd/system/shardmap-syncer.service"

// TestDebPackage builds the Debian package from the tree (scripts/deb.sh, what
// make deb runs), checks its control data and contents, installs it (dpkg -i,
// only as root with CI=true: CI's machine is throwaway) or unpacks it
// (dpkg-deb -x), checks the unit with systemd-analyze verify, and runs the
// packaged syncer and mapctl against a real HAProxy and Redis.
func TestDebPackage(t *testing.T) {
	for _, bin := range []string{"dpkg-deb", "dpkg"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not found: the package is built with Debian's dpkg tools, and this is not a Debian system", bin)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: install package systemd (scripts/deps.sh --browser does; it starts nothing)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	out, _ := run(t, ctx, "bash", "../scripts/deb.sh", t.TempDir())
	lines := strings.Split(strings.TrimSpace(out), "\n")
	deb := lines[len(lines)-1] // deb.sh prints the package's path last
	arch, _ := run(t, ctx, "dpkg", "--print-architecture")
	arch = strings.TrimSpace(arch)
	if !regexp.MustCompile(`/shardmap_[0-9][A-Za-z0-9.+~]*_` + regexp.QuoteMeta(arch) + `\.deb$`).MatchString(deb) {
		t.Fatalf("package path %q: want .../shardmap_<version>_%s.deb", deb, arch)
	}

	t.Run("control", func(t *testing.T) {
		fields, _ := run(t, ctx, "dpkg-deb", "-f", deb)
		want := map[string]*regexp.Regexp{
			"Package":      regexp.MustCompile(`^shardmap$`),
			"Version":      regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`),
			"Architecture": regexp.MustCompile(`^` + regexp.QuoteMeta(arch) + `$`),
			"Depends":      regexp.MustCompile(`^adduser$`), // static binaries: no libc
			"Recommends":   regexp.MustCompile(`^haproxy, redis-server$`),
		}
		got := map[string]string{}
		for _, l := range strings.Split(fields, "\n") {
			if k, v, ok := strings.Cut(l, ": "); ok && !strings.HasPrefix(l, " ") {
				got[k] = v
			}
		}
		for k, re := range want {
			if !re.MatchString(got[k]) {
				t.Errorf("control %s: %q, want %v", k, got[k], re)
			}
		}
		conffiles, _ := run(t, ctx, "dpkg-deb", "-I", deb, "conffiles")
		if conffiles != "/etc/default/shardmap-syncer\n" {
			t.Errorf("conffiles: %q, want only /etc/default/shardmap-syncer", conffiles)
		}
		postinst, _ := run(t, ctx, "dpkg-deb", "-I", deb, "postinst")
		if !strings.Contains(postinst, "adduser --system") || !strings.Contains(postinst, "--ingroup haproxy") {
			t.Errorf("postinst does not create the system user in group haproxy:\n%s", postinst)
		}
		var code strings.Builder // postinst without its comments
		for _, l := range strings.Split(postinst, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "#") {
				code.WriteString(l + "\n")
			}
		}
		for _, starts := range []string{"systemctl", "deb-systemd-invoke", "invoke-rc.d"} {
			if strings.Contains(code.String(), starts) {
				t.Errorf("postinst runs %s: the package must start and enable nothing", starts)
			}
		}
	})

	t.Run("contents", func(t *testing.T) {
		list, _ := run(t, ctx, "dpkg-deb", "-c", deb)
		got := map[string]string{} // path -> "mode owner"
		for _, l := range strings.Split(strings.TrimSpace(list), "\n") {
			f := strings.Fields(l)
			if len(f) < 6 {
				t.Fatalf("dpkg-deb -c line %q", l)
			}
			got[strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")] = f[0] + " " + f[1]
		}
		for path, want := range map[string]string{
			"/usr/bin/shardmap-syncer":     "-rwxr-xr-x root/root",
			"/usr/bin/mapctl":              "-rwxr-xr-x root/root",
			unitPath:                       "-rw-r--r-- root/root",
			"/etc/default/shardmap-syncer": "-rw------- root/root", // may hold the Redis password
			"/etc/haproxy/shardmap":        "drwxr-x--- root/root", // postinst hands it to shardmap
			"/usr/share/doc/shardmap/examples/topology.yaml": "-rw-r--r-- root/root",
		} {
			if got[path] != want {
				t.Errorf("%s: %q, want %q", path, got[path], want)
			}
		}
	})

	// root is where the package's files are: / when installed, else a temp
	// dir that also holds what systemd-analyze verify --root needs of the
	// system (its units, for the targets ours is ordered after; /bin/kill of
	// ExecReload).
	root, installed := "/", false
	if os.Geteuid() == 0 && os.Getenv("CI") == "true" {
		run(t, ctx, "dpkg", "-i", deb)
		installed = true
		t.Cleanup(func() {
			// --purge (dpkg -r, then the conffile and the directory's
			// override): CI's machine is left as it was, bar the user.
			if out, err := exec.Command("dpkg", "--purge", "shardmap").CombinedOutput(); err != nil {
				t.Errorf("dpkg --purge shardmap: %v\n%s", err, out)
			}
		})
		checkInstalled(t)
	} else {
		root = t.TempDir()
		t.Logf("not installing (needs root and CI=true): unpacking into %s", root)
		run(t, ctx, "cp", "-a", "/lib/systemd/system/.", mkdir(t, root, "lib/systemd/system"))
		kill, err := filepath.EvalSymlinks("/bin/kill")
		if err != nil {
			t.Fatalf("ExecReload uses /bin/kill: %v", err)
		}
		run(t, ctx, "cp", kill, filepath.Join(mkdir(t, root, "bin"), "kill"))
		run(t, ctx, "dpkg-deb", "-x", deb, root)
	}
	in := func(p string) string { return filepath.Join(root, p) }

	t.Run("systemd-analyze verify", func(t *testing.T) {
		verify := func(unit string) (string, error) {
			args := []string{"verify"}
			if !installed {
				args = append(args, "--root="+root)
			}
			cmd := exec.CommandContext(ctx, analyze, append(args, unit)...)
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		// verify exits 0 on unknown keys and bad values: any output is a finding.
		if out, err := verify(unitPath); err != nil || out != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unitPath, err, out)
		}
		// The check can fail: a copy of the unit with a bad line is reported.
		unit, err := os.ReadFile(in(unitPath))
		if err != nil {
			t.Fatal(err)
		}
		broken := "/lib/systemd/system/shardmap-e2e-broken.service"
		bad := bytes.Replace(unit, []byte("Restart=on-failure"), []byte("Restart=on-failure\nProtectSystem=bogus"), 1)
		if err := os.WriteFile(in(broken), bad, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(in(broken))
		if out, _ := verify(broken); !strings.Contains(out, "bogus") {
			t.Errorf("systemd-analyze verify did not report ProtectSystem=bogus in %s: %q", broken, out)
		}
	})

	t.Run("example topology", func(t *testing.T) {
		topo, err := haproxy.LoadTopology(in("/usr/share/doc/shardmap/examples/topology.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		env, err := os.ReadFile(in("/etc/default/shardmap-syncer"))
		if err != nil {
			t.Fatal(err)
		}
		// The example topology and the env file name the same map and socket.
		for _, want := range []string{"SHARDMAP_MAP=" + topo.Map + "\n", "SHARDMAP_SOCKET=" + topo.Socket + "\n"} {
			if !strings.Contains(string(env), want) {
				t.Errorf("/etc/default/shardmap-syncer has no %q:\n%s", want, env)
			}
		}
	})

	t.Run("packaged syncer and mapctl", func(t *testing.T) {
		s := newStack(t)
		s.syncer = testenv.Start(t, "shardmap-syncer", []string{in("/usr/bin/shardmap-syncer"), "--redis", s.redis.URL,
			"--socket", s.socket, "--map", s.mapPath, "--name", "e2e"})
		s.waitReady(120 * time.Second)
		mapctl := in("/usr/bin/mapctl")
		out, err := exec.CommandContext(ctx, mapctl, "--redis", s.redis.URL, "set", "deb-user", "shard2", "--wait").CombinedOutput()
		if err != nil {
			t.Fatalf("packaged mapctl set --wait: %v\n%s", err, out)
		}
		s.mustRoute("deb-user", "shard2")
		if shard, err := exec.CommandContext(ctx, mapctl, "--redis", s.redis.URL, "get", "deb-user").Output(); err != nil || strings.TrimSpace(string(shard)) != "shard2" {
			t.Errorf("packaged mapctl get deb-user: %q, %v; want shard2", shard, err)
		}
		// The unit's ExecReload: SIGHUP makes it look now; it keeps running.
		if err := s.syncer.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		s.waitLog(30*time.Second, "SIGHUP")
		if s.syncer.Exited() {
			t.Fatalf("syncer exited on SIGHUP: %s", s.syncer.Output())
		}
		s.waitConverged(30 * time.Second)
	})
}

// checkInstalled checks what the installed package's postinst set up: the
// shardmap system user, and the map's directory and file it may write.
func checkInstalled(t *testing.T) {
	t.Helper()
	u, err := user.Lookup("shardmap")
	if err != nil {
		t.Fatalf("postinst made no shardmap user: %v", err)
	}
	group := "shardmap"
	if _, err := user.LookupGroup("haproxy"); err == nil {
		group = "haproxy"
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{
		"/etc/haproxy/shardmap":           os.ModeDir | 0o750,
		"/etc/haproxy/shardmap/users.map": 0o640,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("after dpkg -i: %v", err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != mode || fmt.Sprint(st.Uid) != u.Uid || fmt.Sprint(st.Gid) != g.Gid {
			t.Errorf("%s: %v %d:%d, want %v shardmap(%s):%s(%s)", path, fi.Mode(), st.Uid, st.Gid, mode, u.Uid, group, g.Gid)
		}
	}
}

// run runs a command and fails the test unless it exits 0.
func run(t *testing.T, ctx context.Context, name string, args ...string) (string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), errb.String()
}

func mkdir(t *testing.T, root, rel string) string {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

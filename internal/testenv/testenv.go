// Package testenv starts real redis-server and haproxy processes for tests,
// on free loopback ports in the test's temp dir, and stops them (by PID)
// when the test ends.
package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// WaitFor polls cond every 10 ms until it returns nil or timeout passes, and
// then fails the test with cond's last error.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Ports handed out by FreePort: below Linux's ephemeral range (32768 up),
// from which every outgoing connection takes its source port. A port taken
// from that range (listening on port 0) could be taken again by one of the
// tests' many loopback clients before the server the port was for binds it
// (seen: "Address already in use" for HAProxy). Each test process walks the
// range from a random start, so parallel packages rarely meet.
const (
	portLow  = 20000
	portHigh = 32767
)

var nextPort = sync.OnceValue(func() *atomic.Int64 {
	var n atomic.Int64
	n.Store(rand.Int64N(portHigh - portLow + 1))
	return &n
})

// FreePort returns a TCP port free on 127.0.0.1 right now, below the
// ephemeral range.
func FreePort(t testing.TB) int {
	t.Helper()
	for range portHigh - portLow + 1 {
		p := portLow + int(nextPort().Add(1)%(portHigh-portLow+1))
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		return p
	}
	t.Fatalf("no free TCP port on 127.0.0.1 from %d to %d", portLow, portHigh)
	return 0
}

// HAProxyEnv names the environment variable that picks the haproxy the tests
// run (a path, such as the wrapper scripts/haproxy-3.0.sh prints); unset or
// empty, they run haproxy from PATH.
const HAProxyEnv = "SHARDMAP_HAPROXY"

// HAProxyPath returns the haproxy the tests run: $SHARDMAP_HAPROXY when it is
// set, else haproxy from PATH. The error says which is missing and how to get it.
func HAProxyPath() (string, error) {
	if p := os.Getenv(HAProxyEnv); p != "" {
		abs, err := exec.LookPath(p)
		if err != nil {
			return "", fmt.Errorf("%s=%s: not an executable file (bash scripts/haproxy-3.0.sh prints one for 3.0): %w", HAProxyEnv, p, err)
		}
		return abs, nil
	}
	p, err := exec.LookPath("haproxy")
	if err != nil {
		return "", fmt.Errorf("haproxy not found in PATH: install it (apt-get install -y haproxy), run .ci/run, or set %s: %w", HAProxyEnv, err)
	}
	return p, nil
}

var haproxyVersion struct {
	once sync.Once
	line string
	err  error
}

// HAProxyVersion returns the first line of `haproxy -v` of the haproxy the
// tests run (HAProxyPath), such as "HAProxy version 2.6.12-1+deb12u2 ...".
// The first call in a test binary prints that line and the path to stderr,
// so the test log says which HAProxy ran.
func HAProxyVersion() (string, error) {
	v := &haproxyVersion
	v.once.Do(func() {
		bin, err := HAProxyPath()
		if err != nil {
			v.err = err
			return
		}
		out, err := exec.Command(bin, "-v").CombinedOutput()
		line, _, _ := strings.Cut(string(out), "\n")
		if err != nil || !strings.HasPrefix(line, "HAProxy version ") {
			v.err = fmt.Errorf("%s -v: %v: %q", bin, err, out)
			return
		}
		v.line = line
		fmt.Fprintf(os.Stderr, "testenv: %s (%s)\n", line, bin)
	})
	return v.line, v.err
}

// Need fails the test at once, with the install command, when bin is missing.
// Need(t, "haproxy") returns HAProxyPath, which $SHARDMAP_HAPROXY overrides,
// and fails when that binary does not answer -v.
func Need(t testing.TB, bin string) string {
	t.Helper()
	if bin == "haproxy" {
		p, err := HAProxyPath()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := HAProxyVersion(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		pkg := map[string]string{"redis-server": "redis-server", "haproxy": "haproxy"}[bin]
		t.Fatalf("%s not found in PATH: install it (apt-get install -y %s), or run .ci/run", bin, pkg)
	}
	return p
}

// Proc is a child process started by a test, with its output captured.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	out  *SyncBuffer
	done chan struct{}
	err  error
}

// Start runs a process whose output is kept for the test log; it is killed
// when the test ends if still running.
func Start(t testing.TB, name string, args []string, env ...string) *Proc {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	// If the test binary dies (a test timeout panics without cleanups), the
	// child dies with it instead of lingering.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, out: out, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() || testing.Verbose() {
			t.Logf("--- %s (pid %d) output:\n%s", name, cmd.Process.Pid, out.String())
		}
		for _, bad := range []string{"panic:", "DATA RACE"} {
			if bytes.Contains(out.Bytes(), []byte(bad)) {
				t.Errorf("%s output shows %q", name, bad)
			}
		}
	})
	return p
}

// Pid is the process ID.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Output returns what the process printed so far.
func (p *Proc) Output() string { return p.out.String() }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process (not to any other).
func (p *Proc) Signal(sig syscall.Signal) error { return p.Cmd.Process.Signal(sig) }

// Pause stops the process with SIGSTOP and returns once every one of its
// threads is stopped: kill(2) returns before the other threads of a
// multi-threaded process (HAProxy 3.0 runs two here) have stopped, and one of
// them may still answer a request meanwhile. Resume with Signal(SIGCONT).
func (p *Proc) Pause(t testing.TB) {
	t.Helper()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %s: %v", p.Name, err)
	}
	task := fmt.Sprintf("/proc/%d/task", p.Pid())
	WaitFor(t, 10*time.Second, p.Name+" to stop", func() error {
		threads, err := os.ReadDir(task)
		if err != nil {
			return err
		}
		for _, th := range threads {
			stat, err := os.ReadFile(filepath.Join(task, th.Name(), "stat"))
			if err != nil {
				return err
			}
			// "pid (comm) S ...": the state follows the last ')'.
			i := bytes.LastIndexByte(stat, ')')
			if i < 0 || i+2 >= len(stat) {
				return fmt.Errorf("thread %s: unreadable stat %q", th.Name(), stat)
			}
			if st := stat[i+2]; st != 'T' && st != 't' {
				return fmt.Errorf("thread %s is in state %c", th.Name(), st)
			}
		}
		return nil
	})
}

// Wait waits up to timeout for the process to end and returns its exit error.
func (p *Proc) Wait(timeout time.Duration) (error, bool) {
	select {
	case <-p.done:
		return p.err, true
	case <-time.After(timeout):
		return nil, false
	}
}

// Kill ends the process with SIGKILL and waits for it.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	p.Cmd.Process.Kill()
	<-p.done
}

// SyncBuffer is a bytes.Buffer safe to read while a process writes it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *SyncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// Bytes returns a copy of what was written so far.
func (s *SyncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// Redis is a redis-server run by a test.
type Redis struct {
	*Proc
	Port int
	Dir  string
	URL  string
	// TLS, when not nil, is how Client reaches a TLS-only server.
	TLS *tls.Config
}

// StartRedis starts redis-server on a free loopback port with its data in a
// temp dir, no persistence, and waits until it answers PING.
func StartRedis(t testing.TB, extra ...string) *Redis {
	t.Helper()
	port := FreePort(t)
	r := &Redis{Port: port, Dir: t.TempDir(), URL: fmt.Sprintf("redis://127.0.0.1:%d/0", port)}
	return r.start(t, append([]string{"--port", strconv.Itoa(port)}, extra...))
}

// start runs redis-server in r.Dir with args and the test defaults, and
// waits until it answers PING.
func (r *Redis) start(t testing.TB, args []string) *Redis {
	t.Helper()
	bin := Need(t, "redis-server")
	r.Proc = Start(t, "redis-server", append([]string{bin, "--bind", "127.0.0.1",
		"--dir", r.Dir, "--save", "", "--appendonly", "no", "--protected-mode", "yes"}, args...))
	c := r.Client(t)
	WaitFor(t, 10*time.Second, "redis-server to answer", func() error {
		if r.Exited() {
			t.Fatalf("redis-server exited: %s", r.Output())
		}
		return c.Ping(context.Background()).Err()
	})
	return r
}

// Stop shuts Redis down, saving its data to its dir first (SHUTDOWN SAVE),
// and waits for the process to end.
func (r *Redis) Stop(t testing.TB) {
	t.Helper()
	c := redis.NewClient(r.options())
	defer c.Close()
	c.ShutdownSave(context.Background()) // the connection drops: no reply to check
	if _, done := r.Wait(10 * time.Second); !done {
		t.Fatal("redis-server did not shut down")
	}
}

// Restart starts redis-server again on the same port and dir, which loads
// the data Stop saved, and waits until it answers.
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	r.Proc = Start(t, "redis-server", append([]string(nil), r.Proc.Cmd.Args...))
	c := r.Client(t)
	WaitFor(t, 10*time.Second, "redis-server to answer again", func() error {
		if r.Exited() {
			t.Fatalf("redis-server exited: %s", r.Output())
		}
		return c.Ping(context.Background()).Err()
	})
}

func (r *Redis) options() *redis.Options {
	return &redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.Port), TLSConfig: r.TLS}
}

// Client returns a client for r, closed when the test ends.
func (r *Redis) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(r.options())
	t.Cleanup(func() { c.Close() })
	return c
}

// HAProxy is an haproxy process run by a test, in the foreground (-db), so
// its PID is the serving process's.
type HAProxy struct {
	*Proc
	Dir    string
	Config string
	Socket string
}

// StartHAProxy writes config to haproxy.cfg in dir, checks it with -c,
// starts haproxy and waits until the stats socket answers.
func StartHAProxy(t testing.TB, dir, config, socket string) *HAProxy {
	t.Helper()
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(Need(t, "haproxy"), "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, config)
	}
	return startHAProxy(t, &HAProxy{Dir: dir, Config: cfg, Socket: socket})
}

// Again starts a new haproxy with the same config (which loads the map file
// as it is on disk now) and extra arguments, such as "-sf", oldPid for a
// reload, and waits until its stats socket answers.
func (h *HAProxy) Again(t testing.TB, extra ...string) *HAProxy {
	t.Helper()
	return startHAProxy(t, &HAProxy{Dir: h.Dir, Config: h.Config, Socket: h.Socket}, extra...)
}

func startHAProxy(t testing.TB, h *HAProxy, extra ...string) *HAProxy {
	t.Helper()
	bin := Need(t, "haproxy")
	h.Proc = Start(t, "haproxy", append([]string{bin, "-db", "-f", h.Config}, extra...))
	t.Cleanup(func() {
		if t.Failed() {
			v, _ := HAProxyVersion()
			t.Logf("haproxy (pid %d) was %s", h.Pid(), v)
		}
	})
	WaitFor(t, 10*time.Second, "haproxy stats socket", func() error {
		if h.Exited() {
			t.Fatalf("haproxy exited: %s", h.Output())
		}
		c, err := net.Dial("unix", h.Socket)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return h
}

package suite

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/internal/testenv"
)

// proc is a child process the suite started; stop ends it by its PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 { // keep the head: enough to say why it failed
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// start runs args, on CPU cpu with taskset when cpu >= 0; the child gets
// SIGKILL if the suite dies.
func start(name string, cpu int, args []string, env ...string) (*proc, error) {
	if cpu >= 0 {
		if _, err := exec.LookPath("taskset"); err == nil {
			args = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, args...)
		}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after 5 s, and waits for the end.
func (p *proc) stop() {
	if p == nil || p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitFor polls cond every 2 ms until it returns nil or ctx ends.
func waitFor(ctx context.Context, what string, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// memStatus is VmRSS and VmHWM of a process, in bytes.
type memStatus struct{ RSS, HWM int64 }

func readMem(pid int) (memStatus, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStatus{}, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	defer f.Close()
	var m memStatus
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) < 1 {
			continue
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.RSS = n * 1024
		case "VmHWM":
			m.HWM = n * 1024
		}
	}
	return m, sc.Err()
}

// mb formats bytes as MB (10^6).
func mb(n int64) string { return trimFloat(float64(n)/1e6, 1) + " MB" }

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// redisProc is a redis-server on a free loopback port, no persistence.
type redisProc struct {
	*proc
	addr string
	rdb  *redis.Client
}

func startRedis(ctx context.Context, dir string, cpu int) (*redisProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := start("redis-server", cpu, []string{"redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--dir", dir, "--save", "", "--appendonly", "no", "--protected-mode", "yes"})
	if err != nil {
		return nil, err
	}
	r := &redisProc{proc: p, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	r.rdb = redis.NewClient(&redis.Options{Addr: r.addr, PoolSize: 16})
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := waitFor(wctx, "redis-server", func() error {
		if p.exited() {
			return fmt.Errorf("redis-server exited: %s", p.out.String())
		}
		return r.rdb.Ping(wctx).Err()
	}); err != nil {
		p.stop()
		return nil, err
	}
	return r, nil
}

func (r *redisProc) close() { r.rdb.Close(); r.stop() }

// haproxyProc is an haproxy in the foreground (-db): its PID serves.
type haproxyProc struct {
	*proc
	socket string
}

func startHAProxy(ctx context.Context, bin, cfgPath, socket string, cpu int) (*haproxyProc, error) {
	if out, err := exec.CommandContext(ctx, bin, "-c", "-f", cfgPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("haproxy -c -f %s: %w\n%s", cfgPath, err, out)
	}
	p, err := start("haproxy", cpu, []string{bin, "-db", "-f", cfgPath})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second) // a 1M-entry map takes seconds to load
	defer cancel()
	if err := waitFor(wctx, "haproxy stats socket", func() error {
		if p.exited() {
			return fmt.Errorf("haproxy exited: %s", p.out.String())
		}
		c, err := net.Dial("unix", socket)
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		p.stop()
		return nil, err
	}
	return &haproxyProc{proc: p, socket: socket}, nil
}

// haproxyBin is the haproxy the tests run too ($SHARDMAP_HAPROXY or PATH).
func haproxyBin() (bin, version string, err error) {
	bin, err = testenv.HAProxyPath()
	if err != nil {
		return "", "", err
	}
	v, err := testenv.HAProxyVersion()
	return bin, v, err
}

// cpuTime is the CPU time (user + system) a process has used so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
	}
	// "pid (comm) state ppid ...": utime and stime are fields 14 and 15,
	// the 12th and 13th after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu time of pid %d: unreadable stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu time of pid %d: short stat", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cpu time of pid %d: bad utime/stime", pid)
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(u+st) * time.Second / hz, nil
}

// perfTop samples process pid's CPU with Linux perf for d and returns
// where it went: the share of each shared object (the kernel, haproxy,
// libc, pcre2...), then the symbols above 1%, or "" when perf is not
// installed (the profile is optional: make bench runs without it). The
// samples are kept in path.
func perfTop(ctx context.Context, pid int, d time.Duration, path string) string {
	if _, err := exec.LookPath("perf"); err != nil {
		return ""
	}
	secs := strconv.FormatFloat(max(d, 500*time.Millisecond).Seconds(), 'f', 1, 64)
	rec := exec.CommandContext(ctx, "perf", "record", "-q", "-F", "499", "-p", strconv.Itoa(pid), "-o", path, "--", "sleep", secs)
	if out, err := rec.CombinedOutput(); err != nil {
		return fmt.Sprintf("no profile: perf record: %v: %s", err, bytes.TrimSpace(out))
	}
	report := func(limit int, args ...string) (string, error) {
		args = append([]string{"report", "-i", path, "--stdio", "--no-children"}, args...)
		out, err := exec.CommandContext(ctx, "perf", args...).Output()
		if err != nil {
			return "", fmt.Errorf("perf report: %w", err)
		}
		// perf lists the rows in its sort keys' order: by share here.
		var head string
		type row struct {
			pct  float64
			line string
		}
		var rows []row
		for _, l := range strings.Split(string(out), "\n") {
			t := strings.TrimSpace(l)
			if strings.HasPrefix(t, "# Samples") {
				head = t
			}
			pct, ok := strings.CutSuffix(strings.Fields(t + " x")[0], "%")
			if f, err := strconv.ParseFloat(pct, 64); ok && err == nil {
				rows = append(rows, row{f, strings.TrimRight(l, " ")})
			}
		}
		slices.SortStableFunc(rows, func(a, b row) int { return cmp.Compare(b.pct, a.pct) })
		lines := []string{head}
		for _, r := range rows[:min(limit, len(rows))] {
			lines = append(lines, r.line)
		}
		return strings.Join(lines, "\n"), nil
	}
	objs, err := report(6, "--sort", "dso", "-F", "overhead,dso")
	if err != nil {
		return "no profile: " + err.Error()
	}
	syms, err := report(15, "--sort", "dso,sym", "-F", "overhead,dso,sym", "--percent-limit", "1")
	if err != nil {
		return "no profile: " + err.Error()
	}
	_, syms, _ = strings.Cut(syms, "\n") // the samples line once
	return objs + "\n\n" + syms
}

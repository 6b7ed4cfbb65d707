// Package suite is shardmap's benchmark program (cmd/shardmap-bench, run by
// make bench): on loopback, with real haproxy and redis-server processes and
// the real syncer, it runs the scenarios (request path, propagation, churn,
// bulk, memory) and writes docs/BENCHMARKS.md and its PNG charts. Every
// figure in the docs comes from it.
package suite

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"golang.org/x/sys/unix"
)

// Scenarios, in the order they run.
var Scenarios = []string{"request", "propagation", "churn", "bulk", "memory"}

// Options size and place a run. Zero values are not defaults: use
// DefaultOptions or QuickOptions.
type Options struct {
	Only       []string // scenarios to run (all when empty); memory is measured along the others
	Out        string   // the doc written (docs/BENCHMARKS.md); charts go beside it
	ProfileDir string   // where the syncer's CPU profile is kept ("" for none)
	Mapctl     string   // the mapctl binary
	Quick      bool

	Users, UsersSmall  int // named users: the large and the small map
	IDsSmall, IDsLarge int
	Conc               int
	RequestDur         time.Duration
	Rounds             int
	PropSamples        int
	PropMax            time.Duration // longest one propagation measure may take (it stops sampling then)
	ChurnRates         []int
	ChurnDur           time.Duration
	ImportN, Reassign  int
	ImportProfile      time.Duration // how long the syncer is profiled while it applies the import
	HAProxyCPU         int           // -1: no pinning
	LoadCPU            int
	Command            string // the command line, for the doc
	MakeTarget         string // the make target that runs it, for the doc ("bench" when empty)
	GoTest             string // go test -bench output to include ("" for none)
	Readme             string // the README whose headline block is rewritten ("" for none; never in quick mode)
}

// DefaultOptions is the full run of make bench (under 10 minutes on 2 cores).
func DefaultOptions() Options {
	return Options{Out: "docs/BENCHMARKS.md", Mapctl: "bin/mapctl", ProfileDir: os.TempDir(),
		Users: 1_000_000, UsersSmall: 1_000, IDsSmall: 1_000_000, IDsLarge: 10_000_000,
		Conc: 32, RequestDur: 5 * time.Second, Rounds: 3, PropSamples: 300, PropMax: 20 * time.Second,
		ChurnRates: []int{1_000, 2_000, 5_000, 10_000, 20_000, 50_000}, ChurnDur: 10 * time.Second,
		ImportN: 1_000_000, Reassign: 300_000, ImportProfile: 5 * time.Second, HAProxyCPU: 0, LoadCPU: 1}
}

// QuickOptions is a smoke test: small counts, short runs (about a minute).
func QuickOptions() Options {
	o := DefaultOptions()
	o.Quick = true
	o.Users, o.IDsSmall, o.IDsLarge = 20_000, 20_000, 100_000
	o.RequestDur, o.Rounds, o.PropSamples, o.PropMax = time.Second, 1, 30, 3*time.Second
	o.ChurnRates, o.ChurnDur = []int{5_000, 20_000}, 3*time.Second
	o.ImportN, o.Reassign, o.ImportProfile = 20_000, 6_000, time.Second
	return o
}

// Main is the program: "shardmap-bench [flags]" runs the scenarios and
// writes the doc; "shardmap-bench syncer ..." is the child syncer.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "syncer" {
		if err := RunSyncer(args[1:], stderr); err != nil {
			fmt.Fprintln(stderr, "shardmap-bench syncer:", err)
			return 1
		}
		return 0
	}
	fs := flag.NewFlagSet("shardmap-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, "smoke test: small counts and short runs; the doc says so")
	only := fs.String("only", "", "comma-separated scenarios to run: "+strings.Join(Scenarios, ", ")+" (default all)")
	out := fs.String("o", "", "the doc to write (default docs/BENCHMARKS.md; with -quick, a temp dir)")
	mapctl := fs.String("mapctl", "bin/mapctl", "the mapctl binary (make build)")
	readme := fs.String("readme", "", "rewrite the headline block of this README (make bench: README.md); not with -quick")
	makeTarget := fs.String("make", "bench", "the make target that runs this, named in the doc (make bench-3.0: bench-3.0)")
	gotest := fs.String("gotest", "", "a file of go test -bench output (make bench writes bin/bench-go.txt) to include in the doc")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	o := DefaultOptions()
	if *quick {
		o = QuickOptions()
		o.Out = filepath.Join(os.TempDir(), "shardmap-bench-quick", "BENCHMARKS.md")
	}
	if *out != "" {
		o.Out = *out
	}
	o.Mapctl, o.GoTest, o.Readme, o.MakeTarget = *mapctl, *gotest, *readme, *makeTarget
	if *only != "" {
		for _, s := range strings.Split(*only, ",") {
			s = strings.TrimSpace(s)
			if !slices.Contains(Scenarios, s) {
				fmt.Fprintf(stderr, "shardmap-bench: -only %q: unknown scenario %q (want some of %s)\n", *only, s, strings.Join(Scenarios, ", "))
				return 2
			}
			o.Only = append(o.Only, s)
		}
	}
	o.Command = "shardmap-bench " + strings.Join(args, " ")
	if h := os.Getenv(testenv.HAProxyEnv); h != "" {
		o.Command = testenv.HAProxyEnv + "=" + h + " " + o.Command
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	if err := Run(ctx, o, stderr); err != nil {
		fmt.Fprintln(stderr, "shardmap-bench:", err)
		return 1
	}
	fmt.Fprintf(stdout, "shardmap-bench: wrote %s in %s\n", o.Out, time.Since(start).Round(time.Second))
	return 0
}

type suite struct {
	o        Options
	dir      string
	haproxy  string
	log      io.Writer
	cleanups []func()
}

func (s *suite) cleanup(f func()) { s.cleanups = append(s.cleanups, f) }

// runCleanups runs the cleanups registered since mark, last first.
func (s *suite) runCleanups(mark int) {
	for i := len(s.cleanups) - 1; i >= mark; i-- {
		s.cleanups[i]()
	}
	s.cleanups = s.cleanups[:mark]
}

func (s *suite) logf(format string, a ...any) {
	fmt.Fprintf(s.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func (s *suite) want(name string) bool { return len(s.o.Only) == 0 || slices.Contains(s.o.Only, name) }

func mkdir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mkdir: %w", err)
	}
	return nil
}

func writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// Run runs the scenarios o names and writes the doc and the charts.
func Run(ctx context.Context, o Options, log io.Writer) error {
	bin, version, err := haproxyBin()
	if err != nil {
		return err
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		return fmt.Errorf("redis-server not found in PATH (make deps): %w", err)
	}
	if _, err := os.Stat(o.Mapctl); err != nil && (len(o.Only) == 0 || slices.Contains(o.Only, "bulk")) {
		return fmt.Errorf("mapctl binary %s: %w (make build)", o.Mapctl, err)
	}
	dir, err := os.MkdirTemp("", "shardmap-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s := &suite{o: o, dir: dir, haproxy: bin, log: log}
	defer s.runCleanups(0)
	// The load generator (this process), Redis and the syncer share one
	// core; HAProxy has the other.
	if o.LoadCPU >= 0 {
		var set unix.CPUSet
		set.Set(o.LoadCPU)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			s.logf("not pinned to CPU %d: %v", o.LoadCPU, err)
		}
	}
	res := &results{started: time.Now(), haproxyVersion: version, load1: loadAvg()}
	if res.goBench, err = readGoTest(o.GoTest); err != nil {
		return err
	}
	if s.want("request") {
		s.logf("request path: %d designs, %d rounds of %s", 6, o.Rounds, o.RequestDur)
		mark := len(s.cleanups)
		res.request, err = s.requestPath(ctx)
		s.runCleanups(mark) // the request path's HAProxies are done
		if err != nil {
			return fmt.Errorf("request path: %w", err)
		}
	}
	var failed error
	if s.want("memory") && len(s.o.Only) > 0 {
		// Alone only: the other scenarios measure memory along the way.
		mark := len(s.cleanups)
		if failed = s.memory(ctx, res); failed != nil {
			res.failure = failed.Error()
		}
		s.runCleanups(mark)
	}
	if failed == nil && (s.want("propagation") || s.want("churn") || s.want("bulk")) {
		// A failure still writes what was measured, with the failure in
		// the doc; the run then fails.
		if failed = s.live(ctx, res); failed != nil {
			res.failure = failed.Error()
		}
	}
	res.took = time.Since(res.started)
	res.load2 = loadAvg()
	if err := s.write(res); err != nil {
		return err
	}
	return failed
}

// live runs the scenarios on Redis, HAProxy and the syncer.
func (s *suite) live(ctx context.Context, res *results) (err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	rig, err := s.startLive(ctx)
	if err != nil {
		return fmt.Errorf("live rig: %w", err)
	}
	// A syncer that dies ends the scenarios at once, with its output.
	stopping := make(chan struct{})
	defer close(stopping)
	go func() {
		select {
		case <-rig.syncer.done:
			out := rig.syncer.out.String()
			s.logf("the syncer exited: %s", out)
			cancel(fmt.Errorf("the syncer exited: %s", out))
		case <-stopping:
		}
	}()
	defer func() {
		if err != nil && context.Cause(ctx) != nil && context.Cause(ctx) != ctx.Err() {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
	}()
	small := s.o.UsersSmall
	if _, err := importUsers(ctx, rig.store, 0, small, 0); err != nil {
		return err
	}
	if _, err := waitLive(ctx, rig.fe, userName(small-1), shardNames[(small-1)%2], time.Minute); err != nil {
		return fmt.Errorf("first %d users live: %w", small, err)
	}
	rig.n = small
	prop := func(rate int) error {
		s.logf("propagation: %s users, churn %d/s", count(int64(rig.n)), rate)
		p, err := s.propagationWithChurn(ctx, rig, rate, s.o.PropSamples)
		if err != nil {
			return fmt.Errorf("propagation at %d users, churn %d/s: %w", rig.n, rate, err)
		}
		l := Summarize(p.Lat)
		s.logf("propagation: p50 %s p99 %s max %s (churn made %.0f/s)", ms(l.P50), ms(l.P99), ms(l.Max), p.ChurnGot)
		res.prop = append(res.prop, p)
		return nil
	}
	if s.want("propagation") {
		for _, rate := range []int{0, 10_000} {
			if err := prop(rate); err != nil {
				return err
			}
		}
	}
	b := &bulkResult{}
	res.bulk = b
	// The large map: mapctl import of new users (the bulk import figure).
	s.logf("bulk: mapctl import of %s new users", count(int64(s.o.ImportN)))
	if err := s.mapctlImport(ctx, rig, small, small+s.o.ImportN, b); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	s.logf("bulk: import %s, last live %s after", b.ImportTook, b.ImportLive)
	res.liveUsers = rig.n
	if s.want("propagation") {
		for _, rate := range []int{0, 10_000} {
			if err := prop(rate); err != nil {
				return err
			}
		}
	}
	if s.want("churn") {
		s.logf("churn: rates %v, %s each", s.o.ChurnRates, s.o.ChurnDur)
		idle, steps, err := s.churnRates(ctx, rig, s.o.ChurnRates, s.o.ChurnDur)
		if err != nil {
			return fmt.Errorf("churn: %w", err)
		}
		res.churnIdle, res.churn = idle, steps
	}
	if s.want("bulk") {
		s.logf("bulk: reassign %s users", count(int64(s.o.Reassign)))
		if err := s.reassign(ctx, rig, s.o.Reassign, b); err != nil {
			return fmt.Errorf("reassign: %w", err)
		}
		s.logf("bulk: reassign stored in %s, all live %s, probe %s", b.ReassignStore, b.ReassignLive, b.ReassignProbe)
		if err := s.fullLoad(ctx, s.o.ImportN, b); err != nil {
			return fmt.Errorf("full load: %w", err)
		}
		s.logf("bulk: replace %s", b.ReplaceTook)
	}
	if m, err := readMem(rig.syncer.pid()); err == nil {
		res.syncerMem = &m
	} else if rig.syncer.exited() {
		return errors.New("the syncer exited: " + rig.syncer.out.String())
	}
	if m, err := readMem(rig.fe.h.pid()); err == nil {
		res.liveHAProxy = &m
	}
	res.liveUsers = rig.n
	return nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

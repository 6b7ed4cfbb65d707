package suite

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// liveRig is Redis, one HAProxy routing named users and the syncer (its own
// process) keeping HAProxy's map equal to Redis.
type liveRig struct {
	redis   *redisProc
	store   *maps.Store
	fe      *frontend
	syncer  *proc
	pprof   string // the syncer's pprof address
	socket  string // HAProxy's Runtime API socket
	mapPath string // the map the syncer keeps (and its file)
	n       int    // users in Redis now: user000000000..
	probeOK func(i int) bool
}

func (s *suite) startLive(ctx context.Context) (*liveRig, error) {
	dir := filepath.Join(s.dir, "live")
	if err := mkdir(dir); err != nil {
		return nil, err
	}
	r, err := startRedis(ctx, dir, s.o.LoadCPU)
	if err != nil {
		return nil, err
	}
	s.cleanup(r.close)
	t, err := topology(dir, haproxy.RoutingUsers)
	if err != nil {
		return nil, err
	}
	// The layout recommended for big maps: on HAProxy before 2.9 the syncer
	// writes changes to the delta map and folds it into the map.
	t.DeltaMap = true
	if err := writeFile(t.Map, ""); err != nil {
		return nil, err
	}
	if _, err := haproxy.CreateDeltaMap(t); err != nil {
		return nil, err
	}
	cfg, err := benchConfig(t, nil)
	if err != nil {
		return nil, err
	}
	fe, err := startFrontend(ctx, s.haproxy, "live", dir, t, cfg, s.o.HAProxyCPU)
	if err != nil {
		return nil, err
	}
	s.cleanup(fe.h.stop)
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	rig := &liveRig{redis: r, store: maps.NewStore(r.rdb, ""), fe: fe, pprof: fmt.Sprintf("127.0.0.1:%d", port)}
	if err := rig.store.AddShards(ctx, append([]string{spareShard}, shardNames...)); err != nil {
		return nil, err
	}
	sp, err := startSyncer(r.addr, t.Socket, t.Map, rig.pprof, s.o.LoadCPU)
	if err != nil {
		return nil, err
	}
	rig.syncer, rig.socket, rig.mapPath = sp, t.Socket, t.Map
	s.cleanup(sp.stop)
	return rig, nil
}

// getter sends one request with a user cookie and returns x-shard.
type getter interface {
	get(key string) (string, error)
}

// prober is a getter that survives a broken connection: after an error it
// dials again at the next request. HAProxy busy with a large map update may
// stall a request past the connection's deadline.
type prober struct {
	addr string
	c    *httpConn
}

func (p *prober) get(key string) (string, error) {
	if p.c == nil {
		c, err := dialHTTP(p.addr)
		if err != nil {
			return "", err
		}
		p.c = c
	}
	shard, err := p.c.get(key)
	if err != nil {
		p.c.close()
		p.c = nil
	}
	return shard, err
}

func (p *prober) close() {
	if p.c != nil {
		p.c.close()
		p.c = nil
	}
}

// routedTo polls user's route through HAProxy until it is want, and
// returns when that was seen (the time of the answer). Failed requests
// count against limit like wrong answers.
func routedTo(ctx context.Context, c getter, user, want string, limit time.Duration) (time.Time, error) {
	begin := time.Now()
	deadline := begin.Add(limit)
	var last error
	for {
		got, err := c.get(user)
		now := time.Now()
		if err == nil && got == want {
			return now, nil
		}
		if err != nil {
			last = err
		}
		if now.After(deadline) || ctx.Err() != nil {
			return now, fmt.Errorf("%s still not routed to %q after %s (last answer %q, last error %v)", user, want, now.Sub(begin).Round(time.Millisecond), got, last)
		}
	}
}

// probeUser reports whether user i is reserved for propagation probes
// (churn never touches those).
func probeUser(i int) bool { return i%1000 == 7 }

// propagation makes samples changes, one at a time, each of a probe user
// to the other shard, and measures from Store.Set to the first request
// routed to the new shard.
func (s *suite) propagation(ctx context.Context, rig *liveRig, samples int) ([]time.Duration, int, error) {
	c := &prober{addr: rig.fe.addr}
	defer c.close()
	r := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	var lat []time.Duration
	timeouts := 0
	until := time.Now().Add(s.o.PropMax)
	for k := 0; k < samples && ctx.Err() == nil && time.Now().Before(until); k++ {
		i := r.IntN(rig.n/1000)*1000 + 7
		if i >= rig.n {
			i = 7
		}
		user := userName(i)
		cur, err := c.get(user)
		if err != nil {
			s.logf("propagation: %v", err)
			continue
		}
		want := other(cur)
		start := time.Now()
		if _, err := rig.store.Set(ctx, maps.Assignment{User: user, Shard: want}); err != nil {
			return nil, 0, err
		}
		at, err := routedTo(ctx, c, user, want, 10*time.Second)
		if err != nil {
			timeouts++
			s.logf("propagation: %v", err)
		}
		lat = append(lat, at.Sub(start))
	}
	return lat, timeouts, nil
}

// churn changes rate users a second (not probe users), in SetMany batches
// every 10 ms, until stop is closed; it returns the changes made.
func churn(ctx context.Context, store *maps.Store, n, rate int, stop <-chan struct{}) (int64, error) {
	if rate <= 0 {
		<-stop
		return 0, nil
	}
	const tick = 10 * time.Millisecond
	per := max(1, rate/100)
	r := rand.New(rand.NewPCG(11, uint64(time.Now().UnixNano())))
	start := time.Now()
	var done int64
	batch := make([]maps.Assignment, per)
	for {
		select {
		case <-stop:
			return done, nil
		case <-ctx.Done():
			return done, ctx.Err()
		default:
		}
		// Pace by the clock: catch up when behind, wait when ahead.
		due := int64(time.Since(start)/tick+1) * int64(per)
		if done >= due {
			time.Sleep(time.Until(start.Add(time.Duration(done/int64(per)) * tick)))
			continue
		}
		for j := range batch {
			i := r.IntN(n)
			if probeUser(i) {
				i++
			}
			batch[j] = maps.Assignment{User: userName(i % n), Shard: shardNames[r.IntN(2)]}
		}
		if _, err := store.SetMany(ctx, batch); err != nil {
			return done, err
		}
		done += int64(per)
	}
}

// propResult is one propagation measurement.
type propResult struct {
	Users     int
	ChurnWant int
	ChurnGot  float64 // achieved changes/s
	Lat       []time.Duration
	Timeouts  int
	Profile   string // the syncer's top frames during the measure (large maps only)
}

func (s *suite) propagationWithChurn(ctx context.Context, rig *liveRig, rate, samples int) (propResult, error) {
	// Start from a syncer that has caught up with what came before.
	drain, cancel := context.WithTimeout(ctx, liveLimit)
	_, err := waitLiveProbe(drain, rig)
	cancel()
	if err != nil {
		return propResult{}, fmt.Errorf("syncer catching up before the measure: %w", err)
	}
	var prof string
	var pwg sync.WaitGroup
	if s.o.ProfileDir != "" && rig.n > s.o.UsersSmall {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			prof = s.profileSyncer(ctx, rig, min(s.o.PropMax, 10*time.Second), fmt.Sprintf("syncer-propagation-%d.pprof", rate))
		}()
	}
	defer pwg.Wait()
	stop := make(chan struct{})
	var made int64
	var cerr error
	var wg sync.WaitGroup
	wg.Add(1)
	start := time.Now()
	go func() { defer wg.Done(); made, cerr = churn(ctx, rig.store, rig.n, rate, stop) }()
	if rate > 0 {
		time.Sleep(300 * time.Millisecond) // let the churn reach its pace before probing
	}
	lat, to, err := s.propagation(ctx, rig, samples)
	close(stop)
	wg.Wait()
	el := time.Since(start)
	if err == nil {
		err = cerr
	}
	pwg.Wait()
	return propResult{Users: rig.n, ChurnWant: rate, ChurnGot: float64(made) / el.Seconds(), Lat: lat, Timeouts: to, Profile: prof}, err
}

// waitLive waits until the last of users lo..hi-1 routes to its shard
// (i%2 unless flip); the syncer applies the log in order, so the last one
// live means all are.
func waitLive(ctx context.Context, fe *frontend, user, want string, limit time.Duration) (time.Time, error) {
	c := &prober{addr: fe.addr}
	defer c.close()
	return routedTo(ctx, c, user, want, limit)
}

// importUsers assigns users lo..hi-1 (user i to shardNames[(i+flip)%2]) with
// Store.Import and returns the ID of the last change.
func importUsers(ctx context.Context, st *maps.Store, lo, hi, flip int) (string, error) {
	as := make([]maps.Assignment, 0, hi-lo)
	for i := lo; i < hi; i++ {
		as = append(as, maps.Assignment{User: userName(i), Shard: shardNames[(i+flip)%2]})
	}
	return st.Import(ctx, as, 500, nil)
}

// bulkResult is the bulk scenario.
type bulkResult struct {
	ImportN                               int
	ImportTook                            time.Duration // mapctl import, wall time
	ImportLive                            time.Duration // from mapctl's exit to the last user live
	ImportLiveOK                          bool          // ImportLive was measured (the last user went live)
	ImportMaxRSS                          int64
	ImportAlone                           time.Duration // the same mapctl import into a Redis no syncer reads (0: not measured)
	ImportCPU                             importCPU     // CPU time of each process during the import
	ImportAloneCPU                        importCPU     // the same, for the import into a Redis no syncer reads
	Profile                               string        // top frames of the syncer from mapctl's start, while it applied the import
	FileWrite                             time.Duration // the import file (maps.WriteMapFile)
	ReassignN                             int
	ReassignStore                         time.Duration // Store.Import of the reassignments
	ReassignLive                          time.Duration // from the start to the last one live
	ReassignProbe                         time.Duration // a change made meanwhile: Set -> routed
	ReassignProfile                       string        // top frames of the syncer during the reassignment
	ReassignHAProxyCPU, ReassignSyncerCPU float64       // shares of a core from the start to the last one live
	ReplaceN                              int
	ReplaceTook                           time.Duration // runtime.Client.Replace into an empty map
	ReplaceHAProxy                        memStatus     // that HAProxy after
}

// mapctlImport imports users lo..hi-1 with the mapctl binary and measures
// it; then waits for the last user to be live.
func (s *suite) mapctlImport(ctx context.Context, rig *liveRig, lo, hi int, b *bulkResult) error {
	path := filepath.Join(s.dir, "import.map")
	mf := maps.MapFile{Entries: make([]maps.Assignment, 0, hi-lo)}
	for i := lo; i < hi; i++ {
		mf.Entries = append(mf.Entries, maps.Assignment{User: userName(i), Shard: shardNames[i%2]})
	}
	t0 := time.Now()
	if _, err := maps.WriteMapFile(path, mf, 0o644); err != nil {
		return err
	}
	b.FileWrite = time.Since(t0)
	mf = maps.MapFile{}
	cmd := exec.CommandContext(ctx, s.o.Mapctl, "--redis", "redis://"+rig.redis.addr+"/0", "--timeout", "5m", "import", path)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	// The syncer shares the core with mapctl and Redis while it applies
	// the import: profile it from the start, and count each one's CPU.
	profiled := s.profileMeanwhile(ctx, rig, "syncer-import.pprof", &b.Profile)
	cpu0 := rig.cpu()
	t0 = time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s import: %w", s.o.Mapctl, err)
	}
	b.ImportTook = time.Since(t0)
	b.ImportCPU = rig.cpu().since(cpu0)
	b.ImportCPU.Mapctl = processCPU(cmd.ProcessState)
	b.ImportN = hi - lo
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		b.ImportMaxRSS = ru.Maxrss * 1024
	}
	done := time.Now()
	at, err := waitLive(ctx, rig.fe, userName(hi-1), shardNames[(hi-1)%2], liveLimit)
	profiled()
	if err != nil {
		return err
	}
	b.ImportLive, b.ImportLiveOK = at.Sub(done), true
	rig.n = hi
	// The same import with no syncer reading the log: what mapctl and
	// Redis take on their own, on the same core.
	alone, cpu, err := s.importAlone(ctx, path)
	if err != nil {
		return fmt.Errorf("import with no syncer: %w", err)
	}
	b.ImportAlone, b.ImportAloneCPU = alone, cpu
	return nil
}

// importCPU is the CPU time (user and system) each process of the rig
// spent during an import.
type importCPU struct {
	Mapctl, Redis, Syncer, HAProxy time.Duration
}

// since is c minus an earlier reading.
func (c importCPU) since(c0 importCPU) importCPU {
	return importCPU{Mapctl: c.Mapctl - c0.Mapctl, Redis: c.Redis - c0.Redis, Syncer: c.Syncer - c0.Syncer, HAProxy: c.HAProxy - c0.HAProxy}
}

// cpu reads the CPU time of the rig's Redis, syncer and HAProxy (an
// unreadable one counts 0).
func (rig *liveRig) cpu() importCPU {
	var c importCPU
	c.Redis, _ = cpuTime(rig.redis.pid())
	c.Syncer, _ = cpuTime(rig.syncer.pid())
	c.HAProxy, _ = cpuTime(rig.fe.h.pid())
	return c
}

// processCPU is an exited process's user and system CPU time.
func processCPU(ps *os.ProcessState) time.Duration {
	return ps.UserTime() + ps.SystemTime()
}

// importAlone runs mapctl import of path into a fresh Redis on the load
// core that no syncer reads (--force: no HAProxy published its backends
// there), and returns its wall time and the CPU time of mapctl and Redis.
func (s *suite) importAlone(ctx context.Context, path string) (time.Duration, importCPU, error) {
	var cpu importCPU
	dir := filepath.Join(s.dir, "import-alone")
	if err := mkdir(dir); err != nil {
		return 0, cpu, err
	}
	r, err := startRedis(ctx, dir, s.o.LoadCPU)
	if err != nil {
		return 0, cpu, err
	}
	defer r.close()
	cmd := exec.CommandContext(ctx, s.o.Mapctl, "--redis", "redis://"+r.addr+"/0", "--timeout", "5m", "import", "--force", path)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	redis0, _ := cpuTime(r.pid())
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, cpu, fmt.Errorf("%s import: %w", s.o.Mapctl, err)
	}
	took := time.Since(t0)
	redis1, _ := cpuTime(r.pid())
	cpu.Redis, cpu.Mapctl = redis1-redis0, processCPU(cmd.ProcessState)
	return took, cpu, nil
}

// reassign moves users 0..n-1 to the spare shard and, 100 ms in, changes a
// probe user and measures its propagation.
func (s *suite) reassign(ctx context.Context, rig *liveRig, n int, b *bulkResult) error {
	c := &prober{addr: rig.fe.addr}
	defer c.close()
	probe := userName(rig.n - rig.n%1000 - 1000 + 7)
	cur, err := c.get(probe)
	if err != nil {
		return err
	}
	hap0, _ := cpuTime(rig.fe.h.pid())
	syn0, _ := cpuTime(rig.syncer.pid())
	start := time.Now()
	// The syncer and HAProxy share the work: profile the syncer meanwhile.
	defer s.profileMeanwhile(ctx, rig, "syncer-reassign.pprof", &b.ReassignProfile)()
	var wg sync.WaitGroup
	var ierr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Every user to the spare shard, which none is on: each is a change.
		as := make([]maps.Assignment, n)
		for i := range as {
			as[i] = maps.Assignment{User: userName(i), Shard: spareShard}
		}
		_, ierr = rig.store.Import(ctx, as, 500, nil)
		b.ReassignStore = time.Since(start)
	}()
	time.Sleep(100 * time.Millisecond)
	p0 := time.Now()
	if _, err := rig.store.Set(ctx, maps.Assignment{User: probe, Shard: other(cur)}); err != nil {
		return err
	}
	at, err := routedTo(ctx, c, probe, other(cur), time.Minute)
	if err != nil {
		return err
	}
	b.ReassignProbe = at.Sub(p0)
	wg.Wait()
	if ierr != nil {
		return ierr
	}
	at, err = routedTo(ctx, c, userName(n-1), spareShard, liveLimit)
	if err != nil {
		return err
	}
	b.ReassignLive = at.Sub(start)
	b.ReassignN = n
	hap1, _ := cpuTime(rig.fe.h.pid())
	syn1, _ := cpuTime(rig.syncer.pid())
	b.ReassignHAProxyCPU = float64(hap1-hap0) / float64(b.ReassignLive)
	b.ReassignSyncerCPU = float64(syn1-syn0) / float64(b.ReassignLive)
	return nil
}

// fullLoad replaces an empty HAProxy map with n entries (runtime.Client.Replace).
func (s *suite) fullLoad(ctx context.Context, n int, b *bulkResult) error {
	dir := filepath.Join(s.dir, "replace")
	if err := mkdir(dir); err != nil {
		return err
	}
	t, err := topology(dir, haproxy.RoutingUsers)
	if err != nil {
		return err
	}
	if err := writeFile(t.Map, ""); err != nil {
		return err
	}
	cfg, err := benchConfig(t, nil)
	if err != nil {
		return err
	}
	fe, err := startFrontend(ctx, s.haproxy, "replace", dir, t, cfg, s.o.HAProxyCPU)
	if err != nil {
		return err
	}
	defer fe.h.stop()
	rt, err := runtime.New(t.Socket, time.Minute)
	if err != nil {
		return err
	}
	defer rt.Close()
	es := make([]runtime.Entry, n)
	for i := range es {
		es[i] = runtime.Entry{Key: userName(i), Value: shardNames[i%2]}
	}
	t0 := time.Now()
	if err := rt.Replace(ctx, t.Map, es); err != nil {
		return fmt.Errorf("replace %d entries: %w", n, err)
	}
	b.ReplaceTook = time.Since(t0)
	b.ReplaceN = n
	b.ReplaceHAProxy, _ = readMem(fe.h.pid())
	return nil
}

// churnStep is one rate of the churn scenario.
type churnStep struct {
	Want     int
	Got      float64
	Lat      Latencies
	Timeouts int
	RPS      float64
	Profile  string // top frames of the syncer's CPU profile, when taken
	// HAProxy's top symbols during the step (perf), kept for the last
	// step only ("" without perf).
	HAProxyProfile string
	// CPU shares (1 = one core) of HAProxy and the syncer during the step.
	HAProxyCPU, SyncerCPU float64
	// HAProxy's and the syncer's CPU per change made at this rate with no
	// requests and no probes (the step's first churnQuiet): what applying a
	// change costs each, apart from serving (0: not measured).
	HAProxyPerChange, SyncerPerChange time.Duration
}

// churnQuiet is how long each churn rate first runs with no requests, to
// measure what the changes alone cost HAProxy and the syncer.
const churnQuiet = 3 * time.Second

// holds reports whether the step meets the churn target's conditions: the
// store took the rate (95%), propagation p99 < 100 ms with no timeout, and
// req/s at least 0.9 of idle.
func (c churnStep) holds(idle float64) bool {
	return c.propagates(c.Want) && c.RPS >= 0.9*idle
}

// propagates reports whether the step meets the target's conditions but
// req/s: the store took the rate, propagation p99 < 100 ms with no timeout.
// Higher rates are tried only while this holds.
func (c churnStep) propagates(rate int) bool {
	return c.Lat.N > 0 && c.Lat.P99 < 100*time.Millisecond && c.Timeouts == 0 && c.Got >= 0.95*float64(rate)
}

// churnRates runs each rate for d with the load generator on and probes
// propagation meanwhile; idle is the load generator's req/s without churn.
func (s *suite) churnRates(ctx context.Context, rig *liveRig, rates []int, d time.Duration) (idle float64, steps []churnStep, err error) {
	// (the syncer first catches up with the propagation measures' churn)
	drain, cancel := context.WithTimeout(ctx, liveLimit)
	_, err = waitLiveProbe(drain, rig)
	cancel()
	if err != nil {
		return 0, nil, fmt.Errorf("syncer catching up before the idle measure: %w", err)
	}
	lr, err := Load(ctx, rig.fe.addr, s.o.Conc, d, usersKeys{n: rig.n, shards: shardNames}, false)
	if err != nil {
		return 0, nil, err
	}
	idle = lr.RPS()
	s.logf("churn: idle %0.f req/s", idle)
	failed := false
	for _, rate := range rates {
		// The changes alone first: no requests, no probes.
		hapQ0, _ := cpuTime(rig.fe.h.pid())
		synQ0, _ := cpuTime(rig.syncer.pid())
		quietStop := make(chan struct{})
		time.AfterFunc(churnQuiet, func() { close(quietStop) })
		// HAProxy's profile meanwhile: where applying the changes goes.
		var hprof string
		hdone := make(chan struct{})
		go func() {
			defer close(hdone)
			if s.o.ProfileDir != "" {
				hprof = perfTop(ctx, rig.fe.h.pid(), churnQuiet-500*time.Millisecond, filepath.Join(s.o.ProfileDir, "haproxy-churn.perf"))
			}
		}()
		quietMade, err := churn(ctx, rig.store, rig.n, rate, quietStop)
		<-hdone
		if err != nil {
			return 0, nil, err
		}
		hapQ1, _ := cpuTime(rig.fe.h.pid())
		synQ1, _ := cpuTime(rig.syncer.pid())
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var made int64
		var cerr error
		var load LoadResult
		var lerr error
		var prof string
		start := time.Now()
		hap0, _ := cpuTime(rig.fe.h.pid())
		syn0, _ := cpuTime(rig.syncer.pid())
		wg.Add(2)
		go func() { defer wg.Done(); made, cerr = churn(ctx, rig.store, rig.n, rate, stop) }()
		go func() {
			defer wg.Done()
			load, lerr = Load(ctx, rig.fe.addr, s.o.Conc, d, usersKeys{n: rig.n, shards: shardNames}, false)
		}()
		var pwg sync.WaitGroup
		if s.o.ProfileDir != "" { // kept for the step that does not hold, or the last
			pwg.Add(1)
			go func() { defer pwg.Done(); prof = s.profileSyncer(ctx, rig, d-time.Second, "syncer-churn.pprof") }()
		}
		var lat []time.Duration
		timeouts := 0
		c := &prober{addr: rig.fe.addr}
		time.Sleep(300 * time.Millisecond)
		r := rand.New(rand.NewPCG(5, uint64(rate)))
		for time.Since(start) < d-200*time.Millisecond && ctx.Err() == nil {
			i := r.IntN(rig.n/1000)*1000 + 7
			user := userName(i)
			cur, err := c.get(user)
			if err != nil {
				timeouts++ // HAProxy stalled past the request deadline
				continue
			}
			t0 := time.Now()
			if _, err := rig.store.Set(ctx, maps.Assignment{User: user, Shard: other(cur)}); err != nil {
				break
			}
			at, err := routedTo(ctx, c, user, other(cur), 10*time.Second)
			if err != nil {
				timeouts++
			}
			lat = append(lat, at.Sub(t0))
		}
		c.close()
		close(stop)
		wg.Wait()
		pwg.Wait()
		if cerr != nil {
			return 0, nil, cerr
		}
		if lerr != nil {
			return 0, nil, lerr
		}
		el := time.Since(start)
		hap1, _ := cpuTime(rig.fe.h.pid())
		syn1, _ := cpuTime(rig.syncer.pid())
		for i := range steps {
			steps[i].HAProxyProfile = ""
		}
		st := churnStep{Want: rate, Got: float64(made) / el.Seconds(), Lat: Summarize(lat), Timeouts: timeouts, RPS: load.RPS(), Profile: prof, HAProxyProfile: hprof,
			HAProxyCPU: float64(hap1-hap0) / float64(el), SyncerCPU: float64(syn1-syn0) / float64(el)}
		if quietMade > 0 {
			st.HAProxyPerChange = (hapQ1 - hapQ0) / time.Duration(quietMade)
			st.SyncerPerChange = (synQ1 - synQ0) / time.Duration(quietMade)
		}
		s.logf("churn: %d/s (made %.0f/s): propagation p50 %s p99 %s max %s (%d samples, %d timeouts), %.0f req/s, cpu haproxy %.2f syncer %.2f",
			rate, st.Got, ms(st.Lat.P50), ms(st.Lat.P99), ms(st.Lat.Max), st.Lat.N, timeouts, st.RPS, st.HAProxyCPU, st.SyncerCPU)
		// The syncer's profile kept is the first step's that does not
		// hold, or the last one's when all hold.
		held := st.holds(idle)
		switch {
		case failed:
			st.Profile = ""
		case !held || rate == rates[len(rates)-1]:
			for i := range steps {
				steps[i].Profile = ""
			}
		default:
			st.Profile = ""
		}
		failed = failed || !held
		steps = append(steps, st)
		// Let the syncer drain before the next rate.
		drain, cancel := context.WithTimeout(ctx, liveLimit)
		_, err = waitLiveProbe(drain, rig)
		cancel()
		if err != nil {
			return 0, nil, err
		}
		if !st.propagates(rate) {
			break // higher rates will not either: keep make bench bounded
		}
	}
	return idle, steps, nil
}

// waitLiveProbe makes one change and waits for it: the syncer has caught up.
func waitLiveProbe(ctx context.Context, rig *liveRig) (time.Duration, error) {
	c := &prober{addr: rig.fe.addr}
	defer c.close()
	user := userName(7)
	cur, err := c.get(user)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if _, err := rig.store.Set(ctx, maps.Assignment{User: user, Shard: other(cur)}); err != nil {
		return 0, err
	}
	at, err := routedTo(ctx, c, user, other(cur), time.Minute)
	return at.Sub(t0), err
}

// profileSyncer takes a CPU profile of the syncer for d and returns its top
// frames (go tool pprof -top), or why not. The profile is kept in
// ProfileDir/file.
// profileMeanwhile profiles the syncer for ImportProfile in the
// background, into *top (when profiles are kept), and returns a wait for it.
func (s *suite) profileMeanwhile(ctx context.Context, rig *liveRig, file string, top *string) (wait func()) {
	var wg sync.WaitGroup
	if s.o.ProfileDir != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			*top = s.profileSyncer(ctx, rig, s.o.ImportProfile, file)
		}()
	}
	return wg.Wait
}

func (s *suite) profileSyncer(ctx context.Context, rig *liveRig, d time.Duration, file string) string {
	secs := max(1, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", rig.pprof, secs), nil)
	if err != nil {
		return "no profile: " + err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "no profile: " + err.Error()
	}
	defer resp.Body.Close()
	path := filepath.Join(s.o.ProfileDir, file)
	f, err := os.Create(path)
	if err != nil {
		return "no profile: " + err.Error()
	}
	_, err = io.Copy(f, resp.Body)
	f.Close()
	if err != nil {
		return "no profile: " + err.Error()
	}
	self, _ := os.Executable()
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount", "12", self, path).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("profile in %s; go tool pprof failed: %v", path, err)
	}
	return string(out)
}

// liveLimit bounds each wait for a bulk change to be live, so that make
// bench stays bounded; past it the run stops and the doc says why.
const liveLimit = 2 * time.Minute

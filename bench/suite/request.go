package suite

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/maps"
)

// design is one way of routing a request, measured by the request scenario.
type design struct {
	name    string
	short   string // for the chart
	fe      *frontend
	keys    KeySet
	profile bool // HAProxy's profile is taken (perf), after the rounds
}

// designRun is one design's medians over the rounds.
type designRun struct {
	Name, Short   string
	RPS           []float64       // one per round
	CPU           []float64       // HAProxy's CPU share during each round (1 = one core)
	CPUPerReq     []time.Duration // HAProxy CPU time per request, each round
	P50, P99      []time.Duration
	Requests      int64
	Wrong, Errors int64
	FirstErr      string
	// HAProxy's top symbols (perf) in one more run after the rounds
	// ("" when not taken).
	HAProxyProfile string
}

// requestResult is the request path scenario's outcome.
type requestResult struct {
	Runs     []*designRun
	Users    int // the larger user count
	IDsSmall int
	IDsLarge int
	MapWrite time.Duration // maps.WriteMapFile of Users users
	HAProxy  map[string]memStatus
	Conc     int
	Dur      time.Duration
	Rounds   int
}

func (r *requestResult) run(name string) *designRun {
	for _, d := range r.Runs {
		if d.Name == name {
			return d
		}
	}
	return nil
}

func (s *suite) requestPath(ctx context.Context) (*requestResult, error) {
	res := &requestResult{Users: s.o.Users, IDsSmall: s.o.IDsSmall, IDsLarge: s.o.IDsLarge, HAProxy: map[string]memStatus{},
		Conc: s.o.Conc, Dur: s.o.RequestDur, Rounds: s.o.Rounds}
	var designs []design
	// mk's routing routingUsersDelta is routing: users with delta_map.
	const routingUsersDelta = "users+delta"
	mk := func(name, routing string, n int, rules []string, globals ...string) (*frontend, *haproxy.Topology, error) {
		dir := filepath.Join(s.dir, name)
		if err := mkdir(dir); err != nil {
			return nil, nil, err
		}
		delta := routing == routingUsersDelta
		if delta {
			routing = haproxy.RoutingUsers
		}
		t, err := topology(dir, routing)
		if err != nil {
			return nil, nil, err
		}
		if delta {
			// delta_map: the delta holds 1,000 recent changes, as between
			// two folds; most lookups miss it and go on to the map.
			t.DeltaMap = true
			mf := maps.MapFile{}
			for i := 0; i < 1000; i++ {
				mf.Entries = append(mf.Entries, maps.Assignment{User: userName(i * (n / 1000)), Shard: shardNames[(i*(n/1000)+1)%2]})
			}
			if _, err := maps.WriteMapFile(maps.DeltaPath(t.Map), mf, 0o644); err != nil {
				return nil, nil, err
			}
		}
		switch routing {
		case haproxy.RoutingUsers:
			start := time.Now()
			if err := writeUsersMap(t.Map, n); err != nil {
				return nil, nil, err
			}
			if n == s.o.Users {
				res.MapWrite = time.Since(start)
			}
		case haproxy.RoutingIDs:
			if _, err := haproxy.CreateLogicalMap(t); err != nil {
				return nil, nil, err
			}
			if _, err := maps.WriteMapFile(t.Map, newIDKeys(s.o.IDsLarge, t).movedMap(), 0o644); err != nil {
				return nil, nil, err
			}
		}
		cfg, err := benchConfig(t, rules, globals...)
		if err != nil {
			return nil, nil, err
		}
		s.logf("request: starting haproxy for %s", name)
		fe, err := startFrontend(ctx, s.haproxy, name, dir, t, cfg, s.o.HAProxyCPU)
		if err != nil {
			return nil, nil, err
		}
		s.cleanup(fe.h.stop)
		return fe, t, nil
	}
	big := usersKeys{n: s.o.Users, shards: shardNames}
	fe, _, err := mk("static", haproxy.RoutingUsers, 0, []string{"use_backend shard1"})
	if err != nil {
		return nil, err
	}
	designs = append(designs, design{"static use_backend", "static", fe, fixedKeys{big, "shard1"}, true})
	fe, _, err = mk("users-small", haproxy.RoutingUsers, s.o.UsersSmall, nil)
	if err != nil {
		return nil, err
	}
	designs = append(designs, design{fmt.Sprintf("named users, map of %s", count(int64(s.o.UsersSmall))), "users " + short(s.o.UsersSmall), fe, usersKeys{n: s.o.UsersSmall, shards: shardNames}, false})
	fe, _, err = mk("users-large", haproxy.RoutingUsers, s.o.Users, nil)
	if err != nil {
		return nil, err
	}
	designs = append(designs, design{fmt.Sprintf("named users, map of %s", count(int64(s.o.Users))), "users " + short(s.o.Users), fe, big, true})
	fe, _, err = mk("users-large-delta", routingUsersDelta, s.o.Users, nil)
	if err != nil {
		return nil, err
	}
	designs = append(designs, design{fmt.Sprintf("named users, map of %s + delta map of 1,000 (delta_map)", count(int64(s.o.Users))), "users " + short(s.o.Users) + " +delta", fe, deltaKeys{big}, true})
	fe, t, err := mk("ids", haproxy.RoutingIDs, 0, nil)
	if err != nil {
		return nil, err
	}
	designs = append(designs,
		design{fmt.Sprintf("shard IDs, %s IDs", count(int64(s.o.IDsSmall))), "IDs " + short(s.o.IDsSmall), fe, newIDKeys(s.o.IDsSmall, t), false},
		design{fmt.Sprintf("shard IDs, %s IDs", count(int64(s.o.IDsLarge))), "IDs " + short(s.o.IDsLarge), fe, newIDKeys(s.o.IDsLarge, t), true})
	lk, err := startLookup(s.o.Users)
	if err != nil {
		return nil, err
	}
	s.cleanup(lk.close)
	luaPath := filepath.Join(s.dir, "lookup.lua")
	if err := writeFile(luaPath, fmt.Sprintf(luaScript, lk.port())); err != nil {
		return nil, err
	}
	fe, _, err = mk("lua", haproxy.RoutingUsers, 0,
		[]string{"http-request lua.shard_lookup", "use_backend %[var(txn.shard)] if { var(txn.shard) -m found }"},
		"lua-load "+luaPath)
	if err != nil {
		return nil, err
	}
	designs = append(designs, design{fmt.Sprintf("old design: Lua, a TCP lookup per request (%s users)", count(int64(s.o.Users))), "Lua lookup (old)", fe, big, false})

	for _, d := range designs {
		res.Runs = append(res.Runs, &designRun{Name: d.name, Short: d.short})
		if m, err := readMem(d.fe.h.pid()); err == nil {
			res.HAProxy[d.fe.name] = m
		}
	}
	// Warm up each frontend briefly, then A/B/A/B rounds.
	for _, d := range designs {
		if _, err := Load(ctx, d.fe.addr, s.o.Conc, s.o.RequestDur/5, d.keys, true); err != nil {
			return nil, fmt.Errorf("%s: warm-up: %w", d.name, err)
		}
	}
	for round := 1; round <= s.o.Rounds; round++ {
		for i, d := range designs {
			cpu0, _ := cpuTime(d.fe.h.pid())
			lr, err := Load(ctx, d.fe.addr, s.o.Conc, s.o.RequestDur, d.keys, true)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", d.name, err)
			}
			cpu1, _ := cpuTime(d.fe.h.pid())
			r := res.Runs[i]
			r.CPU = append(r.CPU, float64(cpu1-cpu0)/float64(lr.Elapsed))
			r.CPUPerReq = append(r.CPUPerReq, (cpu1-cpu0)/time.Duration(lr.Requests))
			r.RPS = append(r.RPS, lr.RPS())
			r.P50 = append(r.P50, lr.Lat.P50)
			r.P99 = append(r.P99, lr.Lat.P99)
			r.Requests += lr.Requests
			r.Wrong += lr.Wrong
			r.Errors += lr.Errors
			if r.FirstErr == "" {
				r.FirstErr = lr.FirstErr
			}
			s.logf("request: round %d %-16s %8.0f req/s p50 %s p99 %s haproxy cpu %.0f%% wrong %d errors %d", round, d.short, lr.RPS(), ms(lr.Lat.P50), ms(lr.Lat.P99), 100*r.CPU[len(r.CPU)-1], lr.Wrong, lr.Errors)
		}
	}
	for _, d := range designs {
		if m, err := readMem(d.fe.h.pid()); err == nil {
			res.HAProxy[d.fe.name] = m
		}
	}
	// Where HAProxy's CPU goes in the designs the targets compare: one
	// more run each, not in the medians (perf's sampling costs a little).
	if _, err := exec.LookPath("perf"); err == nil && s.o.ProfileDir != "" {
		for i, d := range designs {
			if !d.profile {
				continue
			}
			var lerr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, lerr = Load(ctx, d.fe.addr, s.o.Conc, profileRun, d.keys, true)
			}()
			res.Runs[i].HAProxyProfile = perfTop(ctx, d.fe.h.pid(), profileRun-time.Second, filepath.Join(s.o.ProfileDir, "haproxy-"+d.fe.name+".perf"))
			<-done
			if lerr != nil {
				return nil, fmt.Errorf("%s: profile run: %w", d.name, lerr)
			}
		}
	}
	return res, nil
}

// profileRun is how long the load runs while HAProxy is profiled.
const profileRun = 3 * time.Second

func medianDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(Median(xs))
}

// short writes n as 1k, 20k, 1M, 10M.
func short(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// Package bench measures shardmap against real HAProxy and Redis on
// loopback. Run: make bench, which runs these benchmarks (go test -bench .
// ./bench/ ./maps/) and then cmd/shardmap-bench (package bench/suite); the
// latter writes docs/BENCHMARKS.md, these figures included.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
	"github.com/shardmap/shardmap/syncer"
)

type rig struct {
	haproxy *testenv.HAProxy
	socket  string
	mapPath string
	rt      *runtime.Client
	redis   *testenv.Redis
	store   *maps.Store
}

// newRig starts HAProxy (one map, no traffic) and Redis.
func newRig(b *testing.B) *rig { return newRigWith(b, nil) }

// newRigWith is newRig with the topology changed by edit first (nil: none).
func newRigWith(b *testing.B, edit func(*haproxy.Topology)) *rig {
	dir := b.TempDir()
	r := &rig{mapPath: filepath.Join(dir, "users.map")}
	socket := filepath.Join(dir, "admin.sock")
	os.WriteFile(r.mapPath, nil, 0o644)
	// The routing rules come from the product's renderer. No traffic is sent:
	// the servers' address only has to be valid.
	topo := &haproxy.Topology{
		Cookie:       "user",
		DefaultShard: "shard0",
		Map:          r.mapPath,
		Frontend:     fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b)),
		Stats:        fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b)),
		Socket:       socket,
		StatsTimeout: 10 * time.Second,
		Shards: map[string]haproxy.Shard{
			"shard0": {Servers: []haproxy.Server{{Addr: "127.0.0.1:9"}}},
			"shard1": {Servers: []haproxy.Server{{Addr: "127.0.0.1:10"}}},
		},
	}
	if edit != nil {
		edit(topo)
	}
	if _, err := haproxy.CreateDeltaMap(topo); err != nil {
		b.Fatal(err)
	}
	cfg, err := haproxy.Render(topo, "bench newRig")
	if err != nil {
		b.Fatal(err)
	}
	r.haproxy, r.socket = testenv.StartHAProxy(b, dir, string(cfg), socket), socket
	rt, err := runtime.New(socket, 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rt.Close() })
	r.rt = rt
	r.redis = testenv.StartRedis(b)
	r.store = maps.NewStore(r.redis.Client(b), "")
	return r
}

// runSyncer starts a syncer with cfg (its logs discarded) on the rig until
// the benchmark ends.
func (r *rig) runSyncer(b *testing.B, cfg syncer.Config) *syncer.Syncer {
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if len(cfg.Targets) == 0 {
		cfg.Targets = []string{r.socket}
	}
	s, err := syncer.New(cfg, r.store, func(string) (syncer.Runtime, error) { return r.rt, nil })
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	return s
}

func entries(n int, shard string) []runtime.Entry {
	out := make([]runtime.Entry, n)
	for i := range out {
		out[i] = runtime.Entry{Key: fmt.Sprintf("user%09d", i), Value: shard}
	}
	return out
}

// Single adds of new keys on the long-lived connection, one round trip
// each: the protocol's cost.
func BenchmarkApplyOneAtATimeAdd(b *testing.B) {
	r := newRig(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		op := runtime.Op{Kind: runtime.Add, Key: fmt.Sprintf("new%09d", i), Value: "shard1"}
		if res, err := r.rt.Apply(ctx, r.mapPath, []runtime.Op{op}); err != nil || res[0] != nil {
			b.Fatal(err, res)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "updates/s")
}

// Single sets of present keys on a 10k-entry map, one round trip each:
// HAProxy 2.6 scans the whole map for each set, which dominates.
func BenchmarkApplyOneAtATimeSetOn10k(b *testing.B) {
	r := newRig(b)
	ctx := context.Background()
	if err := r.rt.Replace(ctx, r.mapPath, entries(10_000, "shard0")); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		op := runtime.Op{Kind: runtime.Set, Key: fmt.Sprintf("user%09d", i%10_000), Value: []string{"shard0", "shard1"}[i%2]}
		if res, err := r.rt.Apply(ctx, r.mapPath, []runtime.Op{op}); err != nil || res[0] != nil {
			b.Fatal(err, res)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "updates/s")
}

// Pipelined batches of 1,000 adds of new keys.
func BenchmarkApplyPipelined1000(b *testing.B) {
	r := newRig(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ops := make([]runtime.Op, 1000)
		for j := range ops {
			ops[j] = runtime.Op{Kind: runtime.Add, Key: fmt.Sprintf("b%d-%d", i, j), Value: "shard1"}
		}
		if _, err := r.rt.Apply(ctx, r.mapPath, ops); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "updates/s")
}

// The atomic whole-map swap (prepare, 8 KB payloads, count check, commit).
func BenchmarkReplace100k(b *testing.B) {
	r := newRig(b)
	ctx := context.Background()
	es := entries(100_000, "shard1")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := r.rt.Replace(ctx, r.mapPath, es); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(es))/b.Elapsed().Seconds(), "entries/s")
}

// Streaming dump of a 100k-entry live map.
func BenchmarkDump100k(b *testing.B) {
	r := newRig(b)
	ctx := context.Background()
	if err := r.rt.Replace(ctx, r.mapPath, entries(100_000, "shard1")); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n := 0
		if err := r.rt.Dump(ctx, r.mapPath, func(k, v string) error { n++; return nil }); err != nil || n != 100_000 {
			b.Fatal(n, err)
		}
	}
	b.ReportMetric(float64(b.N*100_000)/b.Elapsed().Seconds(), "entries/s")
}

// From Store.Set (what mapctl set does) to the syncer reporting the change
// live in HAProxy (what mapctl set --wait waits for), one change at a time,
// with 10k assignments loaded.
func BenchmarkSetToLive(b *testing.B) {
	r := newRig(b)
	ctx := context.Background()
	var as []maps.Assignment
	for i := 0; i < 10_000; i++ {
		as = append(as, maps.Assignment{User: fmt.Sprintf("user%09d", i), Shard: "shard0"})
	}
	if _, err := r.store.Import(ctx, as, 1000, nil); err != nil {
		b.Fatal(err)
	}
	s := r.runSyncer(b, syncer.Config{Name: "bench", MapName: r.mapPath})
	testenv.WaitFor(b, 30*time.Second, "syncer ready", func() error {
		if !s.Status().Ready {
			return fmt.Errorf("not ready")
		}
		return nil
	})
	setToLive(b, r, s, func(i int) maps.Assignment {
		return maps.Assignment{User: fmt.Sprintf("user%09d", i%10_000), Shard: []string{"shard1", "shard0"}[(i/10_000)%2]}
	})
}

// setToLive times b.N Store.Set calls of the assignment change(i) until s
// reports each live, and reports p50-ms and p99-ms.
func setToLive(b *testing.B, r *rig, s *syncer.Syncer, change func(i int) maps.Assignment) {
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		id, err := r.store.Set(ctx, change(i))
		if err != nil {
			b.Fatal(err)
		}
		for maps.CompareIDs(s.Status().Applied, id) < 0 {
			if time.Since(start) > 10*time.Second {
				b.Fatal("change not applied within 10 s")
			}
			time.Sleep(50 * time.Microsecond) // poll interval
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// From a restarted HAProxy's socket answering (it came up from the map file,
// which lacks a change made while it was down) to that change being in its
// live map: how fast the syncer notices a restart and reconciles.
func BenchmarkHAProxyRestartToLive(b *testing.B) {
	r := newRig(b)
	ctx := context.Background()
	s := r.runSyncer(b, syncer.Config{Name: "bench", MapName: r.mapPath, Targets: []string{r.socket}})
	testenv.WaitFor(b, 30*time.Second, "syncer ready", func() error {
		if !s.Status().Ready {
			return fmt.Errorf("not ready")
		}
		return nil
	})
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.haproxy.Signal(syscall.SIGTERM)
		r.haproxy.Wait(10 * time.Second)
		shard := []string{"shard0", "shard1"}[i%2]
		if _, err := r.store.Set(ctx, maps.Assignment{User: "restarted", Shard: shard}); err != nil {
			b.Fatal(err)
		}
		r.haproxy = r.haproxy.Again(b) // returns once the socket answers
		start := time.Now()
		for {
			got := ""
			r.rt.Dump(ctx, r.mapPath, func(k, v string) error {
				if k == "restarted" {
					got = v
				}
				return nil
			})
			if got == shard {
				break
			}
			if time.Since(start) > 30*time.Second {
				b.Fatal("change not live 30 s after the restart")
			}
			time.Sleep(2 * time.Millisecond) // poll interval
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// One periodic drift round at 1M assignments: the live map dumped and
// compared entry by entry with the syncer's mirror, then a pass over the
// Redis hash a HSCAN page per loop step. Reports both times; live changes
// are applied between the pages.
func BenchmarkDriftRound1M(b *testing.B) {
	r := newRig(b)
	ctx := context.Background()
	rdb := r.redis.Client(b)
	const n = 1_000_000
	for lo := 0; lo < n; lo += 10_000 { // straight into the hash: the full sync reads the hash
		args := make([]any, 0, 20_000)
		for i := lo; i < lo+10_000; i++ {
			args = append(args, fmt.Sprintf("user%09d", i), "shard1")
		}
		if err := rdb.HSet(ctx, r.store.UsersKey(), args...).Err(); err != nil {
			b.Fatal(err)
		}
	}
	s := r.runSyncer(b, syncer.Config{Name: "bench", MapName: r.mapPath, ReconcileEvery: time.Hour})
	testenv.WaitFor(b, 120*time.Second, "syncer ready with 1M", func() error {
		if st := s.Status(); !st.Ready || st.Entries != n {
			return fmt.Errorf("ready=%v entries=%d", st.Ready, st.Entries)
		}
		return nil
	})
	var live, round time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := s.Status().DriftChecks
		s.Kick()
		testenv.WaitFor(b, 120*time.Second, "a drift round", func() error {
			if s.Status().DriftChecks == before {
				return fmt.Errorf("not done")
			}
			return nil
		})
		st := s.Status()
		live += st.DriftLiveTook
		round += st.DriftRoundTook
	}
	b.StopTimer()
	b.ReportMetric(live.Seconds()/float64(b.N), "live-s")
	b.ReportMetric(round.Seconds()/float64(b.N), "round-s")
}

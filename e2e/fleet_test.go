package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// node is one HAProxy of a simulated fleet.
type node struct {
	name    string
	hap     *testenv.HAProxy
	socket  string // its Unix socket
	tcp     string // its TCP Runtime API address ("" for none)
	mapPath string
	front   string
	rt      *runtime.Client
}

// startNode starts a HAProxy routing by the map at mapPath (created empty
// if missing), with a Unix stats socket in dir and, when tcp, a TCP one too.
func startNode(t *testing.T, name, dir, mapPath string, backends map[string]string, tcp bool) *node {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	if _, err := os.Stat(mapPath); err != nil {
		if err := os.WriteFile(mapPath, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n := &node{name: name, socket: filepath.Join(dir, "admin.sock"), mapPath: mapPath}
	port := testenv.FreePort(t)
	n.front = fmt.Sprintf("http://127.0.0.1:%d", port)
	topo := &haproxy.Topology{
		Cookie: "user", DefaultShard: "shard0", Map: mapPath,
		Frontend: fmt.Sprintf("127.0.0.1:%d", port), Stats: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Socket: n.socket, StatsTimeout: 10 * time.Second, Shards: map[string]haproxy.Shard{},
	}
	for sh, addr := range backends {
		topo.Shards[sh] = haproxy.Shard{Servers: []haproxy.Server{{Addr: addr}}}
	}
	cfg, err := haproxy.Render(topo, "e2e fleet")
	if err != nil {
		t.Fatal(err)
	}
	text := string(cfg)
	if tcp {
		n.tcp = fmt.Sprintf("ipv4@127.0.0.1:%d", testenv.FreePort(t))
		line := "    stats socket " + n.socket
		i := strings.Index(text, line)
		if i < 0 {
			t.Fatalf("no %q in the rendered config:\n%s", line, text)
		}
		text = text[:i] + "    stats socket " + n.tcp + " level admin\n" + text[i:]
	}
	n.hap = testenv.StartHAProxy(t, dir, text, n.socket)
	rt, err := runtime.New(n.socket, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	n.rt = rt
	return n
}

// live dumps the node's live map.
func (n *node) live(ctx context.Context) (map[string]string, error) {
	m := map[string]string{}
	err := n.rt.Dump(ctx, n.mapPath, func(k, v string) error { m[k] = v; return nil })
	return m, err
}

// A fleet of 8 HAProxy processes on loopback: 4 driven by one syncer (two
// of them over TCP), 4 with a syncer each. Under churn, one HAProxy of the
// shared syncer is SIGSTOPped for 20 s and another restarted meanwhile: the
// others keep getting changes while it is stopped (a change made during the
// pause is live on all 7 others before it resumes), and in the end every
// node's live map equals Redis. It logs how long a change took to be live
// on all 8 (and on the 7 running ones during the pause); the figures are
// reported, not asserted.
func TestFleetConvergesWithOneNodeStoppedAndOneRestarted(t *testing.T) {
	if testing.Short() {
		t.Skip("fleet test: about a minute")
	}
	dir := t.TempDir()
	redis := testenv.StartRedis(t)
	store := maps.NewStore(redis.Client(t), "")
	ctx := context.Background()
	backends := map[string]string{}
	for _, sh := range shards {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, sh) }))
		t.Cleanup(srv.Close)
		backends[sh] = strings.TrimPrefix(srv.URL, "http://")
	}
	// Group A shares one map file, written by its one syncer.
	groupMap := filepath.Join(dir, "a", "users.map")
	os.MkdirAll(filepath.Dir(groupMap), 0o755)
	var nodes []*node
	for i := 0; i < 8; i++ {
		name := fmt.Sprintf("n%d", i)
		mapPath := filepath.Join(dir, name, "users.map")
		if i < 4 {
			mapPath = groupMap
		}
		nodes = append(nodes, startNode(t, name, filepath.Join(dir, name), mapPath, backends, i < 2))
	}
	// Seed assignments, then the syncers.
	var seed []maps.Assignment
	for i := 0; i < 2000; i++ {
		seed = append(seed, maps.Assignment{User: fmt.Sprintf("u%05d", i), Shard: shards[i%len(shards)]})
	}
	if _, err := store.Import(ctx, seed, 1000, nil); err != nil {
		t.Fatal(err)
	}
	syncerBin := filepath.Join(binDir, "syncer")
	args := []string{syncerBin, "--redis", redis.URL, "--map", groupMap, "--name", "fleet-a", "--runtime-timeout", "2s"}
	for _, n := range nodes[:4] {
		addr := n.socket
		if n.tcp != "" {
			addr = n.tcp
		}
		args = append(args, "--socket", addr)
	}
	syncers := []*testenv.Proc{testenv.Start(t, "syncer fleet-a", args)}
	for _, n := range nodes[4:] {
		syncers = append(syncers, testenv.Start(t, "syncer fleet-"+n.name, []string{syncerBin, "--redis", redis.URL,
			"--socket", n.socket, "--map", n.mapPath, "--name", "fleet-" + n.name}))
	}
	waitAllLive := func(what string, timeout time.Duration, of []*node) {
		t.Helper()
		testenv.WaitFor(t, timeout, what, func() error {
			for _, p := range syncers {
				if p.Exited() {
					t.Fatalf("%s exited: %s", p.Name, p.Output())
				}
			}
			snap, err := store.Snapshot(ctx, nil)
			if err != nil {
				return err
			}
			for _, n := range of {
				live, err := n.live(ctx)
				if err != nil {
					return fmt.Errorf("%s: %w", n.name, err)
				}
				if !equalMaps(live, snap.Entries) {
					return fmt.Errorf("%s: %d live entries, redis %d, or values differ", n.name, len(live), len(snap.Entries))
				}
			}
			return nil
		})
	}
	waitAllLive("every node loaded", 60*time.Second, nodes)

	// Churn: SetMany batches toward 5k changes/s over 10k users, until
	// stopped (at most 90 s).
	churnCtx, stopChurn := context.WithTimeout(ctx, 90*time.Second)
	defer stopChurn()
	var churned atomic.Int64
	churnDone := make(chan struct{})
	go func() {
		defer close(churnDone)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for churnCtx.Err() == nil {
			batch := make([]maps.Assignment, 50)
			for i := range batch {
				batch[i] = maps.Assignment{User: fmt.Sprintf("c%05d", rand.N(10000)), Shard: shards[rand.N(len(shards))]}
			}
			if _, err := store.SetMany(churnCtx, batch); err == nil {
				churned.Add(int64(len(batch)))
			}
			select {
			case <-churnCtx.Done():
			case <-tick.C:
			}
		}
	}()
	churnStart := time.Now()

	// probe sets a fresh user and returns when it routes right on every
	// node of on (by HTTP through the node), with the time it took.
	var probes atomic.Int64
	probe := func(on []*node) time.Duration {
		t.Helper()
		i := probes.Add(1)
		user, shard := fmt.Sprintf("probe%04d", i), shards[1+int(i)%3]
		start := time.Now()
		if _, err := store.Set(ctx, maps.Assignment{User: user, Shard: shard}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, n := range on {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := &http.Client{Timeout: 2 * time.Second}
				testenv.WaitFor(t, 60*time.Second, user+" live on "+n.name, func() error {
					req, _ := http.NewRequest("GET", n.front+"/", nil)
					req.AddCookie(&http.Cookie{Name: "user", Value: user})
					resp, err := c.Do(req)
					if err != nil {
						return err
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if string(body) != shard {
						return fmt.Errorf("routed to %q, want %s", body, shard)
					}
					return nil
				})
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	var allTimes, pausedTimes []time.Duration
	for i := 0; i < 10; i++ { // before the pause: all 8
		allTimes = append(allTimes, probe(nodes))
	}

	// Stop n2 (Unix, shared syncer) for 20 s; restart n3 (the same syncer)
	// meanwhile. Changes keep reaching the 7 others during the pause.
	stopped, restarted := nodes[2], nodes[3]
	stopped.hap.Pause(t)
	pauseEnd := time.Now().Add(20 * time.Second)
	others := slices.DeleteFunc(slices.Clone(nodes), func(n *node) bool { return n == stopped })
	restarted.hap.Signal(syscall.SIGTERM)
	if _, ok := restarted.hap.Wait(10 * time.Second); !ok {
		t.Fatal("haproxy n3 did not stop on SIGTERM")
	}
	restarted.hap = restarted.hap.Again(t)
	for time.Now().Before(pauseEnd.Add(-3 * time.Second)) {
		pausedTimes = append(pausedTimes, probe(others))
		if time.Now().After(pauseEnd) {
			t.Fatal("a probe reached the 7 running nodes only after the pause should have ended")
		}
	}
	// The shared syncer says which target is not in sync.
	out := runMapctl(t, redis.URL, "status")
	if !strings.Contains(out, "target "+stopped.socket+": NOT READY") {
		t.Errorf("mapctl status does not name the stopped target:\n%s", out)
	}
	if !strings.Contains(out, "target "+nodes[0].tcp+": ready") {
		t.Errorf("mapctl status does not list the TCP target as ready:\n%s", out)
	}
	if d := time.Until(pauseEnd); d > 0 {
		time.Sleep(d) // the scenario's 20 s pause, not synchronisation
	}
	stopped.hap.Signal(syscall.SIGCONT)
	for i := 0; i < 10; i++ {
		allTimes = append(allTimes, probe(nodes))
	}
	stopChurn()
	<-churnDone
	rate := float64(churned.Load()) / time.Since(churnStart).Seconds()
	waitAllLive("every node equal to redis after the churn", 90*time.Second, nodes)
	for _, p := range syncers {
		if p.Exited() {
			t.Fatalf("%s exited: %s", p.Name, p.Output())
		}
	}
	t.Logf("churn: %d changes, %.0f changes/s; %d probes live on all 8: p50 %s p99 %s max %s; %d probes during the pause, live on the 7 running: p50 %s p99 %s max %s",
		churned.Load(), rate, len(allTimes), pct(allTimes, 50), pct(allTimes, 99), pct(allTimes, 100),
		len(pausedTimes), pct(pausedTimes, 50), pct(pausedTimes, 99), pct(pausedTimes, 100))
	if len(pausedTimes) == 0 {
		t.Fatal("no probe completed during the pause")
	}
}

// pct is the p-th percentile of ds (nearest rank).
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))].Round(time.Millisecond)
}

// runMapctl runs mapctl against redisURL and returns its stdout, whatever
// its exit code.
func runMapctl(t *testing.T, redisURL string, args ...string) string {
	t.Helper()
	s := &stack{t: t, redis: &testenv.Redis{URL: redisURL}}
	out, _, _ := s.mapctl(args...)
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

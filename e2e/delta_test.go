package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
)

// The delta+base layout under churn, on real HAProxy: every user only ever
// moves forward (shard0 -> shard1 -> shard2 -> shard3), and a checker that
// records every response asserts that no request is routed to a shard
// before one it was already routed to, while the delta is folded into the
// base again and again (--delta-max 20) and while the syncer is killed and
// restarted. A restarted HAProxy starts from the map files (which lag by
// the flush delay) and is not held to that; in the end every user routes
// as Redis says. On HAProxy 2.9 and later the syncer keeps the single map
// (the delta stays empty), and the same holds.
func TestDeltaLayoutNeverRoutesBackwards(t *testing.T) {
	const nUsers = 400
	user := func(i int) string { return fmt.Sprintf("d%04d", i) }
	rig := startDeltaRig(t, "delta", nUsers, user)
	redis, store, mapPath, socket, front, hap, rt := rig.redis, rig.store, rig.mapPath, rig.socket, rig.front, rig.hap, rig.rt
	ctx := context.Background()
	health := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	startSyncer := func() *testenv.Proc {
		return testenv.Start(t, "syncer", []string{filepath.Join(binDir, "syncer"), "--redis", redis.URL, "--socket", socket,
			"--map", mapPath, "--name", "delta", "--delta-max", "20", "--listen", health})
	}
	syncerProc := startSyncer()
	readyz := func() (ready bool, layout string, folds int) {
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return false, "", 0
		}
		defer resp.Body.Close()
		var st struct {
			Ready   bool `json:"ready"`
			Standby bool `json:"standby"`
			Targets []struct {
				Layout string `json:"layout"`
				Folds  int    `json:"folds"`
			} `json:"targets"`
		}
		if json.NewDecoder(resp.Body).Decode(&st) != nil || len(st.Targets) != 1 {
			return false, "", 0
		}
		return st.Ready && !st.Standby, st.Targets[0].Layout, st.Targets[0].Folds
	}
	testenv.WaitFor(t, 60*time.Second, "syncer ready", func() error {
		if ok, _, _ := readyz(); !ok {
			return fmt.Errorf("not ready")
		}
		return nil
	})
	info, err := rt.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, layout, _ := readyz()
	wantLayout := "delta+base"
	if v := info.Version; strings.HasPrefix(v, "2.9") || !strings.HasPrefix(v, "2.") {
		wantLayout = "single"
	}
	if layout != wantLayout {
		t.Fatalf("layout %q on HAProxy %s, want %q", layout, info.Version, wantLayout)
	}

	// The checker: requests for random users, each response's shard index
	// must never go below the last one seen for that user (reset when
	// HAProxy restarts).
	// Most requests are for recently changed users: the ones in the delta
	// map, whose base entries are older, where a wrong fold would show.
	var recentMu sync.Mutex
	var recent []string
	pick := func() string {
		recentMu.Lock()
		defer recentMu.Unlock()
		if len(recent) == 0 || rand.N(5) == 0 {
			return user(rand.N(nUsers))
		}
		return recent[rand.N(len(recent))]
	}
	// seen holds, per epoch and user, the earliest time a response of each
	// shard index arrived. A request is routed backwards when it began
	// after a response with a higher index arrived: with two checkers, a
	// slow request that began earlier may be answered (and recorded) later
	// with the older value it was routed by then, which is no violation.
	var (
		mu        sync.Mutex
		seen      = map[string]*[4]time.Time{}
		epoch     atomic.Int64 // bumped at a HAProxy restart
		requests  atomic.Int64
		backwards []string
	)
	checkCtx, stopCheck := context.WithCancel(ctx)
	var checkers sync.WaitGroup
	for range 2 {
		checkers.Add(1)
		go func() {
			defer checkers.Done()
			c := &http.Client{Timeout: 2 * time.Second}
			for checkCtx.Err() == nil {
				u := pick()
				ep := epoch.Load()
				began := time.Now()
				req, _ := http.NewRequestWithContext(checkCtx, "GET", front+"/", nil)
				req.AddCookie(&http.Cookie{Name: "user", Value: u})
				resp, err := c.Do(req)
				if err != nil {
					continue // HAProxy restarting
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				arrived := time.Now()
				idx := strings.Index("shard0shard1shard2shard3", string(body)) / 6
				if idx < 0 || idx > 3 {
					t.Errorf("%s: unexpected answer %q", u, body)
					continue
				}
				requests.Add(1)
				mu.Lock()
				if ep == epoch.Load() {
					key := fmt.Sprintf("%d/%s", ep, u)
					at := seen[key]
					if at == nil {
						at = new([4]time.Time)
						seen[key] = at
					}
					for j := idx + 1; j < len(at); j++ {
						if !at[j].IsZero() && at[j].Before(began) {
							backwards = append(backwards, fmt.Sprintf("%s: shard%d after shard%d", u, idx, j))
							break
						}
					}
					if at[idx].IsZero() || arrived.Before(at[idx]) {
						at[idx] = arrived
					}
				}
				mu.Unlock()
			}
		}()
	}

	// Churn: each step moves a random user one shard forward, in batches,
	// bounded by count (3 steps a user) and time.
	level := make([]int, nUsers)
	churnStep := func(n int) {
		var batch []maps.Assignment
		for range n {
			i := rand.N(nUsers)
			if level[i] < 3 {
				level[i]++
				batch = append(batch, maps.Assignment{User: user(i), Shard: fmt.Sprintf("shard%d", level[i])})
			}
		}
		if len(batch) > 0 {
			if _, err := store.SetMany(ctx, batch); err != nil {
				t.Fatal(err)
			}
		}
		recentMu.Lock()
		for _, a := range batch {
			recent = append(recent, a.User)
		}
		recent = recent[max(0, len(recent)-20):]
		recentMu.Unlock()
	}
	var outputs []string // of syncers gone
	waitReady := func() {
		t.Helper()
		testenv.WaitFor(t, 60*time.Second, "syncer ready", func() error {
			if syncerProc.Exited() {
				t.Fatalf("syncer exited: %s", syncerProc.Output())
			}
			if ok, _, _ := readyz(); !ok {
				return fmt.Errorf("not ready")
			}
			return nil
		})
	}
	deadline := time.Now().Add(90 * time.Second)
	for round := 0; round < 30 && time.Now().Before(deadline); round++ {
		churnStep(12)
		switch round {
		case 10: // the syncer killed, maybe mid-fold, and restarted
			syncerProc.Signal(syscall.SIGKILL)
			syncerProc.Wait(10 * time.Second)
			outputs = append(outputs, syncerProc.Output())
			syncerProc = startSyncer()
			waitReady() // after the old one's lease ran out
		case 20: // HAProxy restarted: it starts from the files
			epoch.Add(1)
			hap.Signal(syscall.SIGTERM)
			if _, ok := hap.Wait(10 * time.Second); !ok {
				t.Fatal("haproxy did not stop")
			}
			epoch.Add(1)
			hap = hap.Again(t)
			epoch.Add(1)
			waitReady()
		}
		// Let the checker see this round's state before the next one.
		n := requests.Load()
		testenv.WaitFor(t, 10*time.Second, "checker requests", func() error {
			if requests.Load() < n+200 {
				return fmt.Errorf("%d requests", requests.Load()-n)
			}
			return nil
		})
	}
	// Everything ends where Redis says.
	snap, err := store.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	users := make([]string, 0, len(snap.Entries))
	for u := range snap.Entries {
		users = append(users, u)
	}
	rig.waitRoutes(t, users, snap.Entries)
	stopCheck()
	checkers.Wait()
	folds := strings.Count(strings.Join(append(outputs, syncerProc.Output()), ""), "folded into the map")
	mu.Lock()
	defer mu.Unlock()
	if len(backwards) > 0 {
		t.Fatalf("%d requests routed backwards, e.g. %v", len(backwards), backwards[:min(5, len(backwards))])
	}
	if wantLayout == "delta+base" && folds == 0 {
		t.Fatal("no fold happened: the test did not exercise one")
	}
	t.Logf("HAProxy %s, layout %s: %d requests checked, %d folds", info.Version, layout, requests.Load(), folds)
}

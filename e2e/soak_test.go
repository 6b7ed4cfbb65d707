//go:build soak

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
)

// TestSoak (make soak): load against HAProxy for users whose shard never
// changes, a churn of sets for other users, and haproxy, the syncer and
// redis each killed (-9) and restarted at random. At the end Redis, the live
// map and the file must be equal, and no stable user may ever have been
// misrouted. SOAK_DURATION bounds it (default 2m).
func TestSoak(t *testing.T) {
	dur := 2 * time.Minute
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SOAK_DURATION: %v", err)
		}
		dur = d
	}
	s := newStack(t)
	// Every acknowledged write survives a kill -9 of Redis.
	s.redis = testenv.StartRedis(t, "--appendonly", "yes", "--appendfsync", "always")
	s.store = maps.NewStore(s.redis.Client(t), "")
	s.startSyncer()
	stable := map[string]string{}
	var as []maps.Assignment
	for i := 0; i < 500; i++ {
		a := maps.Assignment{User: fmt.Sprintf("stable%03d", i), Shard: shards[i%len(shards)]}
		stable[a.User], as = a.Shard, append(as, a)
	}
	if _, err := s.store.Import(context.Background(), as, 500, nil); err != nil {
		t.Fatal(err)
	}
	s.waitConverged(30 * time.Second)
	users := make([]string, 0, len(stable))
	for u := range stable {
		users = append(users, u)
	}

	var requests, errs, misroutes, sets, setErrs atomic.Int64
	ctx, stop := context.WithTimeout(context.Background(), dur)
	defer stop()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ { // load: bounded by time and count
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for ctx.Err() == nil && requests.Load() < 50_000_000 {
				u := users[rng.IntN(len(users))]
				got, err := s.route(u)
				requests.Add(1)
				switch {
				case err != nil:
					errs.Add(1)
					time.Sleep(5 * time.Millisecond) // HAProxy is restarting: back off a little
				case got != stable[u]:
					if misroutes.Add(1) <= 5 {
						t.Errorf("misroute: %s went to %s, want %s", u, got, stable[u])
					}
				}
			}
		}(w)
	}
	wg.Add(1)
	go func() { // churn of other users, as mapctl set does it
		defer wg.Done()
		rng := rand.New(rand.NewPCG(9, 9))
		for ctx.Err() == nil && sets.Load() < 10_000_000 {
			a := maps.Assignment{User: fmt.Sprintf("churn%03d", rng.IntN(200)), Shard: shards[rng.IntN(len(shards))]}
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if _, err := s.store.Set(cctx, a); err != nil {
				setErrs.Add(1)
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			sets.Add(1)
		}
	}()

	restarts := map[string]int{}
	rng := rand.New(rand.NewPCG(3, 4))
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(3000+rng.IntN(4000)) * time.Millisecond):
		}
		if ctx.Err() != nil {
			break
		}
		switch victim := []string{"haproxy", "syncer", "redis"}[rng.IntN(3)]; victim {
		case "haproxy":
			s.haproxy.Signal(syscall.SIGKILL)
			s.haproxy.Wait(10 * time.Second)
			s.haproxy = s.haproxy.Again(t)
			restarts[victim]++
		case "syncer":
			s.syncer.Signal(syscall.SIGKILL)
			s.syncer.Wait(10 * time.Second)
			s.startSyncer()
			restarts[victim]++
		case "redis":
			s.redis.Signal(syscall.SIGKILL)
			s.redis.Wait(10 * time.Second)
			s.redis.Restart(t)
			restarts[victim]++
		}
	}
	wg.Wait()
	s.waitConverged(60 * time.Second)
	redisMap := s.redisMap()
	live, _ := s.live()
	file, _, _ := s.file()
	diffLive, diffFile := diff(redisMap, live), diff(redisMap, file)
	total := restarts["haproxy"] + restarts["syncer"] + restarts["redis"]
	fmt.Printf("\nsoak %s: requests %d, errors %d (while HAProxy restarted), misroutes %d, sets %d (%d failed while Redis was down)\n",
		dur, requests.Load(), errs.Load(), misroutes.Load(), sets.Load(), setErrs.Load())
	fmt.Printf("restarts survived %d (haproxy %d, syncer %d, redis %d); final diff: live %q, file %q; entries %d\n\n",
		total, restarts["haproxy"], restarts["syncer"], restarts["redis"], diffLive, diffFile, len(redisMap))
	if misroutes.Load() != 0 || diffLive != "" || diffFile != "" {
		t.Fatalf("soak failed: misroutes %d, live diff %q, file diff %q", misroutes.Load(), diffLive, diffFile)
	}
	for u, sh := range stable {
		if redisMap[u] != sh {
			t.Fatalf("stable user %s lost: redis has %q", u, redisMap[u])
		}
	}
}

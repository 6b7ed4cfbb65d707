package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
)

// Churn of every kind on real HAProxy, in the delta layout with folds again
// and again (--delta-max 10): new users (added to the base in payloads),
// moves, deletes and users deleted and added back. HAProxy's maps never
// list a key twice (an add never replaces: a duplicate would keep routing
// the old value), and in the end every user routes as Redis says.
func TestChurnNeverDuplicatesAKey(t *testing.T) {
	user := func(i int) string { return fmt.Sprintf("c%04d", i) }
	rig := startDeltaRig(t, "churn", 200, user)
	redis, store, mapPath, socket, rt := rig.redis, rig.store, rig.mapPath, rig.socket, rig.rt
	ctx := context.Background()
	syncer := testenv.Start(t, "syncer", []string{filepath.Join(binDir, "syncer"), "--redis", redis.URL, "--socket", socket,
		"--map", mapPath, "--name", "churn", "--delta-max", "10", "--replace-above", "8"})
	testenv.WaitFor(t, 60*time.Second, "syncer's first full sync", func() error {
		if !strings.Contains(syncer.Output(), "full sync") {
			return fmt.Errorf("no full sync yet")
		}
		return nil
	})
	dups := func() error {
		for _, m := range []string{mapPath, maps.DeltaPath(mapPath)} {
			seen := map[string]bool{}
			var dup []string
			if err := rt.Dump(ctx, m, func(k, _ string) error {
				if seen[k] {
					dup = append(dup, k)
				}
				seen[k] = true
				return nil
			}); err != nil {
				return err
			}
			if len(dup) > 0 {
				return fmt.Errorf("%s lists %d keys twice, e.g. %v", filepath.Base(m), len(dup), dup[:min(5, len(dup))])
			}
		}
		return nil
	}
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 60 {
		var set []maps.Assignment
		for range 1 + r.IntN(30) {
			u := user(r.IntN(400)) // half of them new at first
			if r.IntN(4) == 0 {
				if _, _, err := store.Del(ctx, u); err != nil {
					t.Fatal(err)
				}
				continue
			}
			set = append(set, maps.Assignment{User: u, Shard: shards[r.IntN(len(shards))]})
		}
		if len(set) > 0 {
			if _, err := store.SetMany(ctx, set); err != nil {
				t.Fatal(err)
			}
		}
		if len(set) > 0 { // the syncer applies this round before the next, mostly
			last := set[len(set)-1]
			testenv.WaitFor(t, 10*time.Second, "the round's last change live", func() error {
				if got, err := rig.route(last.User); err != nil || got != last.Shard {
					return fmt.Errorf("%s routed to %q (%v), not yet %s", last.User, got, err, last.Shard)
				}
				return nil
			})
		}
		if round%5 == 4 {
			if err := dups(); err != nil {
				t.Fatalf("round %d: %v\n%s", round, err, syncer.Output())
			}
		}
	}
	snap, err := store.Snapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	users := make([]string, 400)
	for i := range users {
		users[i] = user(i)
	}
	rig.waitRoutes(t, users, snap.Entries)
	if err := dups(); err != nil {
		t.Fatalf("%v\n%s", err, syncer.Output())
	}
	out := syncer.Output()
	t.Logf("folds %d, full syncs %d, drift %d", strings.Count(out, "folded into the map"), strings.Count(out, "full sync"), strings.Count(out, "drift"))
	if strings.Count(out, "drift") > 0 {
		t.Fatalf("drift reported:\n%s", out)
	}
	info, err := rt.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v := info.Version; strings.HasPrefix(v, "2.") && !strings.HasPrefix(v, "2.9") && strings.Count(out, "folded into the map") == 0 {
		t.Fatal("no fold: the test did not exercise one")
	}
}

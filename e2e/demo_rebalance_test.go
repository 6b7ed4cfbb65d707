package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

// demoLoad is the JSON `demo-backends load -o json` prints.
type demoLoad struct {
	Sent    int            `json:"sent"`
	ByShard map[string]int `json:"by_shard"`
	Held    int            `json:"held"`
	Failed  int            `json:"failed"`
}

// spread is how many of the demo's shards answered and the max - min of
// their counts over all of them (a shard that answered nothing counts 0).
func (l demoLoad) spread(shards []string) (answered, spread int) {
	lo, hi := -1, 0
	for _, s := range shards {
		n := l.ByShard[s]
		if n > 0 {
			answered++
		}
		if lo < 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	return answered, hi - lo
}

func parseDemoLoad(t *testing.T, out []byte) demoLoad {
	t.Helper()
	var l demoLoad
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatalf("demo-backends load -o json: %v in %q", err, out)
	}
	return l
}

// Issue 10's demo: make demo's script brings the stack up; seven users are
// put on shard3 and demo-backends load sends their requests, so that only
// shard3 answers. With the load running, mapctl rebalance plan --by load
// --apply (the demo's copy/verify/cleanup hooks, --freeze) moves users off
// shard3; the same load afterwards is answered by more shards, and the
// spread of the counts (max - min over the six shards) shrank.
func TestDemoRebalance(t *testing.T) {
	demo := startDemo(t, "shardmap demo is up")
	mapctl, backends := filepath.Join(binDir, "mapctl"), filepath.Join(binDir, "demo-backends")
	run := func(timeout time.Duration, name string, args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, name, args...).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("%s %v: %v\n%s%s\ndemo output:\n%s", filepath.Base(name), args, err, out, stderr, demo.Output())
		}
		return out
	}
	// The demo seeds user u on shard u (0-5); users 6-11 join user 3 on shard3.
	hot := []string{"3", "6", "7", "8", "9", "10", "11"}
	for _, u := range hot[1:] {
		run(30*time.Second, mapctl, "set", u, "shard3", "--wait")
	}
	shards := []string{"shard0", "shard1", "shard2", "shard3", "shard4", "shard5"}
	users := strings.Join(hot, ",")
	measure := func() demoLoad {
		t.Helper()
		return parseDemoLoad(t, run(2*time.Minute, backends, "load", "--users", users, "--rate", "200", "--requests", "350", "-o", "json"))
	}

	before := measure()
	beforeShards, beforeSpread := before.spread(shards)
	t.Logf("before: %+v (%d shards answered, spread %d)", before, beforeShards, beforeSpread)
	if before.ByShard["shard3"] != before.Sent || beforeShards != 1 {
		t.Fatalf("before rebalancing: %+v, want every request answered by shard3", before)
	}

	// The skewed load runs while the planner samples it and the moves run;
	// SIGINT stops it and it prints its counts.
	load := testenv.Start(t, "load", []string{backends, "load", "--users", users, "--rate", "50", "--duration", "5m", "-o", "json"})
	testenv.WaitFor(t, 10*time.Second, "the load to start", func() error {
		if load.Exited() {
			t.Fatalf("load exited:\n%s", load.Output())
		}
		if !strings.Contains(load.Output(), "demo-backends load: sending") {
			return fmt.Errorf("not started")
		}
		return nil
	})
	hook := func(verb string) string { return backends + " " + verb }
	plan := run(3*time.Minute, mapctl, "rebalance", "plan", "--by", "load", "--sample", "1s",
		"--socket", "/tmp/shardmap-demo/admin.sock", "--apply", "--freeze",
		"--copy-cmd", hook("copy"), "--verify-cmd", hook("verify"), "--cleanup-cmd", hook("cleanup"))
	t.Logf("mapctl rebalance plan --by load --apply:\n%s", plan)
	load.Signal(syscall.SIGINT)
	if err, done := load.Wait(30 * time.Second); !done || err != nil {
		t.Fatalf("load after SIGINT: exited %v, err %v\n%s", done, err, load.Output())
	}
	t.Logf("load during the rebalancing: %s", load.Output())

	after := measure()
	afterShards, afterSpread := after.spread(shards)
	t.Logf("after: %+v (%d shards answered, spread %d)", after, afterShards, afterSpread)
	if after.Failed != 0 || after.Held != 0 {
		t.Errorf("after rebalancing: %d failed, %d held, want none", after.Failed, after.Held)
	}
	if afterShards <= beforeShards || afterSpread >= beforeSpread {
		t.Errorf("after rebalancing: %d shards answered with spread %d; before: %d with spread %d; want more shards and a smaller spread",
			afterShards, afterSpread, beforeShards, beforeSpread)
	}
}

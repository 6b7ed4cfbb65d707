package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
)

// mapctl move's command-line contract (docs/MOVES.md) on a real syncer and
// HAProxy: the ID first, a line per step, exit codes, a kill -9 in the middle
// of a hook and a resume after the lease expires. The freeze and the data
// are e2e/move_test.go's.
func TestMoveCLIKillAndResume(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	s.mustMapctl("set", "bob", "shard1", "--wait")
	dir := t.TempDir()
	started, pidFile := filepath.Join(dir, "started"), filepath.Join(dir, "hookpid")
	// The first run hangs (until killed); a rerun sees it started and passes.
	copyCmd := fmt.Sprintf(`if [ -e %s ]; then exit 0; fi; echo $$ > %s; touch %s; sleep 300`, started, pidFile, started)
	cmd := exec.Command(filepath.Join(binDir, "mapctl"), "--redis", s.redis.URL, "move", "bob", "--to", "shard2", "--copy-cmd", copyCmd)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errb testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// The hook's process group outlives mapctl's kill -9: ours to stop.
		if b, err := os.ReadFile(pidFile); err == nil {
			if pgid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pgid > 1 {
				syscall.Kill(-pgid, syscall.SIGKILL)
			}
		}
	})
	testenv.WaitFor(t, 20*time.Second, "the copy hook to start", func() error {
		_, err := os.Stat(started)
		return err
	})
	lines := strings.Split(out.String(), "\n")
	id := lines[0]
	if len(lines) < 3 || lines[1] != "plan done" || lines[2] != "freeze done" {
		t.Fatalf("stdout before the copy: %q, want ID, plan done, freeze done", out.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if o := s.mustMapctl("moves"); !strings.Contains(o, id) || !strings.Contains(o, "copy") {
		t.Fatalf("moves after the kill: %q", o)
	}
	// A second move of bob is refused, naming this one.
	if _, errs, code := s.mapctl("move", "bob", "--to", "shard3"); code != 1 || !strings.Contains(errs, id) {
		t.Fatalf("second move: exit %d: %s", code, errs)
	}
	// The dead mapctl's lease lasts up to 5s; then resume goes on.
	var resumed string
	testenv.WaitFor(t, 20*time.Second, "resume to be allowed", func() error {
		o, errs, code := s.mapctl("move", "--resume", id)
		if code != 0 {
			if !strings.Contains(errs, "being driven by another mapctl") {
				t.Fatalf("resume: exit %d: %s", code, errs)
			}
			return fmt.Errorf("exit %d: %s", code, errs)
		}
		resumed = o
		return nil
	})
	if want := id + "\ncopy done\nflip done\nverify done\ncleanup done\n"; resumed != want {
		t.Errorf("resume stdout %q, want %q", resumed, want)
	}
	s.mustRoute("bob", "shard2")
	if o := s.mustMapctl("moves"); strings.Contains(o, id) {
		t.Errorf("moves lists the done move: %q", o)
	}
	var all []struct {
		ID, State, Step, From, To string
	}
	if err := json.Unmarshal([]byte(s.mustMapctl("moves", "--all", "-o", "json")), &all); err != nil || len(all) != 1 ||
		all[0].ID != id || all[0].State != "done" || all[0].From != "shard1" || all[0].To != "shard2" {
		t.Errorf("moves --all: %+v %v", all, err)
	}
	if _, _, code := s.mapctl("move", "--resume", id); code != 2 {
		t.Errorf("resume of a done move: exit %d, want 2", code)
	}
}

func TestMoveCLIFailAbortAndBadInput(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	s.mustMapctl("set", "carol", "shard1", "--wait")
	for _, bad := range [][]string{
		{"move", "carol", "--to", "shard9"},
		{"move", "carol", "--to", "shard1"},
		{"move", "carol", "--to", "shardmap_hold"},
		{"move", "carol"},
		{"move", "nobody", "--to", "shard2"},
		{"move", "--resume", "nope"},
		{"move", "--resume", "20260101-000000-abcdef"},
		{"move", "--abort", "20260101-000000-abcdef", "--to", "shard2"},
		{"move", "carol", "--logical", "3", "--to", "shard2"},
	} {
		if out, errs, code := s.mapctl(bad...); code != 2 || out != "" {
			t.Errorf("mapctl %v: exit %d, stdout %q, stderr %s; want exit 2 and nothing on stdout", bad, code, out, errs)
		}
	}
	out, errs, code := s.mapctl("move", "carol", "--to", "shard2", "--copy-cmd", "echo copy failed >&2; exit 4", "--retries", "1", "--retry-delay", "1ms")
	if code != 1 || !strings.Contains(errs, "failed at copy") || !strings.Contains(errs, "exit status 4") || !strings.Contains(errs, "copy failed") {
		t.Fatalf("failing copy: exit %d: %s", code, errs)
	}
	id := strings.SplitN(out, "\n", 2)[0]
	if o, _, _ := s.mapctl("status"); !strings.Contains(o, "moves:  1 in progress, 1 failed") || !strings.Contains(o, "move "+id) {
		t.Errorf("status: %q", o)
	}
	s.mustRoute("carol", "shard1")
	if o := s.mustMapctl("move", "--abort", id); o != id+"\naborted: user carol routed to shard1 again\n" {
		t.Errorf("abort stdout %q", o)
	}
	s.mustRoute("carol", "shard1")
	if _, _, code := s.mapctl("move", "--abort", id); code != 2 {
		t.Errorf("second abort: exit %d, want 2", code)
	}
	// A plan file: two moves at once, a comment, a summary.
	s.mustMapctl("set", "dan", "shard1", "--wait")
	plan := filepath.Join(t.TempDir(), "plan.txt")
	os.WriteFile(plan, []byte("# rebalance\ncarol shard3\ndan shard0\n"), 0o644)
	o := s.mustMapctl("move", "--from-file", plan, "--parallel", "2", "--copy-cmd", "true")
	if !strings.HasSuffix(o, "summary: 2 moves, 2 done, 0 failed\n") || strings.Count(o, " done\n") != 2 {
		t.Errorf("from-file stdout %q", o)
	}
	s.mustRoute("carol", "shard3")
	s.mustRoute("dan", "shard0")
	os.WriteFile(plan, []byte("carol shard2\ncarol shard1\n"), 0o644)
	if _, errs, code := s.mapctl("move", "--from-file", plan); code != 2 || !strings.Contains(errs, "line 1") {
		t.Errorf("a subject twice: exit %d: %s", code, errs)
	}
	// Checked whole before the first move: a logical line without routing:
	// ids, a shard HAProxy has no backend for; dan (line 1) does not move.
	for _, c := range []struct{ line, rule string }{
		{"logical:1 shard1", "no logical map"},
		{"carol shard9", "not a backend"},
	} {
		os.WriteFile(plan, []byte("dan shard2\n"+c.line+"\n"), 0o644)
		if _, errs, code := s.mapctl("move", "--from-file", plan, "--copy-cmd", "true"); code != 2 || !strings.Contains(errs, plan+":2") || !strings.Contains(errs, c.rule) {
			t.Errorf("plan line %q: exit %d: %s, want 2 naming %s:2 and %q", c.line, code, errs, plan, c.rule)
		}
	}
	s.mustRoute("dan", "shard0")

	// moves --prune: finished moves (carol's aborted one, the two of the
	// plan) older than --older-than go; a failed one (dan's, next) stays.
	if _, errs, code := s.mapctl("move", "dan", "--to", "shard2", "--copy-cmd", "exit 4", "--retries", "0"); code != 1 {
		t.Fatalf("failing move of dan: exit %d: %s", code, errs)
	}
	countMoves := func() int {
		var l []map[string]any
		if err := json.Unmarshal([]byte(s.mustMapctl("moves", "--all", "-o", "json")), &l); err != nil {
			t.Fatal(err)
		}
		return len(l)
	}
	if n := countMoves(); n != 4 {
		t.Fatalf("%d moves recorded, want 4", n)
	}
	if o := s.mustMapctl("moves", "--prune", "--dry-run"); o != "would remove 0 finished moves last updated over 720h0m0s ago\n" {
		t.Errorf("prune of young moves: %q", o)
	}
	if o := s.mustMapctl("moves", "--prune", "--older-than", "0s", "--dry-run"); !strings.HasSuffix(o, "would remove 3 finished moves last updated over 0s ago\n") ||
		strings.Contains(o, "failed") || strings.Count(o, "\n") != 5 {
		t.Errorf("prune --dry-run: %q", o)
	}
	if n := countMoves(); n != 4 {
		t.Fatalf("%d moves recorded after a dry run, want 4", n)
	}
	if o := s.mustMapctl("moves", "--prune", "--older-than", "0s"); !strings.HasSuffix(o, "removed 3 finished moves last updated over 0s ago\n") {
		t.Errorf("prune: %q", o)
	}
	if o := s.mustMapctl("moves", "--all"); !strings.Contains(o, "dan") || !strings.Contains(o, "failed") || strings.Count(o, "\n") != 2 {
		t.Errorf("moves after prune: %q, want dan's failed move alone", o)
	}
	for _, bad := range [][]string{{"moves", "--dry-run"}, {"moves", "--older-than", "1h"}, {"moves", "--prune", "--all"}, {"moves", "--prune", "--older-than", "-1h"}} {
		if _, errs, code := s.mapctl(bad...); code != 2 {
			t.Errorf("mapctl %v: exit %d: %s, want 2", bad, code, errs)
		}
	}
}

// mapctl move --logical in routing: ids (a logical map in Redis): the
// logical map changes through the move, with SHARDMAP_LOGICAL for the hooks.
// The logical map's syncer is a stand-in reporting the log's last ID (the
// ids syncer itself is e2e/ids_sync_test.go's).
func TestMoveCLILogical(t *testing.T) {
	s := newStack(t)
	s.startSyncer() // publishes the shards
	rdb := s.redis.Client(t)
	logical := maps.NewStore(rdb, maps.LogicalPrefix(""))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	if _, err := logical.SetMany(ctx, []maps.Assignment{{User: "0", Shard: "shard0"}, {User: "1", Shard: "shard1"}, {User: "2", Shard: "shard2"}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if id, err := logical.LastLogID(ctx); err == nil {
				logical.ReportSyncer(ctx, maps.SyncerState{Name: "stand-in", Applied: id, Seen: time.Now(), Ready: true})
			}
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	seen := filepath.Join(t.TempDir(), "seen")
	out := s.mustMapctl("move", "--logical", "1", "--to", "shard3", "--copy-cmd", `echo "$SHARDMAP_LOGICAL $SHARDMAP_FROM $SHARDMAP_TO" > `+seen)
	if lines := strings.Split(out, "\n"); len(lines) != 8 || lines[6] != "cleanup done" {
		t.Errorf("stdout %q", out)
	}
	if b, _ := os.ReadFile(seen); string(b) != "1 shard1 shard3\n" {
		t.Errorf("copy hook saw %q", b)
	}
	if sh, _, _ := logical.Get(ctx, "1"); sh != "shard3" {
		t.Errorf("logical shard 1 on %q, want shard3", sh)
	}
	if o := s.mustMapctl("moves", "--all"); !strings.Contains(o, "logical:1") {
		t.Errorf("moves: %q", o)
	}
	for _, bad := range [][]string{
		{"move", "--logical", "3", "--to", "shard2"},  // no such logical shard
		{"move", "--logical", "01", "--to", "shard2"}, // not canonical
		{"move", "alice", "--to", "shard2"},           // routing: ids takes IDs
	} {
		if _, errs, code := s.mapctl(bad...); code != 2 {
			t.Errorf("mapctl %v: exit %d: %s, want 2", bad, code, errs)
		}
	}
	// A plan file is checked whole, against routing: ids, before its first
	// move: a line that is not an ID, a logical shard the map does not
	// have, a shard HAProxy has no backend for: exit 2 naming the file, the
	// line and the rule, and the good first line did not move.
	plan := filepath.Join(t.TempDir(), "plan.txt")
	before := s.mustMapctl("moves", "--all", "-o", "json")
	for _, c := range []struct{ line, rule string }{
		{"alice shard1", "takes an ID"},
		{"logical:3 shard1", "logical shard"},
		{"logical:0 shard9", "not a backend"},
	} {
		os.WriteFile(plan, []byte("logical:2 shard3\n# then\n"+c.line+"\n"), 0o644)
		_, errs, code := s.mapctl("move", "--from-file", plan, "--copy-cmd", "true")
		if code != 2 || !strings.Contains(errs, plan+":3") || !strings.Contains(errs, c.rule) {
			t.Errorf("plan line %q: exit %d: %s, want 2 naming %s:3 and %q", c.line, code, errs, plan, c.rule)
		}
	}
	if sh, _, _ := logical.Get(ctx, "2"); sh != "shard2" {
		t.Errorf("logical shard 2 on %q after refused plans, want shard2 (nothing moved)", sh)
	}
	if after := s.mustMapctl("moves", "--all", "-o", "json"); after != before {
		t.Errorf("refused plans recorded moves: %s", after)
	}
}

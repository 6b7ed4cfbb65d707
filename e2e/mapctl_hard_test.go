package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

// Redis lost its data, an operator assigned u0005 anew, then restored from
// the map file: the newer assignment stays, and restore says it skipped it.
func TestMapctlRestoreKeepsNewerAssignments(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	want := s.seed(20)
	if want["u0005"] == "shard3" {
		t.Fatal("test needs u0005 on another shard than shard3")
	}
	// The backup is taken before Redis loses its data: the syncer rewrites
	// users.map once restore has refilled Redis.
	backup := filepath.Join(s.dir, "backup.map")
	data, err := os.ReadFile(s.mapPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(backup, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.redis.Client(t).FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	s.mustMapctl("set", "--force", "u0005", "shard3")
	_, errs, code := s.mapctl("restore", "--from", backup)
	if code != 0 {
		t.Fatalf("restore: exit %d: %s", code, errs)
	}
	if got := strings.TrimSpace(s.mustMapctl("get", "u0005")); got != "shard3" {
		t.Fatalf("restore overwrote u0005: %s", got)
	}
	if !strings.Contains(errs, "skipped 1 users") || !strings.Contains(errs, "u0005 (redis shard3, file "+want["u0005"]+")") ||
		!strings.Contains(errs, "restored 19 assignments") {
		t.Fatalf("restore output does not name the skipped user: %s", errs)
	}
	if n := len(s.redisMap()); n != 20 {
		t.Fatalf("after restore: %d assignments", n)
	}
	s.mustMapctl("restore", "--from", backup, "--overwrite")
	if got := strings.TrimSpace(s.mustMapctl("get", "u0005")); got != want["u0005"] {
		t.Fatalf("restore --overwrite: u0005 on %s, want %s", got, want["u0005"])
	}
}

// status exits 1 naming a syncer killed -9 (gone) and one stopped while
// changes come (behind); prune removes the gone one.
func TestMapctlStatusGoneBehindPrune(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	s.seed(10)
	if out, errs, code := s.mapctl("status"); code != 0 {
		t.Fatalf("status with a ready syncer: exit %d\n%s%s", code, out, errs)
	}

	// Behind: stopped, with a change waiting longer than --max-lag.
	if err := s.syncer.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			s.syncer.Signal(syscall.SIGCONT)
		}
	}()
	s.mustMapctl("set", "late", "shard1")
	testenv.WaitFor(t, 10*time.Second, "status to call the stopped syncer behind", func() error {
		out, _, code := s.mapctl("status", "--max-lag", "300ms")
		if code != 1 || !strings.Contains(out, "syncer e2e: BEHIND") {
			return fmt.Errorf("exit %d:\n%s", code, out)
		}
		return nil
	})
	// --wait names it, where it is, at the timeout.
	_, errs, code := s.mapctl("set", "--wait", "--timeout", "1s", "late2", "shard2")
	if code != 1 || !strings.Contains(errs, "e2e (at ") {
		t.Fatalf("set --wait with a stopped syncer: exit %d: %s", code, errs)
	}
	s.syncer.Signal(syscall.SIGCONT)
	stopped = false
	testenv.WaitFor(t, 15*time.Second, "status to be fine after SIGCONT", func() error {
		out, _, code := s.mapctl("status")
		if code != 0 {
			return fmt.Errorf("exit %d:\n%s", code, out)
		}
		return nil
	})

	// Gone: killed -9, the only syncer.
	if err := s.syncer.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.syncer.Wait(10 * time.Second)
	testenv.WaitFor(t, 15*time.Second, "status to call the killed syncer gone", func() error {
		out, _, code := s.mapctl("status")
		if code != 1 || !strings.Contains(out, "syncer e2e: gone") {
			return fmt.Errorf("exit %d:\n%s", code, out)
		}
		return nil
	})
	// set without --wait warns, exit unchanged.
	_, errs, code = s.mapctl("set", "u0001", "shard2")
	if code != 0 || !strings.Contains(errs, "no syncer reported in the last 5s, so no HAProxy will get it until one runs") {
		t.Fatalf("set with no live syncer: exit %d, stderr %q", code, errs)
	}
	list := s.mustMapctl("syncers")
	if !strings.Contains(list, "e2e") || !strings.Contains(list, "gone") {
		t.Fatalf("syncers:\n%s", list)
	}
	// A second syncer under another name is live; prune removes only the
	// gone one.
	s.syncer = testenv.Start(t, "syncer2", []string{filepath.Join(binDir, "syncer"), "--redis", s.redis.URL, "--socket", s.socket,
		"--map", s.mapPath, "--name", "other"})
	testenv.WaitFor(t, 60*time.Second, "second syncer ready", func() error {
		out, _ := s.mustMapctlQuiet("syncers")
		if !strings.Contains(out, "other ") || !strings.Contains(out, " ready ") {
			return errors.New(out)
		}
		return nil
	})
	if _, _, code := s.mapctl("status"); code != 1 {
		t.Fatal("status with a gone syncer beside a live one: exit 0")
	}
	if _, _, code := s.mapctl("syncers", "prune", "--older-than", "1s"); code != 2 {
		t.Fatalf("prune --older-than 1s: exit %d, want 2", code)
	}
	_, errs, code = s.mapctl("syncers", "prune")
	if code != 0 || !strings.Contains(errs, "pruned 1 syncers: e2e") {
		t.Fatalf("prune: exit %d: %s", code, errs)
	}
	out, errs, code := s.mapctl("status")
	if code != 0 || strings.Contains(out, "syncer e2e") || !strings.Contains(out, "syncer other: ready") {
		t.Fatalf("status after prune: exit %d\n%s%s", code, out, errs)
	}
}

// mustMapctlQuiet runs mapctl and returns stdout and stderr, whatever the exit.
func (s *stack) mustMapctlQuiet(args ...string) (string, string) {
	out, errs, _ := s.mapctl(args...)
	return out, errs
}

// The map file lags the live map by the flush delay: right after set --wait,
// status sees it behind, not drifting. A hand edit is drift.
func TestMapctlStatusFileLagIsNotDrift(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	s.seed(20)
	for i := 0; i < 20; i++ {
		s.mustMapctl("set", "--wait", fmt.Sprintf("lag%02d", i), shards[i%len(shards)])
		out, errs, code := s.mapctl("status", "--map", s.mapPath)
		if code != 0 || strings.Contains(out, "DRIFT") {
			t.Fatalf("iteration %d: status right after set --wait: exit %d\n%s%s", i, code, out, errs)
		}
	}
	s.waitConverged(10 * time.Second)
	s.stopSyncer()
	data, err := os.ReadFile(s.mapPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.mapPath, append(data, "handmade shard2\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code := s.mapctl("status", "--map", s.mapPath)
	if code != 1 || !strings.Contains(out, "DRIFT: 0 missing, 1 extra") {
		t.Fatalf("status after a hand edit of the file: exit %d\n%s", code, out)
	}
}

// The Redis password never shows: not in --help (default from the
// environment), not in the error for a malformed URL.
func TestMapctlHidesRedisPassword(t *testing.T) {
	run := func(env []string, args ...string) (string, int) {
		cmd := exec.Command(filepath.Join(binDir, "mapctl"), args...)
		cmd.Env = append(os.Environ(), env...)
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return b.String(), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return b.String(), 0
	}
	out, code := run([]string{"SHARDMAP_REDIS=redis://:s3cret@127.0.0.1:1/0"}, "--help")
	if code != 0 || strings.Contains(out, "s3cret") || !strings.Contains(out, "redis://:xxxxx@127.0.0.1:1/0") {
		t.Fatalf("--help: exit %d\n%s", code, out)
	}
	for _, u := range []string{"redis://:s3cret@127.0.0.1:port/0", "redis://:s3cret%zz@127.0.0.1:1/0", "redis://:s3cret@127.0.0.1:1/x"} {
		out, code := run(nil, "--redis", u, "get", "x")
		if code != 2 || strings.Contains(out, "s3cret") || !strings.Contains(out, "--redis") {
			t.Errorf("malformed --redis %s: exit %d: %s", u, code, out)
		}
	}
}

// A directory is not a map file: exit 2, as for a missing file.
func TestMapctlImportDirectory(t *testing.T) {
	s := newStack(t)
	_, errs, code := s.mapctl("import", t.TempDir())
	if code != 2 || !strings.Contains(errs, "is a directory, not a map file") {
		t.Fatalf("import DIR: exit %d: %s", code, errs)
	}
	_, errs, code = s.mapctl("restore", "--from", t.TempDir())
	if code != 2 {
		t.Fatalf("restore --from DIR: exit %d: %s", code, errs)
	}
}

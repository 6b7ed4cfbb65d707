package move

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

func TestHookEnvAndExit0(t *testing.T) {
	out := filepath.Join(t.TempDir(), "env")
	h := hookRun{command: `printf '%s %s %s\n' "$SHARDMAP_MOVE_ID" "$SHARDMAP_USER" "$SHARDMAP_STEP" > ` + out, timeout: 10 * time.Second,
		env: []string{"SHARDMAP_MOVE_ID=m1", "SHARDMAP_USER=alice", "SHARDMAP_STEP=copy"}}
	if err := h.run(context.Background(), StepCopy); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "m1 alice copy\n" {
		t.Fatalf("env seen by the hook: %q", b)
	}
}

func TestHookRetriesThenFails(t *testing.T) {
	count := filepath.Join(t.TempDir(), "count")
	h := hookRun{command: `echo run >> ` + count + `; echo "no route to shard1" >&2; exit 3`, timeout: 10 * time.Second}
	var attempts []int
	err := h.runWithRetries(context.Background(), StepCopy, 2, time.Millisecond, func(n int) { attempts = append(attempts, n) })
	var he *HookError
	if !errors.As(err, &he) || he.ExitCode != 3 || he.Attempts != 3 || he.TimedOut || !strings.Contains(he.Output, "no route to shard1") {
		t.Fatalf("err %v (%+v)", err, he)
	}
	if b, _ := os.ReadFile(count); strings.Count(string(b), "run") != 3 || len(attempts) != 3 {
		t.Fatalf("runs: %q, attempts %v; want 3", b, attempts)
	}
	if !strings.Contains(err.Error(), `copy hook`) || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("message: %v", err)
	}
}

func TestHookRetrySucceeds(t *testing.T) {
	count := filepath.Join(t.TempDir(), "count")
	// Fails twice, then succeeds.
	h := hookRun{command: `echo run >> ` + count + `; [ $(wc -l < ` + count + `) -ge 3 ]`, timeout: 10 * time.Second}
	if err := h.runWithRetries(context.Background(), StepCopy, 2, time.Millisecond, nil); err != nil {
		t.Fatal(err)
	}
	// No retries: the first failure is the answer.
	os.Remove(count)
	if err := h.runWithRetries(context.Background(), StepCopy, 0, time.Millisecond, nil); err == nil {
		t.Fatal("no retries: a failing hook passed")
	}
}

// At the timeout the whole process group dies, not only sh: a child the
// hook started in the background is gone too.
func TestHookTimeoutKillsProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	h := hookRun{command: `sleep 300 & echo $! > ` + pidFile + `; wait`, timeout: 300 * time.Millisecond}
	err := h.run(context.Background(), StepCopy)
	var he *HookError
	if !errors.As(err, &he) || !he.TimedOut || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want a timed-out HookError", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the hook's background child to die", func() error {
		if gone(pid) {
			return nil
		}
		return fmt.Errorf("pid %d still runs", pid)
	})
}

// gone reports whether pid no longer runs (no process, or a zombie that
// nobody reaped).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// A cancelled context stops the hook and the retries at once.
func TestHookCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h := hookRun{command: `sleep 300`, timeout: time.Minute}
	err := h.runWithRetries(ctx, StepCopy, 5, time.Minute, nil)
	var he *HookError
	if !errors.As(err, &he) || he.Attempts != 1 || !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}

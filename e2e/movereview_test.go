package e2e

import (
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

// mapctl move --from-file interrupted (Ctrl-C) during its first move: the
// summary counts the moves that did not start as not started, never as done.
func TestMoveCLIFromFileInterruptedSummary(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	for _, u := range []string{"kim", "lee", "max"} {
		s.mustMapctl("set", u, "shard1")
	}
	dir := t.TempDir()
	plan, started := filepath.Join(dir, "plan.txt"), filepath.Join(dir, "started")
	if err := os.WriteFile(plan, []byte("kim shard2\nlee shard2\nmax shard2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "mapctl"), "--redis", s.redis.URL, "move", "--from-file", plan, "--parallel", "1",
		"--copy-cmd", fmt.Sprintf("touch %s; sleep 300", started))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errb testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	testenv.WaitFor(t, 20*time.Second, "the first copy hook to start", func() error {
		_, err := os.Stat(started)
		return err
	})
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want 1; stderr: %s", err, errb.String())
	}
	if o := out.String(); !strings.HasSuffix(o, "summary: 3 moves, 0 done, 1 failed, 2 not started\n") {
		t.Errorf("stdout: %q, want the summary to say 0 done, 1 failed, 2 not started", o)
	}
}

package move

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// HookError is a hook command that did not exit 0 within its timeout, on
// its last attempt.
type HookError struct {
	Step     Step
	Command  string
	Attempts int
	ExitCode int    // -1 when it did not exit by itself (timeout, signal)
	TimedOut bool   // killed (its whole process group) at the hook timeout
	Output   string // the end of what it wrote to stdout and stderr
	Err      error
}

func (e *HookError) Error() string {
	how := fmt.Sprintf("exit status %d", e.ExitCode)
	switch {
	case e.TimedOut:
		how = "timed out (its process group was killed)"
	case e.ExitCode < 0:
		how = e.Err.Error()
	}
	out := ""
	if o := strings.TrimSpace(e.Output); o != "" {
		out = ": " + o
	}
	return fmt.Sprintf("%s hook %q failed after %d attempts: %s%s", e.Step, e.Command, e.Attempts, how, out)
}

func (e *HookError) Unwrap() error { return e.Err }

// hookRun is one run of a hook: command by `sh -c` with env added to ours.
type hookRun struct {
	command string
	env     []string
	timeout time.Duration
	out     io.Writer // the hook's stdout and stderr; nil: dropped
}

// run runs the hook once. The hook is the leader of its own process group,
// so that at the timeout (or when ctx ends) the whole group is killed, not
// only sh: a copy tool started by the hook dies with it. It returns nil on
// exit 0, else a *HookError (Attempts 1).
func (h hookRun) run(ctx context.Context, step Step) error {
	tctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	cmd := exec.CommandContext(tctx, "sh", "-c", h.command)
	cmd.Env = append(os.Environ(), h.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A background child that keeps the output pipe open must not hold the
	// move: after the hook exits, its pipes are closed within a second.
	cmd.WaitDelay = time.Second
	tail := &tailWriter{max: 1024}
	var w io.Writer = tail
	if h.out != nil {
		w = io.MultiWriter(tail, h.out)
	}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	if err == nil || (errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success()) {
		return nil
	}
	he := &HookError{Step: step, Command: h.command, Attempts: 1, ExitCode: -1, Output: tail.String(), Err: err}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		he.ExitCode = ee.ExitCode()
	}
	if ctx.Err() != nil {
		he.Err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	} else if tctx.Err() != nil {
		he.TimedOut = true
		he.Err = fmt.Errorf("after %s: %w", h.timeout, context.DeadlineExceeded)
	}
	return he
}

// runWithRetries runs the hook up to 1+retries times, waiting delay before
// the first retry and twice as long before each next one. It stops at once
// when ctx ends. The error is the last attempt's *HookError.
func (h hookRun) runWithRetries(ctx context.Context, step Step, retries int, delay time.Duration, attempt func(n int)) error {
	for n := 1; ; n++ {
		if attempt != nil {
			attempt(n)
		}
		err := h.run(ctx, step)
		if err == nil {
			return nil
		}
		var he *HookError
		if errors.As(err, &he) {
			he.Attempts = n
		}
		if ctx.Err() != nil || n > retries {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay *= 2
	}
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailWriter) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

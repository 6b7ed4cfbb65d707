package e2e

import (
	"context"
	"fmt"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

// waitHAProxyPid waits until the socket is served by the process pid.
func (s *stack) waitHAProxyPid(pid int) {
	s.t.Helper()
	testenv.WaitFor(s.t, 10*time.Second, "socket served by the new haproxy", func() error {
		info, err := s.rt.Info(context.Background())
		if err != nil {
			return err
		}
		if info.Pid != int64(pid) {
			return fmt.Errorf("socket served by pid %d", info.Pid)
		}
		return nil
	})
}

// HAProxy stopped and started again comes back from the map file; a change
// made while it was down goes live once it is back; a reload likewise. The
// users that did not change are routed right all along.
func TestHAProxyRestartAndReload(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	for i := 0; i < 50; i++ {
		s.mustMapctl("set", "r"+strconv.Itoa(i), shards[i%len(shards)])
	}
	s.mustMapctl("set", "moving", "shard1", "--wait")
	s.waitConverged(10 * time.Second)

	// Stop: HAProxy is gone; a change is made meanwhile.
	if err := s.haproxy.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, done := s.haproxy.Wait(10 * time.Second); !done {
		t.Fatal("haproxy did not stop")
	}
	s.mustMapctl("set", "moving", "shard2")
	s.mustMapctl("set", "newcomer", "shard3")

	// Start: it serves the file at once, then the syncer reconciles.
	s.haproxy = s.haproxy.Again(t)
	s.waitHAProxyPid(s.haproxy.Pid())
	s.mustRoute("r1", "shard1") // from the file, before or after the reconcile
	testenv.WaitFor(t, 10*time.Second, "change made while haproxy was down to go live", func() error {
		for u, want := range map[string]string{"moving": "shard2", "newcomer": "shard3"} {
			if got, err := s.route(u); err != nil || got != want {
				return fmt.Errorf("%s routed to %q (%v)", u, got, err)
			}
		}
		return nil
	})
	s.waitConverged(10 * time.Second)
	s.waitLog(10*time.Second, "full sync")

	// Reload (-sf): a new process takes over from the old one.
	s.mustMapctl("set", "moving", "shard3", "--wait")
	old := s.haproxy
	s.haproxy = old.Again(t, "-sf", strconv.Itoa(old.Pid()))
	s.waitHAProxyPid(s.haproxy.Pid())
	s.mustMapctl("set", "after-reload", "shard1")
	testenv.WaitFor(t, 10*time.Second, "changes to reach the reloaded haproxy", func() error {
		for u, want := range map[string]string{"moving": "shard3", "after-reload": "shard1", "r2": "shard2"} {
			if got, err := s.route(u); err != nil || got != want {
				return fmt.Errorf("%s routed to %q (%v)", u, got, err)
			}
		}
		return nil
	})
	s.waitConverged(10 * time.Second)
	for i := 0; i < 50; i++ {
		s.mustRoute("r"+strconv.Itoa(i), shards[i%len(shards)])
	}
}

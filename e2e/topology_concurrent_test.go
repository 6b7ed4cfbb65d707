package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/shardmap/shardmap/haproxy"
)

// liveServers returns the addresses of backend's servers in HAProxy.
func (s *stack) liveServers(backend string) []string {
	s.t.Helper()
	list, err := s.rt.Servers(context.Background(), backend)
	if err != nil {
		s.t.Fatal(err)
	}
	var addrs []string
	for _, srv := range list {
		addrs = append(addrs, srv.Addr)
	}
	slices.Sort(addrs)
	return addrs
}

// fileServers returns the addresses of shard's servers in the topology file.
func fileServers(t *testing.T, topo, shard string) []string {
	t.Helper()
	tp, err := haproxy.LoadTopology(topo)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, srv := range tp.Shards[shard].Servers {
		addrs = append(addrs, srv.Addr)
	}
	slices.Sort(addrs)
	return addrs
}

// runConcurrently runs each mapctl command at the same time and returns
// their exit codes and stderr.
func (s *stack) runConcurrently(cmds [][]string) ([]int, []string) {
	codes, errs := make([]int, len(cmds)), make([]string, len(cmds))
	var start, wg sync.WaitGroup
	start.Add(1)
	for i, args := range cmds {
		wg.Go(func() {
			start.Wait()
			_, errs[i], codes[i] = s.mapctl(args...)
		})
	}
	start.Done()
	wg.Wait()
	return codes, errs
}

// Four mapctl shard add-server at once: every one reports success, so every
// server must be live in HAProxy and in the topology file. Before the lock
// each read the file, changed HAProxy and wrote its own version back: the
// last write won and the other servers vanished at the next render.
func TestTopologyConcurrentAddServer(t *testing.T) {
	s, topo := newTopologyStack(t)
	want := map[string][]string{"shard0": fileServers(t, topo, "shard0"), "shard1": fileServers(t, topo, "shard1")}
	var cmds [][]string
	for i := range 4 {
		shard := fmt.Sprintf("shard%d", i%2)
		addr := backend(t, fmt.Sprintf("%s/new%d", shard, i))
		want[shard] = append(want[shard], addr)
		cmds = append(cmds, []string{"shard", "add-server", shard, addr, "--topology", topo})
	}
	codes, errs := s.runConcurrently(cmds)
	for i, code := range codes {
		if code != 0 {
			t.Errorf("mapctl %v: exit %d: %s", cmds[i], code, errs[i])
		}
	}
	for shard, addrs := range want {
		slices.Sort(addrs)
		if got := fileServers(t, topo, shard); !slices.Equal(got, addrs) {
			t.Errorf("%s in the topology file: %v, want %v", shard, got, addrs)
		}
		if got := s.liveServers(shard); !slices.Equal(got, addrs) {
			t.Errorf("%s live in HAProxy: %v, want %v", shard, got, addrs)
		}
	}
}

// An add-server and a remove-server at once, on the same shard: both
// succeed and both show in the file and in HAProxy.
func TestTopologyConcurrentAddAndRemove(t *testing.T) {
	s, topo := newTopologyStack(t)
	gone := backend(t, "shard1/gone")
	s.mustMapctl("shard", "add-server", "shard1", gone, "--topology", topo)
	kept := fileServers(t, topo, "shard1")
	added := backend(t, "shard1/added")
	codes, errs := s.runConcurrently([][]string{
		{"shard", "add-server", "shard1", added, "--topology", topo},
		{"shard", "remove-server", "shard1", gone, "--topology", topo},
	})
	for i, code := range codes {
		if code != 0 {
			t.Errorf("command %d: exit %d: %s", i, code, errs[i])
		}
	}
	want := slices.DeleteFunc(append(slices.Clone(kept), added), func(a string) bool { return a == gone })
	slices.Sort(want)
	if got := fileServers(t, topo, "shard1"); !slices.Equal(got, want) {
		t.Errorf("shard1 in the topology file: %v, want %v", got, want)
	}
	if got := s.liveServers("shard1"); !slices.Equal(got, want) {
		t.Errorf("shard1 live in HAProxy: %v, want %v", got, want)
	}
	if out := s.mustMapctl("config", "render", "--topology", topo); strings.Contains(out, gone) || !strings.Contains(out, added) {
		t.Errorf("render after add+remove:\n%s", out)
	}
}

// While another process holds the topology's lock, add-server waits up to
// --timeout and then fails with an error naming the lock file, changing
// neither HAProxy nor the file.
func TestTopologyLockedAddServerTimesOut(t *testing.T) {
	s, topo := newTopologyStack(t)
	lock, err := haproxy.LockTopology(context.Background(), topo)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()
	before := s.liveServers("shard1")
	addr := backend(t, "shard1/blocked")
	_, errs, code := s.mapctl("--timeout", "300ms", "shard", "add-server", "shard1", addr, "--topology", topo)
	if code != 1 || !strings.Contains(errs, topo+".lock") || !strings.Contains(errs, "another mapctl holds") {
		t.Fatalf("add-server under a held lock: exit %d %q", code, errs)
	}
	if got := s.liveServers("shard1"); !slices.Equal(got, before) {
		t.Errorf("live servers changed while locked out: %v -> %v", before, got)
	}
	if got := fileServers(t, topo, "shard1"); slices.Contains(got, addr) {
		t.Errorf("topology changed while locked out: %v", got)
	}
}

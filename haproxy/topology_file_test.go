package haproxy

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const commented = `# Production topology: owned by the platform team.
# Edit with mapctl shard add-server/remove-server.
cookie: user # the login cookie
default_shard: shard0
map: /etc/haproxy/users.map
frontend: 127.0.0.1:7000
stats: 127.0.0.1:8404
socket: /run/haproxy/admin.sock
health_check: GET /healthz
shards:
  # shard0 holds new users until they are placed.
  shard0:
    servers:
      # rack A
      - addr: 127.0.0.1:8000 # the old box
        check: true
      - addr: 127.0.0.1:8001
  shard1: # EU users
    servers: [{addr: "127.0.0.1:8003", weight: 5}]
`

func writeTopo(t *testing.T, src string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "topology.yaml")
	if err := os.WriteFile(path, []byte(src), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, mode)
	return path
}

// Editing the file through TopologyFile keeps every comment (top-level keys,
// shards, servers), the mode, and everything not edited.
func TestTopologyFileEditKeepsComments(t *testing.T) {
	path := writeTopo(t, commented, 0o600)
	f, err := OpenTopologyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.AddServer("shard0", Server{Addr: "127.0.0.1:8002", Check: true}); err != nil {
		t.Fatal(err)
	}
	if err := f.AddServer("shard1", Server{Addr: "127.0.0.1:8004"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.RemoveServer("shard0", "127.0.0.1:8001"); err != nil {
		t.Fatal(err)
	}
	if err := f.Save(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	for _, c := range []string{
		"# Production topology: owned by the platform team.",
		"# Edit with mapctl shard add-server/remove-server.",
		"# the login cookie",
		"# shard0 holds new users until they are placed.",
		"# rack A",
		"# the old box",
		"# EU users",
	} {
		if !bytes.Contains(data, []byte(c)) {
			t.Errorf("comment %q lost:\n%s", c, data)
		}
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o after save, want 600", fi.Mode().Perm())
	}
	got, err := LoadTopology(path)
	if err != nil {
		t.Fatalf("saved file does not load: %v\n%s", err, data)
	}
	addrs := func(shard string) string {
		var a []string
		for _, s := range got.Shards[shard].Servers {
			a = append(a, s.Addr)
		}
		return strings.Join(a, " ")
	}
	if a := addrs("shard0"); a != "127.0.0.1:8000 127.0.0.1:8002" {
		t.Errorf("shard0 servers %q", a)
	}
	if a := addrs("shard1"); a != "127.0.0.1:8003 127.0.0.1:8004" {
		t.Errorf("shard1 servers %q", a)
	}
	if !got.Shards["shard0"].Servers[1].Check || got.Shards["shard1"].Servers[0].Weight != 5 {
		t.Errorf("server fields lost: %+v", got.Shards)
	}
	if strings.Index(string(data), "cookie:") > strings.Index(string(data), "shards:") {
		t.Errorf("key order changed:\n%s", data)
	}
}

// A refused edit leaves the document as it was.
func TestTopologyFileRefusedEdit(t *testing.T) {
	path := writeTopo(t, commented, 0o644)
	f, err := OpenTopologyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := f.Bytes()
	for name, err := range map[string]error{
		"listed twice":    f.AddServer("shard1", Server{Addr: "127.0.0.1:8000"}),
		"unknown shard":   f.AddServer("shard9", Server{Addr: "127.0.0.1:9000"}),
		"not in shard":    func() error { _, err := f.RemoveServer("shard0", "127.0.0.1:9999"); return err }(),
		"last of a shard": func() error { _, err := f.RemoveServer("shard1", "127.0.0.1:8003"); return err }(),
	} {
		if !errors.Is(err, ErrTopology) {
			t.Errorf("%s: err = %v, want ErrTopology", name, err)
		}
	}
	if after, _ := f.Bytes(); !bytes.Equal(before, after) {
		t.Fatalf("refused edits changed the document:\n%s\n---\n%s", before, after)
	}
}

// A second LockTopology waits for the first and gives up at its deadline
// with ErrTopologyLocked naming the lock file; after Unlock it succeeds.
func TestLockTopology(t *testing.T) {
	path := writeTopo(t, commented, 0o644)
	l, err := LockTopology(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = LockTopology(ctx, path)
	if !errors.Is(err, ErrTopologyLocked) || !strings.Contains(err.Error(), path+".lock") {
		t.Fatalf("second lock: %v, want ErrTopologyLocked naming %s.lock", err, path)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	l2, err := LockTopology(context.Background(), path)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	l2.Unlock()
}

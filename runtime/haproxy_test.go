package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

// realHAProxy starts haproxy (2.6, or $SHARDMAP_HAPROXY) with one map, /users.map in a temp dir,
// holding live, and extra lines in its global section.
func realHAProxy(t *testing.T, globals string, live ...Entry) (h *testenv.HAProxy, c *Client, mapPath string) {
	t.Helper()
	dir := t.TempDir()
	mapPath = filepath.Join(dir, "users.map")
	var b strings.Builder
	for _, e := range live {
		fmt.Fprintf(&b, "%s %s\n", e.Key, e.Value)
	}
	if err := os.WriteFile(mapPath, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "admin.sock")
	cfg := fmt.Sprintf(`global
  stats socket %s mode 600 level admin
  stats timeout 10s
%s
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend fe
  bind 127.0.0.1:%d
  use_backend %%[req.cook(user),map(%s,shard0)]
backend shard0
  http-request return status 200 content-type text/plain string shard0
backend shard1
  http-request return status 200 content-type text/plain string shard1
`, socket, globals, testenv.FreePort(t), mapPath)
	h = testenv.StartHAProxy(t, dir, cfg, socket)
	return h, newClient(t, socket), mapPath
}

func dumpAll(t *testing.T, c *Client, mapPath string) []string {
	t.Helper()
	var out []string
	if err := c.Dump(context.Background(), mapPath, func(k, v string) error { out = append(out, k+"="+v); return nil }); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestRealHAProxyStoppedIsErrNoAnswer(t *testing.T) {
	h, c, _ := realHAProxy(t, "")
	if _, err := c.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Signal(syscall.SIGCONT) })
	h.Pause(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c.Info(ctx); !errors.Is(err, ErrNoAnswer) {
		t.Fatalf("Info on a stopped HAProxy: %v, want ErrNoAnswer", err)
	}
	h.Signal(syscall.SIGCONT)
	testenv.WaitFor(t, 10*time.Second, "HAProxy to answer again", func() error {
		_, err := c.Info(context.Background())
		return err
	})
}

func TestRealAllSocketSlotsBusyIsErrNoAnswer(t *testing.T) {
	h, c, _ := realHAProxy(t, "  stats maxconn 2")
	// Hold both slots with prompt-mode connections HAProxy has accepted.
	for i := 0; i < 2; i++ {
		conn, err := net.Dial("unix", h.Socket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte("prompt\n")); err != nil {
			t.Fatal(err)
		}
		if l, err := bufio.NewReader(conn).ReadString('\n'); err != nil || l != "\n" {
			t.Fatalf("holding slot %d: %q %v", i, l, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := c.Info(ctx); !errors.Is(err, ErrNoAnswer) {
		t.Fatalf("Info with every slot busy: %v, want ErrNoAnswer", err)
	}
}

// 5,000 pipelined ops (8 KB in flight at most) all apply.
func TestRealApplyLargeBatch(t *testing.T) {
	_, c, mapPath := realHAProxy(t, "", Entry{"keep", "shard0"})
	ctx := context.Background()
	ops := make([]Op, 0, 5000)
	for i := 0; i < 4000; i++ {
		ops = append(ops, Op{Kind: Add, Key: fmt.Sprintf("user%06d", i), Value: "shard1"})
	}
	for i := 0; i < 500; i++ {
		ops = append(ops, Op{Kind: Set, Key: fmt.Sprintf("user%06d", i), Value: "shard0"})
		ops = append(ops, Op{Kind: Del, Key: fmt.Sprintf("user%06d", 3999-i)})
	}
	res, err := c.Apply(ctx, mapPath, ops)
	if err != nil || len(res) != len(ops) {
		t.Fatalf("Apply: %d results, %v", len(res), err)
	}
	for i, r := range res {
		if r != nil {
			t.Fatalf("op %d (%s): %v", i, ops[i], r)
		}
	}
	want := map[string]string{"keep": "shard0"}
	for i := 0; i < 3500; i++ {
		want[fmt.Sprintf("user%06d", i)] = map[bool]string{true: "shard0", false: "shard1"}[i < 500]
	}
	got := dumpAll(t, c, mapPath)
	if len(got) != len(want) {
		t.Fatalf("live map has %d entries, want %d", len(got), len(want))
	}
	for _, kv := range got {
		k, v, _ := strings.Cut(kv, "=")
		if want[k] != v {
			t.Fatalf("%s, want %s=%s", kv, k, want[k])
		}
	}
}

func TestRealReplaceVerifiesCommit(t *testing.T) {
	_, c, mapPath := realHAProxy(t, "", Entry{"old", "shard0"})
	ctx := context.Background()
	var es []Entry
	for i := 0; i < 3000; i++ {
		es = append(es, Entry{fmt.Sprintf("user%06d", i), "shard1"})
	}
	for round := 0; round < 2; round++ {
		if err := c.Replace(ctx, mapPath, es); err != nil {
			t.Fatal(err)
		}
	}
	maps, err := c.Maps(ctx)
	if err != nil || len(maps) != 1 {
		t.Fatalf("%v %v", maps, err)
	}
	if m := maps[0]; m.Path != mapPath || m.CurrVer != 2 || m.NextVer != 2 || m.EntryCount != len(es) {
		t.Fatalf("show map after two swaps: %+v", m)
	}
	if got := dumpAll(t, c, mapPath); len(got) != len(es) || got[0] != "user000000=shard1" {
		t.Fatalf("live map: %d entries", len(got))
	}
}

// A loader killed mid-Replace leaves a version with entries; ClearUncommitted
// drops it and leaves the live map alone.
func TestRealClearUncommitted(t *testing.T) {
	_, c, mapPath := realHAProxy(t, "", Entry{"a", "shard0"}, Entry{"b", "shard1"})
	ctx := context.Background()
	if n, err := c.ClearUncommitted(ctx, mapPath); err != nil || n != 0 {
		t.Fatalf("nothing pending: cleared %d, %v", n, err)
	}
	// The killed loader: prepare, one payload, no commit; and an empty
	// version after it.
	v, err := c.prepare(ctx, mapPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.expectEmpty(ctx, fmt.Sprintf("add map @%d %s <<\nx shard1\ny shard1\nz shard1\n", v, mapPath), mapPath); err != nil {
		t.Fatal(err)
	}
	if _, err := c.prepare(ctx, mapPath); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.MapEntryCount(ctx, mapPath); n != 5 {
		t.Fatalf("entry_cnt %d with the pending version, want 5", n)
	}
	n, err := c.ClearUncommitted(ctx, mapPath)
	if err != nil || n != 3 {
		t.Fatalf("cleared %d, %v; want 3", n, err)
	}
	if n, _ := c.MapEntryCount(ctx, mapPath); n != 2 {
		t.Fatalf("entry_cnt %d after clearing, want 2", n)
	}
	if got := strings.Join(dumpAll(t, c, mapPath), ","); got != "a=shard0,b=shard1" {
		t.Fatalf("live map changed: %s", got)
	}
	if n, err := c.ClearUncommitted(ctx, mapPath); err != nil || n != 0 {
		t.Fatalf("second call: cleared %d, %v; want 0", n, err)
	}
	// A swap after it still works.
	if err := c.Replace(ctx, mapPath, []Entry{{"c", "shard1"}}); err != nil {
		t.Fatal(err)
	}
}

func TestRealUnknownMap(t *testing.T) {
	_, c, mapPath := realHAProxy(t, "")
	wrong := mapPath + ".wrong"
	err := c.Dump(context.Background(), wrong, func(k, v string) error { return nil })
	if !errors.Is(err, ErrUnknownMap) || !strings.Contains(err.Error(), mapPath+";") {
		t.Fatalf("Dump: %v, want ErrUnknownMap listing %s", err, mapPath)
	}
	if _, err := c.Apply(context.Background(), wrong, []Op{{Add, "a", "b"}}); !errors.Is(err, ErrUnknownMap) {
		t.Fatalf("Apply: %v", err)
	}
	if err := c.Replace(context.Background(), wrong, []Entry{{"a", "b"}}); !errors.Is(err, ErrUnknownMap) {
		t.Fatalf("Replace: %v", err)
	}
}

// AddFrom brings new keys live in the current version, in several payloads,
// next to the keys the map had.
func TestRealAddFrom(t *testing.T) {
	_, c, mapPath := realHAProxy(t, "", Entry{"old", "shard0"})
	ctx := context.Background()
	var es []Entry
	for i := 0; i < 3000; i++ { // several payloads
		es = append(es, Entry{fmt.Sprintf("user%06d", i), "shard1"})
	}
	if err := c.AddFrom(ctx, mapPath, EntryList(es)); err != nil {
		t.Fatal(err)
	}
	got := dumpAll(t, c, mapPath)
	if len(got) != len(es)+1 || got[0] != "old=shard0" || got[len(got)-1] != "user002999=shard1" {
		t.Fatalf("live map: %d entries (first %q, last %q), want %d", len(got), got[0], got[len(got)-1], len(es)+1)
	}
	ms, err := c.Maps(ctx)
	if err != nil || len(ms) != 1 || ms[0].CurrVer != 0 || ms[0].EntryCount != len(es)+1 {
		t.Fatalf("show map: %+v %v", ms, err)
	}
	if err := c.AddFrom(ctx, mapPath, EntryList{{"bad key", "shard1"}}); !errors.Is(err, ErrUnsafeWord) {
		t.Fatalf("AddFrom of a key with a blank: %v, want ErrUnsafeWord", err)
	}
}

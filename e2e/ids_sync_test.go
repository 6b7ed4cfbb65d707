package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shardmap/shardmap/ids"
	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// monotone sends requests for a fixed set of IDs until stopped and checks
// that each ID is only ever routed to its expected values in order: once
// it has been seen on the value at index i of its sequence, a request on
// an earlier one (or on a value not in the sequence) is a violation.
// Request errors (HAProxy restarting) are counted, not judged.
type monotone struct {
	s      *stack
	want   map[string][]string // ID -> its values, oldest first
	mu     sync.Mutex
	at     map[string]int // ID -> index of the newest value seen
	bad    []string
	seen   int
	errs   int
	stop   chan struct{}
	done   chan struct{}
	stopMu sync.Once
}

func startMonotone(s *stack, want map[string][]string) *monotone {
	m := &monotone{s: s, want: want, at: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	for id := range want {
		m.at[id] = -1
	}
	go m.run()
	s.t.Cleanup(m.halt)
	return m
}

func (m *monotone) run() {
	defer close(m.done)
	for {
		for id, seq := range m.want {
			select {
			case <-m.stop:
				return
			default:
			}
			got, err := m.s.route(id)
			m.mu.Lock()
			if err != nil {
				m.errs++
				m.mu.Unlock()
				continue
			}
			m.seen++
			i := m.at[id]
			j := i
			for k := max(i, 0); k < len(seq); k++ {
				if seq[k] == got {
					j = k
					break
				}
			}
			switch {
			case j >= 0 && seq[j] == got:
				m.at[id] = j
			case len(m.bad) < 20:
				now := "nothing yet"
				if i >= 0 {
					now = seq[i]
				}
				m.bad = append(m.bad, fmt.Sprintf("ID %s routed to %s after %s (sequence %v)", id, got, now, seq))
			}
			m.mu.Unlock()
		}
	}
}

func (m *monotone) halt() {
	m.stopMu.Do(func() { close(m.stop) })
	<-m.done
}

// check stops the checker and fails the test on any violation, or when an
// ID never reached its last value.
func (m *monotone) check(t *testing.T) {
	t.Helper()
	m.halt()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, b := range m.bad {
		t.Error(b)
	}
	for id, seq := range m.want {
		if m.at[id] != len(seq)-1 {
			t.Errorf("ID %s: last value seen is index %d of %v", id, m.at[id], seq)
		}
	}
	t.Logf("monotone checker: %d requests judged, %d errors (HAProxy restarting)", m.seen, m.errs)
}

// routing: ids end to end: HAProxy rendered from a routing: ids topology,
// Redis, and the syncer binary run on the topology, which syncs both the
// moved map and the logical map. Generated IDs route by their logical
// shard; mapctl logical set re-routes a whole logical shard live; mapctl
// set ID moves one ID and mapctl del ID moves it back; a restarted HAProxy
// comes back right from both files; a restarted syncer changes nothing. A
// checker sends requests all along and sees each ID's route only move
// forward.
func TestIDsSync(t *testing.T) {
	s := &stack{t: t, dir: t.TempDir()}
	s.mapPath = filepath.Join(s.dir, "moved.map")
	s.socket = filepath.Join(s.dir, "admin.sock")
	s.redis = testenv.StartRedis(t)
	rdb := s.redis.Client(t)
	s.store = maps.NewStore(rdb, "")
	logicalStore := maps.NewStore(rdb, maps.LogicalPrefix(""))
	logicalPath := filepath.Join(s.dir, "logical.map")
	port := testenv.FreePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	s.front = fmt.Sprintf("http://127.0.0.1:%d", port)
	topo := filepath.Join(s.dir, "topology.yaml")
	var servers strings.Builder
	for _, sh := range shards {
		fmt.Fprintf(&servers, "  %s:\n    servers: [{addr: %q}]\n", sh, backend(t, sh))
	}
	os.WriteFile(topo, []byte(fmt.Sprintf(`cookie: user
routing: ids
default_shard: shard0
map: %s
frontend: 127.0.0.1:%d
stats: 127.0.0.1:%d
socket: %s
syncer: {redis: %q, name: e2e, listen: %q}
shards:
%s`, s.mapPath, port, testenv.FreePort(t), s.socket, s.redis.URL, listen, servers.String())), 0o644)
	cfgPath := filepath.Join(s.dir, "rendered.cfg")
	s.mustMapctl("config", "render", "--topology", topo, "-o", cfgPath)
	if _, err := os.Stat(logicalPath); err != nil {
		t.Fatalf("config render -o did not write the logical map: %v", err)
	}
	cfg, _ := os.ReadFile(cfgPath)
	os.WriteFile(s.mapPath, nil, 0o644)
	s.haproxy = testenv.StartHAProxy(t, s.dir, string(cfg), s.socket)
	rt, err := runtime.New(s.socket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	s.rt = rt
	s.http = &http.Client{Timeout: 5 * time.Second}

	instances := func() map[string]bool {
		before := map[string]bool{}
		for _, st := range append(syncersOf(t, s.store), syncersOf(t, logicalStore)...) {
			before[st.Instance] = true
		}
		return before
	}
	// waitBoth waits until both syncers of a process started after before
	// report ready.
	waitBoth := func(before map[string]bool) {
		t.Helper()
		for _, w := range []struct {
			store *maps.Store
			name  string
		}{{s.store, "e2e"}, {logicalStore, "e2e:logical"}} {
			testenv.WaitFor(t, 60*time.Second, "syncer "+w.name+" ready", func() error {
				if s.syncer.Exited() {
					t.Fatalf("syncer exited: %s", s.syncer.Output())
				}
				for _, st := range syncersOf(t, w.store) {
					if st.Name == w.name && st.Ready && !before[st.Instance] && st.Live(time.Now(), maps.LiveWithin) {
						return nil
					}
				}
				return errors.New("not ready")
			})
		}
	}
	startSyncer := func() {
		t.Helper()
		before := instances()
		s.syncer = testenv.Start(t, "syncer", []string{filepath.Join(binDir, "syncer"), "--config", topo})
		waitBoth(before)
	}
	startSyncer()

	// The syncer seeded Redis from the logical map file (spread in name
	// order); init finds it all there and writes nothing.
	const wantList = "0-2047 shard0\n2048-4095 shard1\n4096-6143 shard2\n6144-8191 shard3\n"
	if got := s.mustMapctl("logical", "list"); got != wantList {
		t.Fatalf("logical list:\n%s\nwant:\n%s", got, wantList)
	}
	if _, errs, code := s.mapctl("logical", "init", "--topology", topo); code != 0 || !strings.Contains(errs, "0 logical shards written, 8192 already there") {
		t.Fatalf("logical init on a seeded Redis: exit %d: %s", code, errs)
	}

	// mapctl syncers lists both.
	var listed struct {
		Syncers []struct{ Name, State, Map string }
	}
	if err := json.Unmarshal([]byte(s.mustMapctl("syncers", "-o", "json")), &listed); err != nil || len(listed.Syncers) != 2 ||
		listed.Syncers[0].Name != "e2e" || listed.Syncers[1].Name != "e2e:logical" || listed.Syncers[1].State != "ready" || listed.Syncers[1].Map != logicalPath {
		t.Errorf("mapctl syncers: %+v %v", listed, err)
	}

	// /readyz covers both syncers.
	var health struct {
		Ready   bool `json:"ready"`
		Logical *struct {
			Ready   bool `json:"ready"`
			Entries int  `json:"entries"`
		} `json:"logical"`
	}
	testenv.WaitFor(t, 10*time.Second, "/readyz of both", func() error {
		resp, err := http.Get("http://" + listen + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &health); err != nil {
			return err
		}
		if resp.StatusCode != 200 || !health.Ready || health.Logical == nil || !health.Logical.Ready || health.Logical.Entries != 8192 {
			return fmt.Errorf("/readyz %d: %s", resp.StatusCode, b)
		}
		return nil
	})

	gen, err := ids.NewGenerator(rdb, "", ids.Default)
	if err != nil {
		t.Fatal(err)
	}
	newID := func(l int) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		id, err := gen.New(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		return strconv.FormatInt(id, 10)
	}
	// Logical 5 moves to shard3; on logical 7, X moves to shard2 on its own,
	// then logical 7 moves to shard1, then X comes back to it (shard1).
	// The others stay.
	want := map[string][]string{}
	var on5, on7 []string
	for i := 0; i < 3; i++ {
		a, b := newID(5), newID(7)
		on5, on7 = append(on5, a), append(on7, b)
		want[a] = []string{"shard0", "shard3"}
		want[b] = []string{"shard0", "shard1"}
	}
	x := newID(7)
	want[x] = []string{"shard0", "shard2", "shard1"}
	for l, sh := range map[int]string{0: "shard0", 2048: "shard1", 5000: "shard2", 8191: "shard3"} {
		want[newID(l)] = []string{sh}
	}
	for id, seq := range want {
		s.mustRoute(id, seq[0])
	}
	m := startMonotone(s, want)

	s.mustMapctl("logical", "set", "5", "shard3", "--wait")
	for _, id := range on5 {
		s.mustRoute(id, "shard3")
	}
	s.mustMapctl("set", x, "shard2", "--wait")
	s.mustRoute(x, "shard2")
	if out := s.mustMapctl("id", "parse", x, "-o", "json"); !strings.Contains(out, `"shard": "shard2"`) || !strings.Contains(out, `"routed_by": "moved map"`) {
		t.Errorf("id parse of the moved ID:\n%s", out)
	}
	s.mustMapctl("logical", "set", "7", "shard1", "--wait")
	s.mustRoute(x, "shard2") // its own entry wins
	for _, id := range on7 {
		s.mustRoute(id, "shard1")
	}
	s.mustMapctl("del", x, "--wait")
	s.mustRoute(x, "shard1")
	if out := s.mustMapctl("id", "parse", x); !strings.Contains(out, "routes to  shard1 (logical shard 7 in the logical map in Redis)") {
		t.Errorf("id parse after del:\n%s", out)
	}

	// Refused: a key that is not an ID, a logical shard out of range, a
	// delete of a logical shard, the logical map's keys by --prefix.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"set", "alice", "shard1"}, `ID "alice": not a decimal number`},
		{[]string{"set", "0123", "shard1"}, "leading zero"},
		{[]string{"logical", "set", "8192", "shard1"}, `logical shard "8192": want a number 0..8191`},
		{[]string{"logical", "set", "5", "shard9"}, `shard "shard9" is not a backend`},
		{[]string{"logical", "del", "5"}, "cannot be deleted"},
		{[]string{"--prefix", "{shardmap}:logical", "del", "5"}, "names the logical map's keys"},
	} {
		if _, errs, code := s.mapctl(c.args...); code != 2 || !strings.Contains(errs, c.want) {
			t.Errorf("mapctl %v: exit %d, %q; want exit 2 naming %q", c.args, code, errs, c.want)
		}
	}

	// Both files follow: the logical map file has both moves, the moved
	// map file no longer has X.
	testenv.WaitFor(t, 10*time.Second, "both map files written", func() error {
		lm, err := maps.ReadMapFile(logicalPath)
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, e := range lm.Entries {
			got[e.User] = e.Shard
		}
		if len(got) != 8192 || got["5"] != "shard3" || got["7"] != "shard1" || got["6"] != "shard0" {
			return fmt.Errorf("logical map file: %d entries, 5=%s 7=%s 6=%s", len(got), got["5"], got["7"], got["6"])
		}
		moved, _, err := s.file()
		if err != nil {
			return err
		}
		if _, ok := moved[x]; ok || len(moved) != 0 {
			return fmt.Errorf("moved map file: %v", moved)
		}
		return nil
	})

	// HAProxy restarted: both maps come back from their files.
	if err := s.haproxy.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, done := s.haproxy.Wait(10 * time.Second); !done {
		t.Fatal("haproxy did not stop")
	}
	s.haproxy = s.haproxy.Again(t)
	s.waitHAProxyPid(s.haproxy.Pid())
	for id, seq := range want {
		s.mustRoute(id, seq[len(seq)-1])
	}

	// The syncer restarted: nothing changes.
	s.stopSyncer()
	startSyncer()
	for id, seq := range want {
		s.mustRoute(id, seq[len(seq)-1])
	}
	live := map[string]string{}
	if err := rt.Dump(context.Background(), logicalPath, func(k, v string) error { live[k] = v; return nil }); err != nil {
		t.Fatal(err)
	}
	snap, err := logicalStore.Snapshot(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := diff(snap.Entries, live); d != "" {
		t.Errorf("live logical map vs Redis after the restarts: %s", d)
	}
	m.check(t)

	// SIGHUP kicks both syncers: hand edits of either live map are put
	// back now, not at the next reconcile (a minute away).
	if res, err := rt.Apply(context.Background(), logicalPath, []runtime.Op{{Kind: runtime.Set, Key: "9", Value: "shard2"}}); err != nil || res[0] != nil {
		t.Fatalf("set map logical.map 9 shard2: %v %v", res, err)
	}
	if res, err := rt.Apply(context.Background(), s.mapPath, []runtime.Op{{Kind: runtime.Add, Key: "12345", Value: "shard2"}}); err != nil || res[0] != nil {
		t.Fatalf("add map moved.map 12345 shard2: %v %v", res, err)
	}
	if err := s.syncer.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "both live maps put back after SIGHUP", func() error {
		var l9, moved string
		if err := rt.Dump(context.Background(), logicalPath, func(k, v string) error {
			if k == "9" {
				l9 = v
			}
			return nil
		}); err != nil {
			return err
		}
		if err := rt.Dump(context.Background(), s.mapPath, func(k, v string) error { moved += k + " "; return nil }); err != nil {
			return err
		}
		if l9 != "shard0" || moved != "" {
			return fmt.Errorf("logical 9 on %q, moved map %q", l9, moved)
		}
		return nil
	})
	// Redis away when the syncer starts, and back empty: the syncer waits
	// for it, then seeds the logical map from its file, which holds the
	// moves made above; every ID still routes as it did.
	s.stopSyncer()
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	before := instances()
	s.redis.Stop(t)
	s.syncer = testenv.Start(t, "syncer", []string{filepath.Join(binDir, "syncer"), "--config", topo})
	s.waitLog(20*time.Second, "logical map not seeded yet")
	s.redis.Restart(t)
	waitBoth(before)
	s.waitLog(10*time.Second, "logical map seeded in Redis from its file")
	if got := s.mustMapctl("logical", "list"); !strings.Contains(got, "\n5 shard3\n") || !strings.Contains(got, "\n7 shard1\n") {
		t.Errorf("logical list after seeding from the file:\n%s", got)
	}
	for id, seq := range want {
		s.mustRoute(id, seq[len(seq)-1])
	}
}

func syncersOf(t *testing.T, store *maps.Store) []maps.SyncerState {
	t.Helper()
	all, err := store.Syncers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// mapctl logical init puts the topology's spread in Redis only where Redis
// has none (a moved logical shard stays moved); before it, Redis is not in
// ids mode and set takes any user; after it, set takes only IDs.
func TestIDsLogicalInit(t *testing.T) {
	s := &stack{t: t, dir: t.TempDir()}
	s.redis = testenv.StartRedis(t)
	s.store = maps.NewStore(s.redis.Client(t), "")
	topo := filepath.Join(s.dir, "topology.yaml")
	os.WriteFile(topo, []byte(`routing: ids
default_shard: a
map: /tmp/x/moved.map
frontend: 127.0.0.1:7000
stats: 127.0.0.1:8404
socket: /tmp/x/admin.sock
shards:
  a: {servers: [{addr: "127.0.0.1:8000"}]}
  b: {servers: [{addr: "127.0.0.1:8001"}]}
`), 0o644)
	if _, errs, code := s.mapctl("logical", "list"); code != 2 || !strings.Contains(errs, "no logical map in Redis") {
		t.Fatalf("logical list before init: exit %d: %s", code, errs)
	}
	s.mustMapctl("set", "alice", "a", "--force") // not ids mode yet
	if _, errs, code := s.mapctl("logical", "init", "--topology", topo); code != 0 || !strings.Contains(errs, "8192 logical shards written, 0 already there") {
		t.Fatalf("logical init: exit %d: %s", code, errs)
	}
	if got := s.mustMapctl("logical", "list"); got != "0-4095 a\n4096-8191 b\n" {
		t.Fatalf("logical list after init:\n%s", got)
	}
	s.mustMapctl("logical", "set", "5", "b", "--force")
	if _, errs, code := s.mapctl("logical", "init", "--topology", topo); code != 0 || !strings.Contains(errs, "0 logical shards written, 8192 already there") {
		t.Fatalf("logical init again: exit %d: %s", code, errs)
	}
	var ranges []struct {
		From, To int
		Shard    string
	}
	if err := json.Unmarshal([]byte(s.mustMapctl("logical", "list", "-o", "json")), &ranges); err != nil || len(ranges) != 4 ||
		ranges[1].From != 5 || ranges[1].To != 5 || ranges[1].Shard != "b" {
		t.Fatalf("logical list -o json after moving 5 and init again: %+v %v", ranges, err)
	}
	if _, errs, code := s.mapctl("set", "bob", "a", "--force"); code != 2 || !strings.Contains(errs, `ID "bob": not a decimal number`) {
		t.Fatalf("set bob in ids mode: exit %d: %s", code, errs)
	}
	out := s.mustMapctl("id", "parse", strconv.Itoa(5<<10), "-o", "json") // logical 5, time 0, sequence 0
	if !strings.Contains(out, `"shard": "b"`) || !strings.Contains(out, `"routed_by": "logical map"`) {
		t.Fatalf("id parse of an ID on logical 5:\n%s", out)
	}
}

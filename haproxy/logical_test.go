package haproxy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/shardmap/shardmap/internal/testenv"
)

func TestSpread(t *testing.T) {
	if Spread(0, []string{"a"}) != nil || Spread(5, nil) != nil || Spread(-1, []string{"a"}) != nil {
		t.Fatal("Spread of nothing is not nil")
	}
	if got := Spread(5, []string{"a", "b"}); !reflect.DeepEqual(got, []string{"a", "a", "a", "b", "b"}) {
		t.Fatalf("Spread(5, a b) = %v", got)
	}
	if got := Spread(2, []string{"a", "b", "c"}); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("Spread(2, a b c) = %v (more shards than logical shards)", got)
	}
	for _, k := range []int{1, 2, 3, 6, 7, 100, 8192} {
		shards := make([]string, k)
		for i := range shards {
			shards[i] = fmt.Sprintf("s%d", i)
		}
		got := Spread(8192, shards)
		if len(got) != 8192 {
			t.Fatalf("%d shards: %d entries", k, len(got))
		}
		count := map[string]int{}
		next := 0 // contiguous blocks, in the order given
		for i, s := range got {
			if s != shards[next] {
				next++
				if next >= k || s != shards[next] {
					t.Fatalf("%d shards: logical %d -> %s breaks the order (expected %s)", k, i, s, shards[min(next, k-1)])
				}
			}
			count[s]++
		}
		lo, hi := 8192, 0
		for _, s := range shards {
			lo, hi = min(lo, count[s]), max(hi, count[s])
		}
		if hi-lo > 1 || len(count) != k {
			t.Fatalf("%d shards: block sizes %d..%d over %d shards, want within one over all", k, lo, hi, len(count))
		}
		if !reflect.DeepEqual(got, Spread(8192, shards)) {
			t.Fatal("Spread is not deterministic")
		}
	}
}

const idsBase = "routing: ids\ndefault_shard: s0\nmap: /m/moved.map\nfrontend: 127.0.0.1:7000\nstats: 127.0.0.1:8404\nsocket: /m/a.sock\nshards: {s0: {servers: [{addr: '127.0.0.1:1'}]}, s1: {servers: [{addr: '127.0.0.1:2'}]}}\n"

// routing: ids renders the moved map, then div/and from the layout and the
// logical map, guarded by the cookie's form; routing: users is unchanged.
func TestRenderIDsRouting(t *testing.T) {
	checkOption(t, "routing", map[string]string{
		"":                 "    use_backend %[req.cook(user),map(/m/users.map,s0)]\n",
		"routing: users\n": "    use_backend %[req.cook(user),map(/m/users.map,s0)]\n",
	}, []string{"id", "IDS", "users "})
	cases := map[string][]string{
		idsBase: {
			"    http-request set-var(txn.shard) req.cook(user),map(/m/moved.map)\n",
			"    http-request set-var(txn.shard) req.cook(user),div(1024),and(8191),map(/m/logical.map) if !{ var(txn.shard) -m found } { req.cook(user) -m reg ^[0-9]{1,19}$ }\n",
			"    use_backend %[var(txn.shard)] if { var(txn.shard) -m found }\n    default_backend s0\n",
		},
		idsBase + "cookie: uid\nlogical_map: /l/l.map\nids: {shard_bits: 12, sequence_bits: 11}\n": {
			"req.cook(uid),map(/m/moved.map)\n",
			"req.cook(uid),div(2048),and(4095),map(/l/l.map) if !{ var(txn.shard) -m found } { req.cook(uid) -m reg ^[0-9]{1,19}$ }\n",
		},
	}
	for src, wants := range cases {
		topo, err := ParseTopology([]byte(src))
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		cfg, err := Render(topo, "t")
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range wants {
			if !strings.Contains(string(cfg), w) {
				t.Errorf("want %q in:\n%s", w, cfg)
			}
		}
		if strings.Contains(string(cfg), "map_int") || strings.Contains(string(cfg), "users.map") || strings.Contains(string(cfg), "%!") {
			t.Errorf("ids routing with map_int or the users map:\n%s", cfg)
		}
	}
	for name, src := range map[string]string{
		"logical_map with users": strings.Replace(idsBase, "routing: ids", "routing: users", 1) + "logical_map: /m/l.map\n",
		"ids layout with users":  strings.Replace(idsBase, "routing: ids\n", "", 1) + "ids: {shard_bits: 12}\n",
		"bad layout":             idsBase + "ids: {time_bits: 40, shard_bits: 12}\n", // 62 bits
		"logical_map is map":     idsBase + "logical_map: /m/moved.map\n",
		"logical_map relative":   idsBase + "logical_map: l.map\n",
		"logical_map injected":   idsBase + "logical_map: '/m/l.map) #'\n",
		"bad layout sum":         idsBase + "ids: {time_bits: 30}\n",
	} {
		if _, err := ParseTopology([]byte(src)); !errors.Is(err, ErrTopology) {
			t.Errorf("%s: err = %v, want ErrTopology", name, err)
		}
	}
}

// The logical map is created once, from the topology, and read back as
// written; an existing one is never replaced.
func TestCreateLogicalMap(t *testing.T) {
	dir := t.TempDir()
	topo, err := ParseTopology([]byte(strings.ReplaceAll(idsBase, "/m/", dir+"/")))
	if err != nil {
		t.Fatal(err)
	}
	created, err := CreateLogicalMap(topo)
	if err != nil || !created {
		t.Fatalf("CreateLogicalMap = %v, %v", created, err)
	}
	m, err := ReadLogicalMap(filepath.Join(dir, "logical.map"), 8192)
	if err != nil {
		t.Fatal(err)
	}
	want := Spread(8192, []string{"s0", "s1"})
	if len(m) != 8192 || m[0] != "s0" || m[4095] != "s0" || m[4096] != "s1" || m[8191] != "s1" {
		t.Fatalf("logical map: %d entries, 0=%s 4095=%s 4096=%s 8191=%s", len(m), m[0], m[4095], m[4096], m[8191])
	}
	for i, s := range want {
		if m[i] != s {
			t.Fatalf("logical %d -> %s, want %s", i, m[i], s)
		}
	}
	os.WriteFile(filepath.Join(dir, "logical.map"), []byte("0 s1\n"), 0o644)
	if created, err := CreateLogicalMap(topo); err != nil || created {
		t.Fatalf("second CreateLogicalMap = %v, %v: want the existing file kept", created, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "logical.map")); string(b) != "0 s1\n" {
		t.Fatalf("existing logical map replaced: %q", b)
	}
	users, _ := ParseTopology([]byte(strings.Replace(idsBase, "routing: ids\n", "", 1)))
	if _, err := CreateLogicalMap(users); !errors.Is(err, ErrTopology) {
		t.Fatalf("CreateLogicalMap with routing users: %v", err)
	}
}

func TestReadLogicalMapErrors(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"three words":  "0 s0 x\n",
		"out of range": "8192 s0\n",
		"negative":     "-1 s0\n",
		"leading zero": "01 s0\n",
		"twice":        "1 s0\n1 s1\n",
		"bad shard":    "1 s;0\n",
	} {
		p := filepath.Join(dir, "l.map")
		os.WriteFile(p, []byte("# header\n\n"+content), 0o644)
		_, err := ReadLogicalMap(p, 8192)
		if !errors.Is(err, ErrLogicalMap) || !strings.Contains(err.Error(), p+":") {
			t.Errorf("%s: %v, want ErrLogicalMap naming the file and line", name, err)
		}
	}
}

// haproxy -c accepts the ids-mode config (run again on 3.0 with SHARDMAP_HAPROXY).
func TestRenderIDsPassesHAProxyCheck(t *testing.T) {
	bin := testenv.Need(t, "haproxy")
	dir := t.TempDir()
	topo, err := ParseTopology([]byte(strings.ReplaceAll(idsBase, "/m/", dir+"/")))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Render(topo, "test")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "moved.map"), nil, 0o644)
	if _, err := CreateLogicalMap(topo); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(path, cfg, 0o644)
	out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, cfg)
	}
	if strings.Contains(strings.ToLower(string(out)), "warning") {
		t.Fatalf("haproxy -c warns:\n%s", out)
	}
}

package suite

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/maps"
)

// TestRuleVariants measures candidate routing rules against the static
// design with the request scenario's machinery (one HAProxy per variant on
// CPU 0, rounds interleaved, medians), after checking each variant routes
// the edge cases right. It is a tool run by hand, not a pass/fail test:
//
//	go test -c -o /tmp/suite.test ./bench/suite/ &&
//	SHARDMAP_RULE_VARIANTS=ids taskset -c 1 /tmp/suite.test -test.run TestRuleVariants -test.v
//
// SHARDMAP_RULE_VARIANTS is ids, delta or both; SHARDMAP_RULE_ONLY a
// comma-separated list of variant names; SHARDMAP_RULE_DUR (3s) and
// SHARDMAP_RULE_ROUNDS (3) size the run; SHARDMAP_RULE_IDS (10000000) the
// ID key set; SHARDMAP_RULE_USERS (1000000) the named users' map.
//
// The "bare" variants are bounds, not candidates: each drops a guarantee
// (the moved map or the guard), so their edge cases are not checked. Routing
// right is not all a candidate needs: the novar forms read a map twice (a
// change between the reads sends the request to the default shard), and the
// var1/idvar forms read the second map in use_backend, which made
// e2e TestDeltaLayoutNeverRoutesBackwards see requests routed backwards.
func TestRuleVariants(t *testing.T) {
	which := os.Getenv("SHARDMAP_RULE_VARIANTS")
	if which == "" {
		t.Skip("a measuring tool: set SHARDMAP_RULE_VARIANTS=ids|delta|both")
	}
	env := func(k string, def int) int {
		if v, err := strconv.Atoi(os.Getenv(k)); err == nil {
			return v
		}
		return def
	}
	dur := 3 * time.Second
	if d, err := time.ParseDuration(os.Getenv("SHARDMAP_RULE_DUR")); err == nil {
		dur = d
	}
	rounds, nIDs, nUsers := env("SHARDMAP_RULE_ROUNDS", 3), env("SHARDMAP_RULE_IDS", 10_000_000), env("SHARDMAP_RULE_USERS", 1_000_000)
	only := map[string]bool{}
	for _, o := range strings.Split(os.Getenv("SHARDMAP_RULE_ONLY"), ",") {
		if o != "" {
			only[o] = true
		}
	}
	bin, version, err := haproxyBin()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s; load average %s", version, loadAvgLine())
	ctx := context.Background()
	type variant struct {
		name    string
		routing string // ids, delta, static
		rules   []string
		globals []string
	}
	const (
		M  = "%M"  // the moved map (ids) or the base map (delta)
		L  = "%L"  // the logical map
		D  = "%D"  // the delta map
		DS = "%DS" // the default shard
	)
	reg := "{ req.cook(user) -m reg ^[0-9]{1,19}$ }"
	digits := "{ req.cook(user),ltrim(0123456789) -m len 0 } { req.cook(user),length le 19 }"
	logical := "req.cook(user),div(1024),and(8191),map(" + L + ")"
	noLRU := []string{"tune.pattern.cache-size 0"}
	vs := []variant{{name: "static", routing: "static", rules: []string{"use_backend shard1"}}}
	if which == "ids" || which == "both" {
		cur := []string{
			"http-request set-var(txn.shard) req.cook(user),map(" + M + ")",
			"http-request set-var(txn.shard) " + logical + " if !{ var(txn.shard) -m found } " + reg,
			"use_backend %[var(txn.shard)] if { var(txn.shard) -m found }",
		}
		novar := []string{
			"use_backend %[req.cook(user),map(" + M + ")] if { req.cook(user),map(" + M + ") -m found }",
			"use_backend %[" + logical + "] if " + reg,
		}
		novarDigits := []string{novar[0], "use_backend %[" + logical + "] if " + digits}
		// var1: the moved map read once (into a variable), the logical map
		// once (in the backend name): no lookup is repeated, so a map
		// change between two reads cannot route to the default shard.
		var1 := []string{
			"http-request set-var(txn.shard) req.cook(user),map(" + M + ")",
			"use_backend %[var(txn.shard)] if { var(txn.shard) -m found }",
			"use_backend %[" + logical + "] if " + reg,
		}
		var1Digits := []string{var1[0], var1[1], "use_backend %[" + logical + "] if " + digits}
		// idvar: the cookie fetched once, into txn.id.
		idvar := []string{
			"http-request set-var(txn.id) req.cook(user)",
			"http-request set-var(txn.shard) var(txn.id),map(" + M + ")",
			"use_backend %[var(txn.shard)] if { var(txn.shard) -m found }",
			"use_backend %[var(txn.id),div(1024),and(8191),map(" + L + ")] if { var(txn.id) -m reg ^[0-9]{1,19}$ }",
		}
		vs = append(vs,
			variant{name: "ids-bare", routing: "ids", rules: []string{"use_backend %[" + logical + "]"}},
			variant{name: "ids-bare-nolru", routing: "ids", rules: []string{"use_backend %[" + logical + "]"}, globals: noLRU},
			variant{name: "ids-bare-moved-nolru", routing: "ids", rules: []string{novar[0], "use_backend %[" + logical + "]"}, globals: noLRU},
			variant{name: "ids-bare-reg-nolru", routing: "ids", rules: []string{novar[1]}, globals: noLRU},
			variant{name: "ids-bare-digits-nolru", routing: "ids", rules: []string{novarDigits[1]}, globals: noLRU},
			variant{name: "ids-current", routing: "ids", rules: cur},
			variant{name: "ids-current-nolru", routing: "ids", rules: cur, globals: noLRU},
			variant{name: "ids-novar", routing: "ids", rules: novar},
			variant{name: "ids-novar-nolru", routing: "ids", rules: novar, globals: noLRU},
			variant{name: "ids-var1", routing: "ids", rules: var1},
			variant{name: "ids-var1-nolru", routing: "ids", rules: var1, globals: noLRU},
			variant{name: "ids-idvar-nolru", routing: "ids", rules: idvar, globals: noLRU},
			variant{name: "ids-var1-digits-nolru", routing: "ids", rules: var1Digits, globals: noLRU},
			variant{name: "ids-novar-digits", routing: "ids", rules: novarDigits},
			variant{name: "ids-novar-digits-nolru", routing: "ids", rules: novarDigits, globals: noLRU},
		)
	}
	if which == "delta" || which == "both" {
		cur := []string{
			"http-request set-var(txn.shard) req.cook(user),map(" + D + ")",
			"http-request set-var(txn.shard) req.cook(user),map(" + M + "," + DS + ") unless { var(txn.shard) -m found }",
			"use_backend %[var(txn.shard)]",
		}
		novar := []string{
			"use_backend %[req.cook(user),map(" + D + ")] if { req.cook(user),map(" + D + ") -m found }",
			"use_backend %[req.cook(user),map(" + M + "," + DS + ")]",
		}
		cookieVar := []string{
			"http-request set-var(txn.user) req.cook(user)",
			"use_backend %[var(txn.user),map(" + D + ")] if { var(txn.user),map(" + D + ") -m found }",
			"use_backend %[var(txn.user),map(" + M + "," + DS + ")]",
		}
		var1 := []string{
			"http-request set-var(txn.shard) req.cook(user),map(" + D + ")",
			"use_backend %[var(txn.shard)] if { var(txn.shard) -m found }",
			"use_backend %[req.cook(user),map(" + M + "," + DS + ")]",
		}
		// idvar: the cookie fetched once, into txn.user; each map read once.
		idvar := []string{
			"http-request set-var(txn.user) req.cook(user)",
			"http-request set-var(txn.shard) var(txn.user),map(" + D + ")",
			"use_backend %[var(txn.shard)] if { var(txn.shard) -m found }",
			"use_backend %[var(txn.user),map(" + M + "," + DS + ")]",
		}
		vs = append(vs,
			variant{name: "delta-idvar-nolru", routing: "delta", rules: idvar, globals: noLRU},
			variant{name: "delta-var1", routing: "delta", rules: var1},
			variant{name: "delta-var1-nolru", routing: "delta", rules: var1, globals: noLRU},
			variant{name: "users-single", routing: "users", rules: []string{"use_backend %[req.cook(user),map(" + M + "," + DS + ")]"}},
			variant{name: "users-single-nolru", routing: "users", rules: []string{"use_backend %[req.cook(user),map(" + M + "," + DS + ")]"}, globals: noLRU},
			variant{name: "delta-current", routing: "delta", rules: cur},
			variant{name: "delta-current-nolru", routing: "delta", rules: cur, globals: noLRU},
			variant{name: "delta-novar", routing: "delta", rules: novar},
			variant{name: "delta-novar-nolru", routing: "delta", rules: novar, globals: noLRU},
			variant{name: "delta-cookievar", routing: "delta", rules: cookieVar},
			variant{name: "delta-cookievar-nolru", routing: "delta", rules: cookieVar, globals: noLRU},
		)
	}
	type run struct {
		variant
		fe   *frontend
		keys KeySet
		rps  []float64
		us   []float64
		req  int64
		bad  int64
		err  string
		mem  memStatus
	}
	var runs []*run
	dir := t.TempDir()
	usersMap := filepath.Join(dir, "users.map")
	if which == "delta" || which == "both" {
		if err := writeUsersMap(usersMap, nUsers); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range vs {
		if len(only) > 0 && !only[v.name] && v.name != "static" {
			continue
		}
		vdir := filepath.Join(dir, v.name)
		if err := mkdir(vdir); err != nil {
			t.Fatal(err)
		}
		routing := haproxy.RoutingUsers
		if v.routing == "ids" {
			routing = haproxy.RoutingIDs
		}
		topo, err := topology(vdir, routing)
		if err != nil {
			t.Fatal(err)
		}
		// Default shard1: logical 0 is on shard0 and 8191 on shard2, so a
		// cookie misrouted to either is told from the default.
		topo.DefaultShard = "shard1"
		var keys KeySet = fixedKeys{usersKeys{n: 1000, shards: shardNames}, "shard1"}
		switch v.routing {
		case "ids":
			if _, err := haproxy.CreateLogicalMap(topo); err != nil {
				t.Fatal(err)
			}
			k := newIDKeys(nIDs, topo)
			mf := k.movedMap()
			mf.Entries = append(mf.Entries, maps.Assignment{User: "123456789", Shard: maps.HoldShard})
			if _, err := maps.WriteMapFile(topo.Map, mf, 0o644); err != nil {
				t.Fatal(err)
			}
			keys = k
		case "users", "delta":
			topo.Map = usersMap
			topo.DefaultShard = spareShard // no user is on shard2: a user in neither map is told from the others
			keys = usersKeys{n: nUsers, shards: shardNames}
			if v.routing == "delta" {
				topo.DeltaMap = true
				mf := maps.MapFile{}
				for i := 0; i < 1000; i++ {
					mf.Entries = append(mf.Entries, maps.Assignment{User: userName(i * (nUsers / 1000)), Shard: shardNames[(i*(nUsers/1000)+1)%2]})
				}
				mf.Entries = append(mf.Entries, maps.Assignment{User: "heldinthedelta", Shard: maps.HoldShard})
				if _, err := maps.WriteMapFile(filepath.Join(vdir, "users.delta.map"), mf, 0o644); err != nil {
					t.Fatal(err)
				}
				keys = deltaKeys{usersKeys{n: nUsers, shards: shardNames}}
			}
		}
		r := strings.NewReplacer(M, topo.Map, L, topo.EffectiveLogicalMap(), D, filepath.Join(vdir, "users.delta.map"), DS, topo.DefaultShard)
		var rules []string
		for _, l := range v.rules {
			rules = append(rules, r.Replace(l))
		}
		cfg, err := variantConfig(topo, rules, v.globals)
		if err != nil {
			t.Fatal(err)
		}
		fe, err := startFrontend(ctx, bin, v.name, vdir, topo, cfg, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(fe.h.stop)
		rn := &run{variant: v, fe: fe, keys: keys}
		// The bare variants are bounds, not candidates: they drop a guarantee.
		if v.routing != "static" && !strings.Contains(v.name, "bare") {
			checkEdges(t, v.name, v.routing, fe.addr, topo)
		}
		runs = append(runs, rn)
	}
	for _, r := range runs {
		if _, err := Load(ctx, r.fe.addr, 32, dur/5, r.keys, true); err != nil {
			t.Fatalf("%s: warm-up: %v", r.name, err)
		}
	}
	for round := 0; round < rounds; round++ {
		for _, r := range runs {
			c0, _ := cpuTime(r.fe.h.pid())
			lr, err := Load(ctx, r.fe.addr, 32, dur, r.keys, true)
			if err != nil {
				t.Fatalf("%s: %v", r.name, err)
			}
			c1, _ := cpuTime(r.fe.h.pid())
			r.rps = append(r.rps, lr.RPS())
			r.us = append(r.us, float64(c1-c0)/float64(time.Microsecond)/float64(lr.Requests))
			r.req += lr.Requests
			r.bad += lr.Wrong + lr.Errors
			if r.err == "" {
				r.err = lr.FirstErr
			}
		}
	}
	static := Median(runs[0].rps)
	staticUS := Median(runs[0].us)
	var b strings.Builder
	fmt.Fprintf(&b, "\n| variant | req/s (median) | ratio to static | HAProxy CPU µs/request | ratio by CPU | VmRSS | wrong+errors |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range runs {
		r.mem, _ = readMem(r.fe.h.pid())
		fmt.Fprintf(&b, "| %s | %.0f | %.3f | %.2f | %.3f | %s | %d %s |\n", r.name, Median(r.rps), Median(r.rps)/static, Median(r.us), staticUS/Median(r.us), mb(r.mem.RSS), r.bad, r.err)
	}
	for _, r := range runs {
		fmt.Fprintf(&b, "%s: %s\n", r.name, strings.Join(r.rules, " ; "))
		if len(r.globals) > 0 {
			fmt.Fprintf(&b, "    global: %s\n", strings.Join(r.globals, " ; "))
		}
	}
	t.Logf("%d rounds of %s, load average after: %s%s", rounds, dur, loadAvgLine(), b.String())
}

func loadAvgLine() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

// variantConfig is benchConfig with the frontend's routing lines (comments,
// http-request and use_backend lines before default_backend) replaced by
// rules, the rendered tune.pattern.cache-size dropped, and globals added:
// each variant says its own.
func variantConfig(t *haproxy.Topology, rules, globals []string) ([]byte, error) {
	cfg, err := benchConfig(t, nil)
	if err != nil {
		return nil, err
	}
	var out []string
	in := false
	for _, line := range strings.Split(string(cfg), "\n") {
		trim := strings.TrimSpace(line)
		switch {
		case trim == "global":
			out = append(out, line)
			for _, g := range globals {
				out = append(out, "    "+g)
			}
			continue
		case trim == "frontend users":
			in = true
		case in && strings.HasPrefix(trim, "default_backend "):
			for _, r := range rules {
				out = append(out, "    "+r)
			}
			in = false
		case strings.HasPrefix(trim, "tune.pattern.cache-size "):
			continue
		case in && (strings.HasPrefix(trim, "#") || strings.HasPrefix(trim, "http-request ") || strings.HasPrefix(trim, "use_backend ")):
			continue
		}
		out = append(out, line)
	}
	return []byte(strings.Join(out, "\n")), nil
}

// checkEdges sends the edge cases of the routing mode and fails the test
// when one is answered by another backend than the guarantees say.
func checkEdges(t *testing.T, name, routing, addr string, topo *haproxy.Topology) {
	t.Helper()
	get := func(cookie *string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		if cookie != nil {
			req.Header.Set("Cookie", "user="+*cookie)
		}
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("%s: cookie %v: %v", name, cookie, err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get(ShardHeader)
	}
	s := func(v string) *string { return &v }
	type c struct {
		cookie *string
		status int
		shard  string
	}
	var cases []c
	def := topo.DefaultShard
	switch routing {
	case "ids":
		k := newIDKeys(10, topo)
		l := haproxy.Spread(topo.IDLayout().LogicalShards(), topo.ShardNames())
		moved, movedShard := k.id(0)
		cases = []c{
			{s(strconv.FormatInt(moved, 10)), 200, movedShard},
			{s("5"), 200, l[0]}, {s("8388607"), 200, l[8191]}, {s("0123"), 200, l[0]},
			{s("9223372036854775807"), 200, l[8191]},
			{s("abc"), 200, def}, {s("12345678901234567890"), 200, def}, {s("-1024"), 200, def},
			{s("12a"), 200, def}, {s("+1024"), 200, def}, {s(""), 200, def}, {nil, 200, def},
			{s("123456789"), 503, ""},
		}
		if _, got := get(s("9999999999999999999")); true {
			t.Logf("%s: 9999999999999999999 (19 digits above 2^63-1) went to %s (logical 8191: %s)", name, got, l[8191])
		}
	case "users", "delta":
		cases = []c{
			{s(userName(1)), 200, "shard1"}, {s(userName(2)), 200, "shard0"},
			{s("nobody"), 200, def}, {s(""), 200, def}, {nil, 200, def},
		}
		if routing == "delta" {
			cases = append(cases, c{s(userName(1000)), 200, "shard1"}, c{s("heldinthedelta"), 503, ""})
		}
	}
	for _, cs := range cases {
		status, shard := get(cs.cookie)
		if status != cs.status || shard != cs.shard {
			v := "(none)"
			if cs.cookie != nil {
				v = strconv.Quote(*cs.cookie)
			}
			t.Errorf("%s: cookie %s: %d %q, want %d %q", name, v, status, shard, cs.status, cs.shard)
		}
	}
}

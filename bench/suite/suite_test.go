package suite

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}, {1, time.Millisecond}, {99.5, 100 * time.Millisecond}} {
		if got := Percentile(ds, c.p); got != c.want {
			t.Errorf("Percentile(1..100 ms, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if ds[0] != 100*time.Millisecond {
		t.Error("Percentile sorted its argument")
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("Percentile(nil) = %v, want 0", got)
	}
	one := []time.Duration{7}
	if got := Summarize(one); got != (Latencies{N: 1, P50: 7, P99: 7, Max: 7}) {
		t.Errorf("Summarize of one = %+v", got)
	}
	l := Summarize(ds)
	if l.N != 100 || l.P50 != 50*time.Millisecond || l.P99 != 99*time.Millisecond || l.Max != 100*time.Millisecond {
		t.Errorf("Summarize(1..100 ms) = %+v", l)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		xs   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(c.xs); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.xs, got, c.want)
		}
	}
}

func TestWriteMarkdown(t *testing.T) {
	r := &Report{
		Title:    "Benchmarks",
		Intro:    []string{"intro"},
		Machine:  []KV{{"CPU", "x | y"}},
		Commands: []string{"make bench"},
		Sections: []Section{{Title: "S", Text: []string{"text"}, Table: &Table{Header: []string{"a", "b"}, Rows: [][]string{{"1", "two\nlines"}, {"3"}}},
			Charts: []Chart{{Alt: "chart", Path: "c.png"}}}},
		Targets: []Target{{Name: "t1", Want: "<= 5 ms", Got: "7 ms", Miss: "2 ms over", Bound: "the disk"}, {Name: "t2", Want: ">= 1", Got: "2", Met: true, Bound: "unused"}},
	}
	got := string(WriteMarkdown(r))
	for _, want := range []string{
		"# Benchmarks\n\nintro\n",
		"| CPU | x \\| y |\n",
		"```sh\nmake bench\n```",
		"## S\n\ntext\n\n| a | b |\n| --- | --- |\n| 1 | two lines |\n| 3 |  |\n",
		"![chart](c.png)",
		"| t1 | <= 5 ms | 7 ms | no | 2 ms over | the disk |\n| t2 | >= 1 | 2 | yes |  |  |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("markdown lacks %q:\n%s", want, got)
		}
	}
}

func TestTargets(t *testing.T) {
	if g := maxTarget("p99", 5, 12.5, msUnit); g.Met || g.Miss != "7.5 ms over (2.5x the target)" || g.Got != "12.5 ms" {
		t.Errorf("maxTarget miss = %+v", g)
	}
	if g := maxTarget("p99", 5, 5, msUnit); !g.Met || g.Miss != "" {
		t.Errorf("maxTarget at the limit = %+v", g)
	}
	if g := ratioTarget("ratio", 0.8, 0.71); g.Met || g.Miss != "0.09 under" {
		t.Errorf("ratioTarget miss = %+v", g)
	}
	// Just under: the doc must not say "0 under".
	if g := ratioTarget("ratio", 0.8, 0.7996); g.Met || g.Got != "0.800" || g.Miss != "0.0004 under" {
		t.Errorf("ratioTarget miss = %+v", g)
	}
}

// The report of a run puts each scenario's figures in the doc and judges
// the targets from them.
func TestBuildReport(t *testing.T) {
	o := DefaultOptions()
	o.Command = "shardmap-bench"
	runs := []*designRun{}
	for i, n := range []string{"static use_backend", "named users, map of 1,000", "named users, map of 1,000,000", "named users, map of 1,000,000 + delta", "shard IDs, 1,000,000 IDs", "shard IDs, 10,000,000 IDs", "old"} {
		rps := []float64{100, 60, 50, 45, 90, 85, 10}[i]
		sh := []string{"static", "users 1k", "users 1M", "users 1M +delta", "IDs 1M", "IDs 10M", "Lua lookup (old)"}[i]
		runs = append(runs, &designRun{Name: n, Short: sh, RPS: []float64{rps, rps + 1, rps - 1}, CPU: []float64{1, 1, 1},
			P50: []time.Duration{time.Millisecond}, P99: []time.Duration{2 * time.Millisecond}, CPUPerReq: []time.Duration{10 * time.Microsecond}})
	}
	lat := []time.Duration{time.Millisecond, 2 * time.Millisecond, 30 * time.Millisecond}
	res := &results{
		request:   &requestResult{Runs: runs, Users: 1_000_000, IDsSmall: 1_000_000, IDsLarge: 10_000_000, HAProxy: map[string]memStatus{"ids": {RSS: 19e6, HWM: 19e6}}, Conc: 32, Dur: time.Second, Rounds: 3},
		prop:      []propResult{{Users: 1_001_000, Lat: lat}, {Users: 1_001_000, ChurnWant: 10_000, ChurnGot: 9_990, Lat: lat}},
		churnIdle: 1000,
		churn: []churnStep{{Want: 5000, Got: 5000, Lat: Latencies{N: 10, P99: 20 * time.Millisecond}, RPS: 950},
			{Want: 50_000, Got: 20_000, Lat: Latencies{N: 10, P99: 900 * time.Millisecond}, RPS: 500, Profile: "File: x\nflat  flat%\n10ms syncer.apply"}},
		bulk:      &bulkResult{ImportN: 1_000_000, ImportTook: 4 * time.Second, ImportLive: time.Second, ImportLiveOK: true, ReassignN: 300_000, ReassignLive: 2 * time.Second},
		syncerMem: &memStatus{RSS: 100e6, HWM: 200e6},
		liveUsers: 1_001_000,
	}
	rep, charts := buildReport(o, res, []KV{{"CPU", "test"}})
	if len(charts) != 2 {
		t.Errorf("%d charts, want the request bars and the propagation CDF", len(charts))
	}
	md := string(WriteMarkdown(rep))
	for _, want := range []string{
		"| named users, map of 1,000,000 | 50 | 0.50 |",
		"| named users at 1,000,000, req/s vs static | >= 0.62 | 0.500 (by CPU per request: 1.00) | no | 0.12 under |",
		"| shard IDs at 10,000,000, req/s vs static | >= 0.80 | 0.850 (by CPU per request: 1.00) | yes |",
		"| HAProxy RSS with shard IDs at 10,000,000 IDs | < 20 MB | 19 MB | yes |",
		"| store -> live p99, idle, 1,001,000 users | <= 5 ms | 30 ms | no | 25 ms over (6x the target) |",
		"| import of 1,000,000 users: last live after | <= 1500 ms | 1000 ms | yes |",
		"| 50,000 | 20,000 |",
		"5,000 changes/s (p99 20 ms, req/s 0.95 of idle) | no | highest rate tried that held: 5,000 of 50,000/s; propagation alone (p99 < 100 ms) held up to 5,000/s |",
		"| import of 1,000,000 users (mapctl import) | <= 3000 ms | 4000 ms | no | 1000 ms over (1.33x the target) |",
		"| reassign 300,000 users, until all live | <= 5000 ms | 2000 ms | yes |",
		"| syncer peak RSS at 1,001,000 users | <= 150 MB | 200 MB | no | 50 MB over (1.33x the target) |",
		"10ms syncer.apply",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("doc lacks %q", want)
		}
	}
	if strings.Contains(md, "File: x") {
		t.Error("doc keeps pprof's File: line")
	}
}

func TestBenchConfigAnswersInBackends(t *testing.T) {
	dir := t.TempDir()
	tp, err := topology(dir, "users")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := benchConfig(tp, []string{"use_backend shard1"})
	if err != nil {
		t.Fatal(err)
	}
	s := string(cfg)
	for _, want := range []string{"    nbthread 1\n", "    use_backend shard1\n", "http-request return status 200 content-type text/plain string shard2 hdr x-shard shard2"} {
		if !strings.Contains(s, want) {
			t.Errorf("config lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "use_backend %[") {
		t.Errorf("the rendered use_backend line was not replaced:\n%s", s)
	}
}

func TestParseGoTest(t *testing.T) {
	out := "goos: linux\npkg: github.com/shardmap/shardmap/bench\nBenchmarkApplyPipelined1000-2   \t      10\t 123 ns/op\t  45678 updates/s\nPASS\npkg: github.com/shardmap/shardmap/maps\nBenchmarkX-2 5 1.5 p50-ms 3 p99-ms\nok  x 1s\n"
	got := parseGoTest([]byte(out))
	if len(got) != 2 {
		t.Fatalf("parsed %d benchmarks, want 2: %+v", len(got), got)
	}
	if got[0].Pkg != "github.com/shardmap/shardmap/bench" || got[0].Name != "BenchmarkApplyPipelined1000-2" || strings.Join(got[0].Metrics, ",") != "123 ns/op,45678 updates/s" {
		t.Errorf("first = %+v", got[0])
	}
	if got[1].Pkg != "github.com/shardmap/shardmap/maps" || strings.Join(got[1].Metrics, ",") != "1.5 p50-ms,3 p99-ms" {
		t.Errorf("second = %+v", got[1])
	}
}

func TestReplaceHeadline(t *testing.T) {
	readme := []byte("a\n" + headlineBegin + "\nold\n" + headlineEnd + "\nb\n")
	got, ok := replaceHeadline(readme, "new")
	if !ok || string(got) != "a\n"+headlineBegin+"\nnew\n"+headlineEnd+"\nb\n" {
		t.Errorf("replaceHeadline = %q, %v", got, ok)
	}
	if _, ok := replaceHeadline([]byte("no markers"), "new"); ok {
		t.Error("replaceHeadline without markers reported ok")
	}
}

// The load generator counts answers from the wrong backend and parses
// keep-alive responses (a fake frontend answers x-shard: shard0 always).
func TestLoadCountsWrongBackends(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(ShardHeader, "shard0")
		w.Write([]byte("shard0"))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	keys := usersKeys{n: 100, shards: shardNames} // half of them want shard1
	res, err := Load(context.Background(), addr, 2, 200*time.Millisecond, keys, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.Errors != 0 {
		t.Fatalf("requests %d, errors %d (%s)", res.Requests, res.Errors, res.FirstErr)
	}
	if res.Wrong == 0 || res.Wrong == res.Requests {
		t.Errorf("wrong %d of %d: want about half counted", res.Wrong, res.Requests)
	}
	res, err = Load(context.Background(), addr, 2, 100*time.Millisecond, fixedKeys{keys, "shard0"}, true)
	if err != nil || res.Wrong != 0 {
		t.Errorf("all to shard0: wrong %d, err %v", res.Wrong, err)
	}
}

// An import whose last user never went live is not reported as live in 0 ms.
func TestImportNeverLiveIsAMiss(t *testing.T) {
	res := &results{bulk: &bulkResult{ImportN: 1000, ImportTook: time.Second}, failure: "the syncer exited"}
	rep, _ := buildReport(DefaultOptions(), res, nil)
	md := string(WriteMarkdown(rep))
	for _, want := range []string{"| import of 1,000 users: last live after | <= 1500 ms | never (see Failure) | no | not live |", "the last one was never routed", "## Failure: the run stopped early"} {
		if !strings.Contains(md, want) {
			t.Errorf("doc lacks %q", want)
		}
	}
}

func TestListMaps(t *testing.T) {
	for v, want := range map[string]bool{
		"HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/": true,
		"HAProxy version 2.8.0 2023/05/31":                                   true,
		"HAProxy version 2.9.1 2023/12/15":                                   false,
		"HAProxy version 3.0.11-1+deb13u4 2026/10/15 - https://haproxy.org/": false,
		"unreadable": true,
	} {
		if got := listMaps(v); got != want {
			t.Errorf("listMaps(%q) = %v, want %v", v, got, want)
		}
	}
}

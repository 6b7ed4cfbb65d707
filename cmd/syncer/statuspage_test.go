package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/syncer"
)

// stubSyncer stands for the running syncer: the page and the health checks
// read only its Status and ShardCounts.
type stubSyncer struct {
	mu     sync.Mutex
	st     syncer.Status
	counts map[string]int
}

func (s *stubSyncer) Status() syncer.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}
func (s *stubSyncer) ShardCounts() map[string]int { return s.counts }

// newTestServer serves the syncer's handler over a real Redis holding a few
// changes.
func newTestServer(t *testing.T) (*httptest.Server, *stubSyncer, *testenv.Redis, string) {
	t.Helper()
	r := testenv.StartRedis(t)
	store := maps.NewStore(r.Client(t), "")
	ctx := context.Background()
	var last string
	for _, a := range []maps.Assignment{{User: "alice", Shard: "shard0"}, {User: "bob", Shard: "shard1"}, {User: "carol", Shard: "shard0"}} {
		id, err := store.Set(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		last = id
	}
	first, _, _ := store.RecentChanges(ctx, 3)
	s := &stubSyncer{
		st: syncer.Status{Ready: true, State: "ready", Applied: first[2].ID, Entries: 3, FileWritten: time.Now(),
			Targets: []syncer.TargetStatus{{Address: "/run/haproxy/admin.sock", Ready: true, State: "ready", Applied: first[2].ID, Entries: 3}}},
		counts: map[string]int{"shard0": 2, "shard1": 1},
	}
	reg := prometheus.NewRegistry()
	if _, err := syncer.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if err := registerCollectors(reg, s, "/etc/haproxy/users.map"); err != nil {
		t.Fatal(err)
	}
	page := &statusPage{name: "lb1", mapPath: "/etc/haproxy/users.map", targets: []string{"/run/haproxy/admin.sock"}, s: s, log: store,
		logger: slog.New(slog.NewTextHandler(io.Discard, nil)), build: cli.ReadBuild()}
	srv := httptest.NewServer(handler(s, reg, page))
	t.Cleanup(srv.Close)
	return srv, s, r, last
}

func get(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

// The JSON of /healthz and /readyz is a contract: these snake_case names,
// no others (problem only when set).
func TestHealthJSONFieldNames(t *testing.T) {
	srv, s, _, _ := newTestServer(t)
	want := []string{"ready", "standby", "state", "log_id", "entries", "full_syncs", "swaps", "refused", "drift", "changes",
		"bad_skipped", "haproxy_pid", "drift_checks", "drift_live_took_ns", "drift_round_took_ns", "file_written", "targets"}
	snake := regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	check := func(path string, wantCode int, extra ...string) {
		t.Helper()
		code, h, body := get(t, srv.URL+path)
		if code != wantCode || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
			t.Fatalf("%s: %d %s, want %d JSON", path, code, h.Get("Content-Type"), wantCode)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("%s: %v: %s", path, err, body)
		}
		var got []string
		for k := range m {
			got = append(got, k)
			if !snake.MatchString(k) {
				t.Errorf("%s: field %q is not snake_case", path, k)
			}
		}
		exp := append(slices.Clone(want), extra...)
		slices.Sort(got)
		slices.Sort(exp)
		if !slices.Equal(got, exp) {
			t.Fatalf("%s fields:\n got %v\nwant %v", path, got, exp)
		}
	}
	check("/healthz", 200)
	check("/readyz", 200)
	s.mu.Lock()
	s.st.Ready, s.st.State, s.st.Problem = false, "haproxy", "haproxy: connection refused"
	s.mu.Unlock()
	check("/healthz", 200, "problem")
	check("/readyz", 503, "problem")
}

func TestStatusPage(t *testing.T) {
	srv, _, r, last := newTestServer(t)
	code, h, body := get(t, srv.URL+"/")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") {
		t.Fatalf("/: %d %s", code, h.Get("Content-Type"))
	}
	for _, want := range []string{
		`<meta http-equiv="refresh" content="5">`,
		`/run/haproxy/admin.sock`, // the target
		`lb1`, `/etc/haproxy/users.map`,
		`<svg id="shards"`, `class="shard">shard0</text>`, `class="shard">shard1</text>`,
		`<code>` + last + `</code>`, `<td>carol</td>`, // the newest change
		`2 entries, oldest waiting`, // applied the first of three
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// shard0 has twice shard1's users: its bar is the longest.
	if !strings.Contains(body, `width="420"`) || !strings.Contains(body, `width="210"`) {
		t.Errorf("bars not scaled to the largest shard (420 and 210 wide):\n%s", body)
	}
	for _, banned := range []string{"<script", "<link", " src=", "@import"} {
		if strings.Contains(body, banned) {
			t.Errorf("page has %q: it must need nothing outside itself", banned)
		}
	}
	if code, _, _ := get(t, srv.URL+"/nope"); code != 404 {
		t.Errorf("/nope: %d, want 404", code)
	}

	// Redis away: the page still renders, and says so.
	r.Stop(t)
	code, _, body = get(t, srv.URL+"/")
	if code != 200 || !strings.Contains(body, "Cannot read the change log") || !strings.Contains(body, "shard0") {
		t.Fatalf("Redis away: %d, want 200 naming the failure and still showing the shards:\n%s", code, body)
	}
}

// The series operators may alert on keep their names; the build info and
// the Go and process collectors are served.
func TestMetricsEndpointNames(t *testing.T) {
	srv, _, _, _ := newTestServer(t)
	_, _, body := get(t, srv.URL+"/metrics")
	for _, name := range []string{
		`shardmap_syncer_ready{map="/etc/haproxy/users.map"} 1`, "shardmap_syncer_live_entries{", "shardmap_syncer_changes_applied_total{",
		"shardmap_syncer_full_syncs_total{", "shardmap_syncer_swaps_total{", "shardmap_syncer_standby{",
		"shardmap_syncer_refused_reconciles_total{", "shardmap_syncer_drift_corrected_total{", "shardmap_syncer_bad_entries_skipped_total{",
		"shardmap_syncer_haproxy_pid{", "shardmap_syncer_file_written_timestamp_seconds{",
		`shardmap_build_info{go_version="go`, "go_goroutines ", "process_cpu_seconds_total ",
	} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
}

// routing: ids: /readyz is ready only when both syncers are; the logical
// map syncer's status is under "logical", and the top level says which
// part of it fails.
func TestReadyzCoversTheLogicalSyncer(t *testing.T) {
	ready := syncer.Status{Ready: true, State: "ready"}
	main := &stubSyncer{st: ready}
	logical := &stubSyncer{st: syncer.Status{State: "haproxy", Problem: "haproxy: connection refused"}}
	srv := httptest.NewServer(handler(pair{main: main, logical: logical}, prometheus.NewRegistry(), http.NotFoundHandler()))
	t.Cleanup(srv.Close)
	var body struct {
		Ready   bool   `json:"ready"`
		State   string `json:"state"`
		Problem string `json:"problem"`
		Logical *struct {
			Ready bool   `json:"ready"`
			State string `json:"state"`
		} `json:"logical"`
	}
	read := func(wantCode int) {
		t.Helper()
		code, _, b := get(t, srv.URL+"/readyz")
		if code != wantCode {
			t.Fatalf("/readyz %d, want %d: %s", code, wantCode, b)
		}
		body.Logical = nil
		if err := json.Unmarshal([]byte(b), &body); err != nil || body.Logical == nil {
			t.Fatalf("/readyz: %v: %s", err, b)
		}
	}
	read(503)
	if body.Ready || body.State != "haproxy" || body.Problem != "logical map: haproxy: connection refused" || body.Logical.Ready {
		t.Errorf("logical syncer not ready: %+v %+v", body, *body.Logical)
	}
	logical.mu.Lock()
	logical.st = ready
	logical.mu.Unlock()
	read(200)
	if !body.Ready || !body.Logical.Ready {
		t.Errorf("both ready: %+v %+v", body, *body.Logical)
	}
}

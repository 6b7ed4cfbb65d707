package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
)

// rebalanceOut is what rebalance plan -o json prints.
type rebalanceOut struct {
	Mode    string `json:"mode"`
	Figure  string `json:"figure"`
	Measure string `json:"measure"`
	Moves   []struct {
		Subject, From, To string
		Weight            float64
	} `json:"moves"`
	Shards []struct {
		Shard string  `json:"shard"`
		Up    bool    `json:"up"`
		B     float64 `json:"before"`
		A     float64 `json:"after"`
	} `json:"shards"`
	MaxDeviationBefore float64 `json:"max_deviation_before"`
	MaxDeviationAfter  float64 `json:"max_deviation_after"`
	Stopped            string  `json:"stopped"`
}

func (s *stack) rebalancePlan(args ...string) rebalanceOut {
	s.t.Helper()
	out := s.mustMapctl(append([]string{"rebalance", "plan", "-o", "json"}, args...)...)
	var r rebalanceOut
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		s.t.Fatalf("rebalance plan: %v\n%s", err, out)
	}
	return r
}

func (r rebalanceOut) after() map[string]float64 {
	m := map[string]float64{}
	for _, sh := range r.Shards {
		m[sh.Shard] = sh.A
	}
	return m
}

// assign puts n users named prefix0.. on shard.
func (s *stack) assign(prefix, shard string, n int) []string {
	s.t.Helper()
	var as []maps.Assignment
	var names []string
	for i := 0; i < n; i++ {
		u := fmt.Sprintf("%s%d", prefix, i)
		as = append(as, maps.Assignment{User: u, Shard: shard})
		names = append(names, u)
	}
	if _, err := s.store.SetMany(context.Background(), as); err != nil {
		s.t.Fatal(err)
	}
	return names
}

// Users skewed onto one shard: the plan evens the count out exactly, moves
// each user once and only off the full shard, writes the moves in
// move --from-file's format, and changes nothing itself.
func TestRebalancePlanByUsers(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	s.assign("u", "shard1", 12)
	s.waitConverged(10 * time.Second)

	plan := filepath.Join(s.dir, "plan.txt")
	r := s.rebalancePlan("--socket", s.socket, "--write", plan)
	if r.Mode != "users" || r.Figure != "users" || r.Stopped != "even" {
		t.Errorf("plan: %+v", r)
	}
	want := map[string]float64{"shard0": 3, "shard1": 3, "shard2": 3, "shard3": 3}
	if got := r.after(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after %v, want %v", got, want)
	}
	if r.MaxDeviationBefore != 9 || r.MaxDeviationAfter != 0 {
		t.Errorf("max deviation %v -> %v, want 9 -> 0", r.MaxDeviationBefore, r.MaxDeviationAfter)
	}
	if len(r.Moves) != 9 {
		t.Fatalf("%d moves, want 9: %+v", len(r.Moves), r.Moves)
	}
	seen := map[string]bool{}
	var lines []string
	for _, m := range r.Moves {
		if m.From != "shard1" || m.To == "shard1" || seen[m.Subject] {
			t.Errorf("move %+v", m)
		}
		seen[m.Subject] = true
		lines = append(lines, m.Subject+" "+m.To)
	}
	b, err := os.ReadFile(plan)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if !strings.HasPrefix(l, "#") {
			got = append(got, l)
		}
	}
	if strings.Join(got, "\n") != strings.Join(lines, "\n") {
		t.Errorf("plan file:\n%s\nwant the moves:\n%s", b, strings.Join(lines, "\n"))
	}
	// A plan is a plan: Redis is unchanged.
	for u, sh := range s.redisMap() {
		if sh != "shard1" {
			t.Errorf("%s moved to %s by a plan", u, sh)
		}
	}
	// The table: a row per shard with its figure before and after, then
	// the moves.
	table := s.mustMapctl("rebalance", "plan", "--socket", s.socket)
	rows := map[string]string{}
	for _, l := range strings.Split(table, "\n") {
		if f := strings.Fields(l); len(f) >= 2 {
			rows[f[0]] = strings.Join(f[1:], " ")
		}
	}
	if rows["shard1"] != "yes 12 3" || rows["shard0"] != "yes 0 3" || !strings.Contains(table, "9 moves of users (stopped: even)") || rows[r.Moves[0].Subject] != "shard1 "+r.Moves[0].To+" 1" {
		t.Errorf("table:\n%s", table)
	}
	// --max-moves stops it; the figures still add up.
	r = s.rebalancePlan("--max-moves", "2")
	if len(r.Moves) != 2 || r.Stopped != "max-moves" || r.after()["shard1"] != 10 {
		t.Errorf("--max-moves 2: %+v", r)
	}
	// Bad input is exit 2, naming the flag.
	for _, args := range [][]string{{"--by", "bytes"}, {"--by", "load"}, {"--max-moves", "0"}, {"--shards", "a b"}} {
		if _, errs, code := s.mapctl(append([]string{"rebalance", "plan"}, args...)...); code != 2 || !strings.Contains(errs, strings.TrimPrefix(args[0], "--")) {
			t.Errorf("%v: exit %d: %s", args, code, errs)
		}
	}
}

// traffic sends n requests as each user, from 4 goroutines; a bounded
// loop on loopback.
func (s *stack) traffic(users []string, n int) {
	s.t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(users))
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				if _, err := s.route(u); err != nil {
					errs <- fmt.Errorf("%s: %w", u, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		s.t.Fatal(err)
	}
}

// Users spread evenly, traffic skewed onto one shard's users: by load, the
// plan spreads that shard's users over the others, and by users it sees
// nothing to do. One shard with no server up is never a destination.
func TestRebalancePlanByLoad(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	hot := s.assign("h", "shard1", 4)
	for _, sh := range []string{"shard0", "shard2", "shard3"} {
		s.assign(sh+"-u", sh, 4)
	}
	s.waitConverged(10 * time.Second)
	s.traffic(hot, 25) // 100 requests on shard1, none elsewhere

	r := s.rebalancePlan("--by", "load", "--sample", "0", "--socket", s.socket)
	if r.Figure != "requests since start" {
		t.Errorf("figure %q", r.Figure)
	}
	before := map[string]float64{}
	for _, sh := range r.Shards {
		before[sh.Shard] = sh.B
	}
	if before["shard1"] != 100 || before["shard0"] != 0 {
		t.Fatalf("before: %v, want 100 requests on shard1", before)
	}
	want := map[string]float64{"shard0": 25, "shard1": 25, "shard2": 25, "shard3": 25}
	if got := r.after(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after %v, want %v", got, want)
	}
	var moved []string
	for _, m := range r.Moves {
		if m.From != "shard1" || m.Weight != 25 {
			t.Errorf("move %+v", m)
		}
		moved = append(moved, m.Subject)
	}
	sort.Strings(moved)
	if strings.Join(moved, " ") != "h0 h1 h2" {
		t.Errorf("moved %v, want h0 h1 h2 (first names of shard1's users)", moved)
	}
	if r := s.rebalancePlan("--socket", s.socket); len(r.Moves) != 0 {
		t.Errorf("by users: %+v, want no move", r.Moves)
	}

	// A rate over a sample, with the traffic running during it.
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20000; i++ { // bounded, whatever happens to mapctl
			select {
			case <-done:
				return
			default:
			}
			s.route(hot[i%len(hot)])
		}
	}()
	r = s.rebalancePlan("--by", "load", "--sample", "1s", "--socket", s.socket)
	close(done)
	wg.Wait()
	if r.Figure != "requests per second" || len(r.Moves) != 3 || !(r.MaxDeviationAfter < r.MaxDeviationBefore/10) {
		t.Errorf("rate plan: %+v", r)
	}
	for _, m := range r.Moves {
		if m.From != "shard1" {
			t.Errorf("rate plan move %+v", m)
		}
	}

	// shard3 down: its only server set to maintenance. No move goes there.
	servers, err := s.rt.Servers(context.Background(), "shard3")
	if err != nil || len(servers) != 1 {
		t.Fatalf("shard3's servers: %+v, %v", servers, err)
	}
	if err := s.rt.SetServerState(context.Background(), "shard3", servers[0].Name, "maint"); err != nil {
		t.Fatal(err)
	}
	r = s.rebalancePlan("--by", "load", "--sample", "0", "--socket", s.socket)
	for _, sh := range r.Shards {
		if sh.Up != (sh.Shard != "shard3") {
			t.Errorf("%s up=%v", sh.Shard, sh.Up)
		}
	}
	if len(r.Moves) == 0 {
		t.Errorf("no move with shard3 down")
	}
	for _, m := range r.Moves {
		if m.To == "shard3" {
			t.Errorf("move to a shard with no server up: %+v", m)
		}
	}
}

// Routing: ids: whole logical shards move, each taken to hold an equal
// share of the IDs; the plan file names them logical:L.
func TestRebalancePlanLogicalShards(t *testing.T) {
	s := &stack{t: t, dir: t.TempDir()}
	s.redis = testenv.StartRedis(t)
	rdb := s.redis.Client(t)
	s.store = maps.NewStore(rdb, "")
	ctx := context.Background()
	if err := s.store.AddShards(ctx, []string{"shard0", "shard1", "shard2", maps.HoldShard}); err != nil {
		t.Fatal(err)
	}
	var as []maps.Assignment
	for l := 0; l < 8; l++ {
		sh := "shard0"
		if l >= 6 {
			sh = "shard1"
		}
		as = append(as, maps.Assignment{User: fmt.Sprint(l), Shard: sh})
	}
	if _, err := maps.NewStore(rdb, maps.LogicalPrefix("")).SetMany(ctx, as); err != nil {
		t.Fatal(err)
	}
	plan := filepath.Join(s.dir, "plan.txt")
	r := s.rebalancePlan("--write", plan)
	if r.Mode != "ids" || r.Figure != "logical shards" {
		t.Errorf("plan: %+v", r)
	}
	want := map[string]float64{"shard0": 3, "shard1": 3, "shard2": 2}
	if got := r.after(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after %v, want %v (the hold backend is no shard)", got, want)
	}
	b, err := os.ReadFile(plan)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if got := strings.Join(lines, "\n"); got != "logical:0 shard2\nlogical:1 shard2\nlogical:2 shard1" {
		t.Errorf("plan file moves:\n%s", got)
	}
}

// --apply runs the plan through the move procedure: each move's copy hook
// runs, the store ends even, HAProxy routes every moved user to its new
// shard, and a second plan has nothing left to do.
func TestRebalanceApply(t *testing.T) {
	s := newStack(t)
	s.startSyncer()
	s.assign("u", "shard1", 12)
	s.waitConverged(10 * time.Second)
	copied := filepath.Join(s.dir, "copied.txt")
	out := s.mustMapctl("rebalance", "plan", "--socket", s.socket, "-o", "json", "--apply", "--parallel", "3",
		"--copy-cmd", `echo "$SHARDMAP_USER $SHARDMAP_FROM $SHARDMAP_TO" >> `+copied)
	var r struct {
		rebalanceOut
		Applied []struct {
			Subject, To, ID, State, Error string
		} `json:"applied"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(r.Moves) != 9 || len(r.Applied) != 9 {
		t.Fatalf("%d moves, %d applied: %s", len(r.Moves), len(r.Applied), out)
	}
	want := map[string]string{}
	for i, a := range r.Applied {
		if a.State != "done" || a.ID == "" || a.Subject != r.Moves[i].Subject {
			t.Errorf("applied %+v for move %+v", a, r.Moves[i])
		}
		want[r.Moves[i].Subject+" shard1 "+r.Moves[i].To] = ""
	}
	b, err := os.ReadFile(copied)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		got[l] = ""
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("copy hook ran for:\n%s\nwant %v", b, want)
	}
	count := map[string]int{}
	for _, sh := range s.redisMap() {
		count[sh]++
	}
	if fmt.Sprint(count) != "map[shard0:3 shard1:3 shard2:3 shard3:3]" {
		t.Errorf("store after --apply: %v", count)
	}
	s.waitConverged(10 * time.Second)
	for _, m := range r.Moves {
		s.mustRoute(m.Subject, m.To)
	}
	if again := s.rebalancePlan("--socket", s.socket); len(again.Moves) != 0 {
		t.Errorf("a second plan still moves: %+v", again.Moves)
	}
	if _, errs, code := s.mapctl("rebalance", "plan", "--copy-cmd", "true"); code != 2 || !strings.Contains(errs, "--copy-cmd goes with --apply") {
		t.Errorf("--copy-cmd without --apply: exit %d: %s", code, errs)
	}
}

package rebalance

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/move"
)

// users makes n subjects named prefix0.. on shard.
func users(prefix, shard string, n int) []Subject {
	out := make([]Subject, n)
	for i := range out {
		out[i] = Subject{Name: fmt.Sprintf("%s%03d", prefix, i), Shard: shard}
	}
	return out
}

func up(names ...string) []Shard {
	out := make([]Shard, len(names))
	for i, n := range names {
		out[i] = Shard{Name: n, Up: true}
	}
	return out
}

func figures(p Plan) map[string][2]float64 {
	m := map[string][2]float64{}
	for _, s := range p.Shards {
		m[s.Name] = [2]float64{s.Before, s.After}
	}
	return m
}

// check asserts what must hold for every plan of in, whatever the input.
func check(t *testing.T, in Input, p Plan) {
	t.Helper()
	where := map[string]string{}
	for _, s := range in.Subjects {
		where[s.Name] = s.Shard
	}
	isUp := map[string]bool{}
	for _, s := range in.Shards {
		isUp[s.Name] = s.Up && s.Name != maps.HoldShard
	}
	seen := map[string]bool{}
	after := map[string]float64{}
	for _, s := range p.Shards {
		after[s.Name] = s.Before
		if s.Name == maps.HoldShard {
			t.Errorf("the hold backend is in the plan's shards")
		}
	}
	if len(p.Moves) > in.MaxMoves {
		t.Errorf("%d moves, max %d", len(p.Moves), in.MaxMoves)
	}
	for _, m := range p.Moves {
		if seen[m.Subject] {
			t.Errorf("%s moved twice", m.Subject)
		}
		seen[m.Subject] = true
		if where[m.Subject] != m.From {
			t.Errorf("%s moved from %s, but it is on %s", m.Subject, m.From, where[m.Subject])
		}
		if !isUp[m.To] || !isUp[m.From] {
			t.Errorf("move %+v touches a shard that is not up", m)
		}
		if m.To == maps.HoldShard || m.From == m.To || !(m.Weight > 0) {
			t.Errorf("bad move %+v", m)
		}
		after[m.From] -= m.Weight
		after[m.To] += m.Weight
	}
	for _, s := range p.Shards {
		if math.Abs(after[s.Name]-s.After) > 1e-6*math.Max(1, s.Before) {
			t.Errorf("%s: after %v, but the moves give %v", s.Name, s.After, after[s.Name])
		}
		if !s.Up && s.Before != s.After {
			t.Errorf("%s is down and its figure changed: %+v", s.Name, s)
		}
	}
	if p.MaxDeviationAfter > p.MaxDeviationBefore+1e-9 {
		t.Errorf("max deviation rose: %v -> %v", p.MaxDeviationBefore, p.MaxDeviationAfter)
	}
	// Stopped even: no single move of a subject not yet moved lowers the
	// sum of squared deviations (brute force).
	if p.Stopped == StopEven {
		weight := map[string]float64{}
		count := map[string]int{}
		for _, s := range in.Subjects {
			count[s.Shard]++
		}
		for _, s := range in.Shards {
			if in.Measure == ByUsers {
				weight[s.Name] = 1
			} else if count[s.Name] > 0 {
				weight[s.Name] = s.Load / float64(count[s.Name])
			}
		}
		for _, s := range in.Subjects {
			if seen[s.Name] || !isUp[s.Shard] {
				continue
			}
			w := weight[s.Shard]
			for _, d := range p.Shards {
				if d.Up && d.Name != s.Shard && w > 0 && w < after[s.Shard]-after[d.Name]-1e-6*math.Max(1, after[s.Shard]) {
					t.Fatalf("stopped %s, but moving %s (%v) from %s (%v) to %s (%v) improves", p.Stopped, s.Name, w, s.Shard, after[s.Shard], d.Name, after[d.Name])
				}
			}
		}
	}
}

func propose(t *testing.T, in Input) Plan {
	t.Helper()
	p, err := Propose(in)
	if err != nil {
		t.Fatal(err)
	}
	check(t, in, p)
	return p
}

func TestUsersSkewEvensOut(t *testing.T) {
	subs := append(users("a", "shard0", 10), users("c", "shard2", 2)...)
	p := propose(t, Input{Measure: ByUsers, Shards: up("shard0", "shard1", "shard2"), Subjects: subs, MaxMoves: 100})
	want := map[string][2]float64{"shard0": {10, 4}, "shard1": {0, 4}, "shard2": {2, 4}}
	if got := figures(p); !reflect.DeepEqual(got, want) {
		t.Errorf("figures %v, want %v", got, want)
	}
	if len(p.Moves) != 6 || p.Stopped != StopEven || p.Mean != 4 || p.MaxDeviationBefore != 6 || p.MaxDeviationAfter != 0 {
		t.Errorf("plan %+v", p)
	}
	// Smallest names first, from the fullest shard to the emptiest.
	if m := p.Moves[0]; m != (Move{Subject: "a000", From: "shard0", To: "shard1", Weight: 1}) {
		t.Errorf("first move %+v", m)
	}
}

func TestLoadSkewEvensOut(t *testing.T) {
	// shard0: 10 users carry 120 req/s (12 each); shard1: 5 users carry 0;
	// shard2: no user in the map, 30 req/s that cannot move.
	shards := []Shard{{Name: "shard0", Load: 120, Up: true}, {Name: "shard1", Load: 0, Up: true}, {Name: "shard2", Load: 30, Up: true}}
	subs := append(users("a", "shard0", 10), users("b", "shard1", 5)...)
	p := propose(t, Input{Measure: ByLoad, Shards: shards, Subjects: subs, MaxMoves: 100})
	got := figures(p)
	// Mean 50: shard0 gives 12 a move; 72 -> 48 to shard1, 1 to shard2 (42).
	if got["shard0"][1] > 60 || got["shard1"][1] < 40 || p.MaxDeviationAfter >= 12 {
		t.Errorf("figures %v, max deviation %v", got, p.MaxDeviationAfter)
	}
	for _, m := range p.Moves {
		if m.From != "shard0" || m.Weight != 12 {
			t.Errorf("move %+v: only shard0's users carry load", m)
		}
	}
}

func TestDegenerateInputs(t *testing.T) {
	for name, tc := range map[string]struct {
		in        Input
		moves     int
		wantAfter map[string]float64
	}{
		"one shard": {Input{Measure: ByUsers, Shards: up("shard0"), Subjects: users("u", "shard0", 5), MaxMoves: 10}, 0,
			map[string]float64{"shard0": 5}},
		"all users on one shard": {Input{Measure: ByUsers, Shards: up("s0", "s1", "s2", "s3"), Subjects: users("u", "s2", 100), MaxMoves: 1000}, 75,
			map[string]float64{"s0": 25, "s1": 25, "s2": 25, "s3": 25}},
		"a shard with no server up": {Input{Measure: ByUsers, Shards: []Shard{{Name: "s0", Up: true}, {Name: "s1", Up: false}, {Name: "s2", Up: true}}, Subjects: users("u", "s0", 8), MaxMoves: 100}, 4,
			map[string]float64{"s0": 4, "s1": 0, "s2": 4}},
		"users on a shard with no server up stay": {Input{Measure: ByUsers, Shards: []Shard{{Name: "s0", Up: false}, {Name: "s1", Up: true}}, Subjects: users("u", "s0", 8), MaxMoves: 100}, 0,
			map[string]float64{"s0": 8, "s1": 0}},
		"no shard up": {Input{Measure: ByLoad, Shards: []Shard{{Name: "s0", Load: 9}, {Name: "s1"}}, Subjects: users("u", "s0", 8), MaxMoves: 100}, 0,
			map[string]float64{"s0": 9, "s1": 0}},
		"all shards equal": {Input{Measure: ByUsers, Shards: up("s0", "s1", "s2"), Subjects: append(append(users("a", "s0", 3), users("b", "s1", 3)...), users("c", "s2", 3)...), MaxMoves: 100}, 0,
			map[string]float64{"s0": 3, "s1": 3, "s2": 3}},
		"empty store": {Input{Measure: ByUsers, Shards: up("s0", "s1"), MaxMoves: 100}, 0,
			map[string]float64{"s0": 0, "s1": 0}},
		"empty store, load on the default shard": {Input{Measure: ByLoad, Shards: []Shard{{Name: "s0", Load: 50, Up: true}, {Name: "s1", Up: true}}, MaxMoves: 100}, 0,
			map[string]float64{"s0": 50, "s1": 0}},
		"no shards": {Input{Measure: ByUsers, Subjects: users("u", "s0", 3), MaxMoves: 100}, 0,
			map[string]float64{}},
		"more shards than users": {Input{Measure: ByUsers, Shards: up("s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"), Subjects: users("u", "s0", 3), MaxMoves: 100}, 2,
			map[string]float64{"s0": 1, "s1": 1, "s2": 1, "s3": 0, "s4": 0, "s5": 0, "s6": 0, "s7": 0, "s8": 0, "s9": 0}},
		"hold backend is no shard": {Input{Measure: ByUsers, Shards: append(up("s0", "s1"), Shard{Name: maps.HoldShard, Up: true}), Subjects: append(users("u", "s0", 4), users("h", maps.HoldShard, 3)...), MaxMoves: 100}, 2,
			map[string]float64{"s0": 2, "s1": 2}},
		"one heavy user cannot split": {Input{Measure: ByLoad, Shards: []Shard{{Name: "s0", Load: 100, Up: true}, {Name: "s1", Up: true}}, Subjects: users("u", "s0", 1), MaxMoves: 100}, 0,
			map[string]float64{"s0": 100, "s1": 0}},
	} {
		t.Run(name, func(t *testing.T) {
			p := propose(t, tc.in)
			if len(p.Moves) != tc.moves {
				t.Errorf("%d moves, want %d: %+v", len(p.Moves), tc.moves, p.Moves)
			}
			got := map[string]float64{}
			for _, s := range p.Shards {
				got[s.Name] = s.After
			}
			if !reflect.DeepEqual(got, tc.wantAfter) {
				t.Errorf("after %v, want %v", got, tc.wantAfter)
			}
			if p.Stopped != StopEven {
				t.Errorf("stopped %s", p.Stopped)
			}
		})
	}
}

func TestHoldSubjectsAreIgnored(t *testing.T) {
	p := propose(t, Input{Measure: ByUsers, Shards: up("s0", "s1"), Subjects: append(users("h", maps.HoldShard, 3), Subject{Name: "x", Shard: "gone"}), MaxMoves: 10})
	if p.Ignored != 4 || len(p.Moves) != 0 {
		t.Errorf("plan %+v", p)
	}
}

func TestStopsAtMaxMoves(t *testing.T) {
	p := propose(t, Input{Measure: ByUsers, Shards: up("s0", "s1"), Subjects: users("u", "s0", 100), MaxMoves: 7})
	if len(p.Moves) != 7 || p.Stopped != StopMaxMoves || figures(p)["s0"][1] != 93 {
		t.Errorf("plan: %d moves, stopped %s, %v", len(p.Moves), p.Stopped, figures(p))
	}
	// Exactly the moves needed: the limit is not what stopped it.
	p = propose(t, Input{Measure: ByUsers, Shards: up("s0", "s1"), Subjects: users("u", "s0", 14), MaxMoves: 7})
	if len(p.Moves) != 7 || p.Stopped != StopEven {
		t.Errorf("plan: %d moves, stopped %s", len(p.Moves), p.Stopped)
	}
}

func TestBadInputIsErrInput(t *testing.T) {
	for name, in := range map[string]Input{
		"no measure":      {Shards: up("s0"), MaxMoves: 1},
		"max moves 0":     {Measure: ByUsers, Shards: up("s0"), MaxMoves: 0},
		"duplicate shard": {Measure: ByUsers, Shards: up("s0", "s0"), MaxMoves: 1},
		"unnamed shard":   {Measure: ByUsers, Shards: up(""), MaxMoves: 1},
		"negative load":   {Measure: ByLoad, Shards: []Shard{{Name: "s0", Load: -1}}, MaxMoves: 1},
		"NaN load":        {Measure: ByLoad, Shards: []Shard{{Name: "s0", Load: math.NaN()}}, MaxMoves: 1},
		"infinite load":   {Measure: ByLoad, Shards: []Shard{{Name: "s0", Load: math.Inf(1)}}, MaxMoves: 1},
		"same user twice": {Measure: ByUsers, Shards: up("s0", "s1"), Subjects: []Subject{{"u", "s0"}, {"u", "s1"}}, MaxMoves: 1},
		"unnamed user":    {Measure: ByUsers, Shards: up("s0"), Subjects: []Subject{{"", "s0"}}, MaxMoves: 1},
	} {
		if p, err := Propose(in); !errors.Is(err, ErrInput) {
			t.Errorf("%s: %+v, %v; want ErrInput", name, p, err)
		}
	}
}

// randomInput is a random skew: up to 8 shards, some down, up to 300
// subjects, loads up to 1000.
func randomInput(r *rand.Rand) Input {
	in := Input{Measure: ByUsers, MaxMoves: 1 + r.IntN(400)}
	if r.IntN(2) == 0 {
		in.Measure = ByLoad
	}
	n := 1 + r.IntN(8)
	for i := 0; i < n; i++ {
		in.Shards = append(in.Shards, Shard{Name: fmt.Sprintf("s%d", i), Up: r.IntN(5) > 0, Load: float64(r.IntN(1000)) * r.Float64()})
	}
	if r.IntN(4) == 0 {
		in.Shards = append(in.Shards, Shard{Name: maps.HoldShard, Up: true})
	}
	skew := r.IntN(n)
	for i, k := 0, r.IntN(300); i < k; i++ {
		sh := fmt.Sprintf("s%d", r.IntN(n))
		if r.IntN(2) == 0 {
			sh = fmt.Sprintf("s%d", skew)
		}
		if r.IntN(30) == 0 {
			sh = maps.HoldShard
		}
		in.Subjects = append(in.Subjects, Subject{Name: fmt.Sprintf("u%d", i), Shard: sh})
	}
	return in
}

// On random skews: every property check holds, and the plan does not
// depend on the order of the input.
func TestRandomSkewsKeepTheRules(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 500; i++ {
		in := randomInput(r)
		p := propose(t, in)
		shuffled := in
		shuffled.Shards = append([]Shard(nil), in.Shards...)
		shuffled.Subjects = append([]Subject(nil), in.Subjects...)
		r.Shuffle(len(shuffled.Shards), func(a, b int) { shuffled.Shards[a], shuffled.Shards[b] = shuffled.Shards[b], shuffled.Shards[a] })
		r.Shuffle(len(shuffled.Subjects), func(a, b int) {
			shuffled.Subjects[a], shuffled.Subjects[b] = shuffled.Subjects[b], shuffled.Subjects[a]
		})
		if p2 := propose(t, shuffled); !reflect.DeepEqual(p, p2) {
			t.Fatalf("input order changed the plan:\n%+v\n%+v", p, p2)
		}
		if t.Failed() {
			t.Fatalf("input %d: %+v", i, in)
		}
	}
}

func TestPlanLines(t *testing.T) {
	p := Plan{Moves: []Move{{Subject: "alice", From: "s0", To: "s1"}, {Subject: "7", From: "s0", To: "s2"}}}
	for _, logical := range []bool{false, true} {
		var b strings.Builder
		if err := move.WritePlan(&b, "by users\n", p.PlanLines(logical)); err != nil {
			t.Fatal(err)
		}
		want := "# by users\nalice s1\n7 s2\n"
		if logical {
			want = "# by users\nlogical:alice s1\nlogical:7 s2\n"
		}
		if got := b.String(); got != want {
			t.Errorf("logical=%v: got %q, want %q", logical, got, want)
		}
	}
}

// Many users on one shard: the search costs per move what was moved, not
// the shard's size (a full pass per move would take minutes here).
func TestLargeShardIsQuick(t *testing.T) {
	subs := users("u", "s0", 200000)
	p := propose(t, Input{Measure: ByUsers, Shards: up("s0", "s1"), Subjects: subs, MaxMoves: 20000})
	if len(p.Moves) != 20000 {
		t.Errorf("%d moves", len(p.Moves))
	}
}

// Half of one shard's users move: the search skips the users already moved
// in amortised constant time. It used to walk past every one of them on
// each pick, so that 500,000 moves among 1M users took hours (a quadratic
// count of candidates looked at).
func TestPickCostDoesNotGrowWithTheMovesMade(t *testing.T) {
	in := Input{Measure: ByUsers, Shards: up("s0", "s1"), Subjects: users("u", "s0", 20000), MaxMoves: 20000}
	probes := 0
	p, err := proposeCounting(in, &probes)
	if err != nil {
		t.Fatal(err)
	}
	check(t, in, p)
	if len(p.Moves) != 10000 {
		t.Fatalf("%d moves, want 10000", len(p.Moves))
	}
	if probes > 4*len(p.Moves) {
		t.Errorf("%d candidates looked at for %d moves: the search walks past the moved ones", probes, len(p.Moves))
	}
}

// Loads that are each finite but whose sum is not (the Go API takes any
// finite load): the mean and deviations stay finite, so the plan encodes
// as JSON (which refuses +Inf and NaN).
func TestHugeFiniteLoadsGiveFiniteFigures(t *testing.T) {
	in := Input{Measure: ByLoad, Shards: []Shard{{Name: "a", Load: 1.7e308, Up: true}, {Name: "b", Load: 1.7e308, Up: true}, {Name: "c", Up: true}},
		Subjects: users("u", "a", 10), MaxMoves: 10}
	p := propose(t, in)
	for name, v := range map[string]float64{"mean": p.Mean, "max deviation before": p.MaxDeviationBefore, "max deviation after": p.MaxDeviationAfter} {
		if math.IsInf(v, 0) || math.IsNaN(v) {
			t.Errorf("%s is %v", name, v)
		}
	}
	if _, err := json.Marshal(p); err != nil {
		t.Errorf("the plan does not encode: %v", err)
	}
}

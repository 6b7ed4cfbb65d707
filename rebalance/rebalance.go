// Package rebalance proposes moves that even out shards. The planner,
// Propose, is pure, with no I/O: its caller reads the shards' figures (users
// counted in the store, or load read from HAProxy's "show stat": SampleLoad
// reads it, ShardsFromStats turns it into shards) and the subjects that may
// move (users, or the logical shards of routing: ids), and gets back the
// moves and the expected figure per shard before and after them.
//
// The algorithm (docs/REBALANCE.md has the long form): each step moves one
// subject from a fuller shard to an emptier one, choosing the pair of shards
// furthest apart that has a subject whose move lowers the sum of squared
// deviations from the mean (a subject of weight w moved from a shard at a to
// one at b < a does so exactly when 0 < w < a-b; among those it picks the
// weight nearest (a-b)/2, then the first name). Both shards end inside
// [b, a], so the highest figure never rises and the lowest never falls. It
// stops at MaxMoves, or when no move lowers the sum: each step lowers it, so
// it cannot oscillate, and no subject moves twice.
package rebalance

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/move"
)

// Measure is the figure the planner evens out.
type Measure string

// The two measures.
const (
	// ByUsers counts subjects: each one weighs 1, a shard's figure is how
	// many subjects it has (Shard.Load is not used).
	ByUsers Measure = "users"
	// ByLoad takes each shard's Load as its figure and attributes it evenly
	// to the subjects on the shard: each weighs Load / (subjects on it).
	// Load on a shard with no subjects (traffic of users not in the map,
	// routed to the default shard) cannot move.
	ByLoad Measure = "load"
)

// ErrInput is wrapped by every error about the planner's input.
var ErrInput = errors.New("invalid rebalance input")

// Shard is one shard (an HAProxy backend) as the planner sees it.
type Shard struct {
	Name string
	// Load is the measured figure of the shard for ByLoad (requests per
	// second, or sessions): finite and >= 0.
	Load float64
	// Up is whether the shard has a server up. A shard that is not up is
	// neither a source nor a destination of a move (its data cannot be
	// copied and it serves nothing): its figure stays as it is and it is
	// left out of the mean and the spread.
	Up bool
}

// Subject is what moves: a user, or a logical shard in routing: ids.
type Subject struct {
	Name  string
	Shard string // where it is now
}

// Input is what the planner works on.
type Input struct {
	Measure Measure
	// Shards to even out. The hold backend (maps.HoldShard) is never a
	// shard: it is dropped from here, and subjects on it are not moved.
	Shards []Shard
	// Subjects that may move. A subject on a shard not in Shards (or on the
	// hold backend) is counted in Plan.Ignored and never moved.
	Subjects []Subject
	// MaxMoves bounds the moves proposed; it must be at least 1.
	MaxMoves int
}

// Move is one proposed move.
type Move struct {
	Subject string  `json:"subject"`
	From    string  `json:"from"`
	To      string  `json:"to"`
	Weight  float64 `json:"weight"` // the figure it carries from From to To
}

// ShardFigure is one shard's expected figure before and after the moves.
type ShardFigure struct {
	Name           string  `json:"shard"`
	Up             bool    `json:"up"`
	Before         float64 `json:"before"`
	After          float64 `json:"after"`
	SubjectsBefore int     `json:"subjects_before"`
	SubjectsAfter  int     `json:"subjects_after"`
}

// Why the planner stopped.
const (
	StopEven     = "even"      // no single move lowers the spread any more
	StopMaxMoves = "max-moves" // MaxMoves reached
)

// Plan is the planner's proposal.
type Plan struct {
	Measure Measure       `json:"measure"`
	Moves   []Move        `json:"moves"`
	Shards  []ShardFigure `json:"shards"` // in name order, the hold backend left out
	// Mean is the mean figure of the shards that are up (moves keep it).
	Mean float64 `json:"mean"`
	// MaxDeviationBefore and After: the largest |figure - Mean| over the
	// shards that are up; After <= Before always.
	MaxDeviationBefore float64 `json:"max_deviation_before"`
	MaxDeviationAfter  float64 `json:"max_deviation_after"`
	Stopped            string  `json:"stopped"` // StopEven or StopMaxMoves
	// Ignored counts subjects on the hold backend or on a shard not in the
	// input: they are neither counted nor moved.
	Ignored int `json:"ignored"`
}

// shardState is a shard during planning.
type shardState struct {
	ShardFigure
	cands  []int     // subject indexes on it at the start, by (weight, name)
	weight []float64 // weights of cands, same order
	// next and prev skip the candidates already moved (disjoint sets with
	// path halving): next[k] leads to the first free candidate >= k
	// (len(cands) if none), prev[k+1] to the last free one <= k, plus one
	// (0 if none). So each pick costs about a binary search, however many
	// of the shard's subjects have moved.
	next, prev []int
	probes     *int // counts the candidates looked at, when not nil
}

// take marks candidate k moved.
func (st *shardState) take(k int) {
	st.next[k] = k + 1
	st.prev[k+1] = k
}

// firstFree returns the first free candidate >= k, or len(cands).
func (st *shardState) firstFree(k int) int {
	for st.next[k] != k {
		st.next[k] = st.next[st.next[k]]
		k = st.next[k]
		if st.probes != nil {
			*st.probes++
		}
	}
	return k
}

// lastFree returns the last free candidate <= k, or -1.
func (st *shardState) lastFree(k int) int {
	i := k + 1
	for st.prev[i] != i {
		st.prev[i] = st.prev[st.prev[i]]
		i = st.prev[i]
		if st.probes != nil {
			*st.probes++
		}
	}
	return i - 1
}

// Propose plans the moves that even out in's shards. It is deterministic:
// the same input, in any order, gives the same plan. An error (wrapping
// ErrInput) names a bad input: a duplicate or empty shard or subject name, a
// Load that is negative, NaN or infinite, an unknown Measure or MaxMoves < 1.
func Propose(in Input) (Plan, error) {
	return proposeCounting(in, nil)
}

// proposeCounting is Propose; when probes is not nil it counts the candidates
// pick looked at (tests bound the search's cost with it).
func proposeCounting(in Input, probes *int) (Plan, error) {
	if in.Measure != ByUsers && in.Measure != ByLoad {
		return Plan{}, fmt.Errorf("%w: measure %q: want %s or %s", ErrInput, in.Measure, ByUsers, ByLoad)
	}
	if in.MaxMoves < 1 {
		return Plan{}, fmt.Errorf("%w: max moves %d: want at least 1", ErrInput, in.MaxMoves)
	}
	shards := make([]*shardState, 0, len(in.Shards))
	byName := make(map[string]*shardState, len(in.Shards))
	for _, s := range in.Shards {
		switch {
		case s.Name == "":
			return Plan{}, fmt.Errorf("%w: a shard with no name", ErrInput)
		case byName[s.Name] != nil:
			return Plan{}, fmt.Errorf("%w: shard %q given twice", ErrInput, s.Name)
		case math.IsNaN(s.Load) || math.IsInf(s.Load, 0) || s.Load < 0:
			return Plan{}, fmt.Errorf("%w: shard %q: load %v: want a finite number >= 0", ErrInput, s.Name, s.Load)
		case s.Name == maps.HoldShard:
			continue
		}
		st := &shardState{ShardFigure: ShardFigure{Name: s.Name, Up: s.Up}}
		if in.Measure == ByLoad {
			st.Before = s.Load
		}
		shards = append(shards, st)
		byName[s.Name] = st
	}
	sort.Slice(shards, func(i, j int) bool { return shards[i].Name < shards[j].Name })

	subjects := slices.Clone(in.Subjects)
	sort.Slice(subjects, func(i, j int) bool { return subjects[i].Name < subjects[j].Name })
	plan := Plan{Measure: in.Measure, Moves: []Move{}, Stopped: StopEven}
	for i, s := range subjects {
		if s.Name == "" {
			return Plan{}, fmt.Errorf("%w: a subject with no name (on shard %q)", ErrInput, s.Shard)
		}
		if i > 0 && subjects[i-1].Name == s.Name {
			return Plan{}, fmt.Errorf("%w: subject %q given twice", ErrInput, s.Name)
		}
		st := byName[s.Shard]
		if st == nil {
			plan.Ignored++
			continue
		}
		st.SubjectsBefore++
		st.cands = append(st.cands, i)
	}
	for _, st := range shards {
		w := 1.0
		if in.Measure == ByUsers {
			st.Before = float64(st.SubjectsBefore)
		} else if st.SubjectsBefore > 0 {
			w = st.Before / float64(st.SubjectsBefore)
		}
		// Every subject of a shard weighs the same today, so name order is
		// (weight, name) order; weight is kept per subject so that better
		// per-subject data can be fed in later without changing the search.
		st.weight = make([]float64, len(st.cands))
		for k := range st.weight {
			st.weight[k] = w
		}
		st.next = make([]int, len(st.cands)+1)
		st.prev = make([]int, len(st.cands)+1)
		for k := range st.next {
			st.next[k], st.prev[k] = k, k
		}
		st.probes = probes
		st.After, st.SubjectsAfter = st.Before, st.SubjectsBefore
	}

	var up []*shardState
	for _, st := range shards {
		if st.Up {
			up = append(up, st)
		}
	}
	for _, st := range up {
		// Each term divided first: finite loads whose sum is not still
		// have a finite mean.
		plan.Mean += st.Before / float64(len(up))
	}
	plan.MaxDeviationBefore = maxDeviation(up, plan.Mean)

	for {
		m, ok := bestMove(up)
		if !ok {
			break
		}
		if len(plan.Moves) == in.MaxMoves {
			plan.Stopped = StopMaxMoves
			break
		}
		m.from.take(m.k)
		m.from.After -= m.w
		m.from.SubjectsAfter--
		m.to.After += m.w
		m.to.SubjectsAfter++
		plan.Moves = append(plan.Moves, Move{Subject: subjects[m.idx].Name, From: m.from.Name, To: m.to.Name, Weight: m.w})
	}
	plan.MaxDeviationAfter = maxDeviation(up, plan.Mean)
	for _, st := range shards {
		plan.Shards = append(plan.Shards, st.ShardFigure)
	}
	return plan, nil
}

type step struct {
	idx, k   int
	w        float64
	from, to *shardState
}

// bestMove finds the next move: sources from the highest figure down,
// destinations from the lowest up (ties by name), the first pair with a
// subject whose move lowers the sum of squared deviations.
func bestMove(up []*shardState) (step, bool) {
	src := slices.Clone(up)
	sort.SliceStable(src, func(i, j int) bool {
		if src[i].After != src[j].After {
			return src[i].After > src[j].After
		}
		return src[i].Name < src[j].Name
	})
	dst := slices.Clone(up)
	sort.SliceStable(dst, func(i, j int) bool {
		if dst[i].After != dst[j].After {
			return dst[i].After < dst[j].After
		}
		return dst[i].Name < dst[j].Name
	})
	for _, from := range src {
		for _, to := range dst {
			gap := from.After - to.After
			if !(gap > 0) {
				break // every later destination is at least as high
			}
			if k, ok := pick(from, gap); ok {
				return step{idx: from.cands[k], k: k, w: from.weight[k], from: from, to: to}, true
			}
		}
	}
	return step{}, false
}

// pick returns the candidate of src not yet moved whose weight is nearest
// gap/2 among those with 0 < weight < gap (less a rounding margin); among
// equal weights, the first name. Moved candidates are skipped in amortised
// constant time (firstFree, lastFree), so its cost is about a binary search.
func pick(src *shardState, gap float64) (int, bool) {
	limit := gap - 1e-9*math.Max(1, gap)
	half := gap / 2
	w := src.weight
	valid := func(k int) bool { return w[k] > 0 && w[k] < limit }
	best, bestDist := -1, math.Inf(1)
	mid := sort.SearchFloat64s(w, half)
	// At or above half: the first free candidate from the first weight >= half.
	if k := src.firstFree(mid); k < len(w) && valid(k) {
		best, bestDist = k, w[k]-half
	}
	// Below half: the highest free weight, then the first free candidate of
	// that weight.
	if k := src.lastFree(mid - 1); k >= 0 && valid(k) && half-w[k] < bestDist {
		best = src.firstFree(sort.SearchFloat64s(w, w[k]))
	}
	return best, best >= 0
}

func maxDeviation(up []*shardState, mean float64) float64 {
	d := 0.0
	for _, st := range up {
		d = math.Max(d, math.Abs(st.After-mean))
	}
	return d
}

// PlanLines returns the moves, in the plan's order, as lines of the plan
// file (move.WritePlan writes them, mapctl move --from-file runs them):
// users' moves, or logical shards' when logical is true.
func (p Plan) PlanLines(logical bool) []move.PlanLine {
	kind := move.KindUser
	if logical {
		kind = move.KindLogical
	}
	out := make([]move.PlanLine, len(p.Moves))
	for i, m := range p.Moves {
		out[i] = move.PlanLine{Kind: kind, Subject: m.Subject, To: m.To}
	}
	return out
}

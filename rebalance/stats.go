package rebalance

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// LoadFigure is the HAProxy figure that ByLoad evens out.
type LoadFigure string

// The load figures.
const (
	// Requests: requests per second over a reading's Elapsed window (the
	// difference of req_tot; of stot, sessions, for a backend without HTTP
	// requests, in tcp mode). HAProxy 2.6 and 3.0 have no per-backend
	// request rate of their own. With Elapsed 0, the totals since HAProxy
	// started or its counters were cleared.
	Requests LoadFigure = "requests"
	// Sessions: the current sessions (scur) at the second reading.
	Sessions LoadFigure = "sessions"
)

// ErrCountersReset means a total went down between the two reads of a
// reading: HAProxy restarted or its counters were cleared. Read again.
var ErrCountersReset = errors.New("HAProxy's counters went back between the two reads")

// Reading is one HAProxy's "show stat", read twice Elapsed apart (First is
// nil, and Elapsed 0, for a single read).
type Reading struct {
	Socket        string // for errors
	First, Second []runtime.BackendStat
	Elapsed       time.Duration
}

// ShardsFromStats builds the planner's shards named in names (the hold
// backend left out) from HAProxy's figures, summed over the readings (one
// per HAProxy in front of the same shards). A shard is up when every
// reading has it as a backend with a server up: a shard one HAProxy cannot
// reach is no destination. With no readings every shard is taken as up and
// its Load is 0 (users mode with no socket to ask).
func ShardsFromStats(names []string, figure LoadFigure, readings []Reading) ([]Shard, error) {
	if figure != Requests && figure != Sessions {
		return nil, fmt.Errorf("%w: load figure %q: want %s or %s", ErrInput, figure, Requests, Sessions)
	}
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	var out []Shard
	for i, name := range sorted {
		if name == maps.HoldShard || (i > 0 && sorted[i-1] == name) {
			continue
		}
		s := Shard{Name: name, Up: true}
		for _, r := range readings {
			second, ok := find(r.Second, name)
			if !ok || second.ServersUp < 1 {
				s.Up = false
			}
			if !ok {
				continue
			}
			load, err := r.load(name, figure, second)
			if err != nil {
				return nil, err
			}
			s.Load += load
		}
		out = append(out, s)
	}
	return out, nil
}

// load is one reading's figure for one backend.
func (r Reading) load(name string, figure LoadFigure, second runtime.BackendStat) (float64, error) {
	if figure == Sessions {
		return float64(second.Sessions), nil
	}
	total := func(b runtime.BackendStat) int64 {
		if b.HasRequests {
			return b.RequestsTotal
		}
		return b.SessionsTotal
	}
	if r.Elapsed <= 0 {
		return float64(total(second)), nil
	}
	first, ok := find(r.First, name)
	if !ok {
		return 0, nil // the backend appeared between the reads: no rate yet
	}
	d := total(second) - total(first)
	if d < 0 || first.HasRequests != second.HasRequests {
		return 0, fmt.Errorf("%s backend %s: %w (%d then %d)", r.Socket, name, ErrCountersReset, total(first), total(second))
	}
	return float64(d) / r.Elapsed.Seconds(), nil
}

func find(list []runtime.BackendStat, name string) (runtime.BackendStat, bool) {
	for _, b := range list {
		if b.Name == name {
			return b, true
		}
	}
	return runtime.BackendStat{}, false
}

package maps

import "fmt"

// Drift counts how a copy of the assignments (the live map, the map file)
// differs from the truth (Redis).
type Drift struct {
	Missing int // in the truth, not in the copy
	Extra   int // in the copy, not in the truth
	Changed int // in both, with another shard
}

// Total is the number of entries that differ.
func (d Drift) Total() int { return d.Missing + d.Extra + d.Changed }

// String says "in sync" or what differs.
func (d Drift) String() string {
	if d.Total() == 0 {
		return "in sync"
	}
	return fmt.Sprintf("DRIFT: %d missing, %d extra, %d with another shard", d.Missing, d.Extra, d.Changed)
}

// Diff compares a copy of user -> shard with the truth.
func Diff(truth, copy map[string]string) Drift {
	var d Drift
	for u, sh := range truth {
		if got, ok := copy[u]; !ok {
			d.Missing++
		} else if got != sh {
			d.Changed++
		}
	}
	for u := range copy {
		if _, ok := truth[u]; !ok {
			d.Extra++
		}
	}
	return d
}

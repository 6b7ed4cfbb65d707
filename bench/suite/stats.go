package suite

import (
	"math"
	"sort"
	"time"
)

// Percentile returns the p-th percentile (0 <= p <= 100) of ds by the
// nearest-rank method: the smallest value such that at least p% of the
// values are <= it. ds need not be sorted; it is not changed. Empty ds
// gives 0.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return sortedPercentile(s, p)
}

func sortedPercentile(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	p = math.Max(0, math.Min(100, p))
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	if rank < 1 {
		rank = 1
	}
	return s[rank-1]
}

// Median returns the median of xs (the mean of the two middle values for an
// even count); 0 for none. xs is not changed.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Latencies summarises a sample of durations.
type Latencies struct {
	N             int
	P50, P99, Max time.Duration
}

// Summarize returns the count, p50, p99 and max of ds.
func Summarize(ds []time.Duration) Latencies {
	if len(ds) == 0 {
		return Latencies{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return Latencies{N: len(s), P50: sortedPercentile(s, 50), P99: sortedPercentile(s, 99), Max: s[len(s)-1]}
}

// ms formats d in milliseconds with a precision that suits its size.
func ms(d time.Duration) string {
	f := float64(d) / float64(time.Millisecond)
	switch {
	case f < 1:
		return trimFloat(f, 3)
	case f < 100:
		return trimFloat(f, 1)
	}
	return trimFloat(f, 0)
}

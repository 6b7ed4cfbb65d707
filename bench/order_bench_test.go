package bench

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/runtime"
)

// The order of a swap's entries: HAProxy inserts each one into a tree of
// strings, and keys in order reuse the path the one before walked. A swap
// of 1M entries over a live map of 1M (every value changed), in key order
// and in random order (the order of a hash table), with HAProxy's CPU per
// swap (/proc/PID/stat). The syncer sends its swaps in key order.
func BenchmarkSwap1MOrder(b *testing.B) {
	const n = 1_000_000
	sorted := make([]runtime.Entry, n)
	for i := range sorted {
		sorted[i] = runtime.Entry{Key: fmt.Sprintf("user%d", i+1), Value: "shard0"}
	}
	slices.SortFunc(sorted, func(x, y runtime.Entry) int { return strings.Compare(x.Key, y.Key) })
	random := slices.Clone(sorted)
	rand.New(rand.NewPCG(1, 2)).Shuffle(n, func(i, j int) { random[i], random[j] = random[j], random[i] })
	for _, c := range []struct {
		name string
		es   []runtime.Entry
	}{{"sorted", sorted}, {"random", random}} {
		b.Run(c.name, func(b *testing.B) {
			r := newRig(b)
			ctx := context.Background()
			if err := r.rt.Replace(ctx, r.mapPath, sorted); err != nil {
				b.Fatal(err)
			}
			var cpu time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				for j := range c.es {
					c.es[j].Value = "shard" + strconv.Itoa((i+1)%2) // every value changes
				}
				cpu0 := cpuTime(b, r.haproxy.Pid())
				b.StartTimer()
				if err := r.rt.Replace(ctx, r.mapPath, c.es); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime(b, r.haproxy.Pid()) - cpu0
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N), "haproxy-cpu-s/op")
		})
	}
}

// cpuTime is the user and system CPU time process pid has used.
func cpuTime(b *testing.B, pid int) time.Duration {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// "pid (comm) state ...": utime and stime are the 12th and 13th fields
	// after the last ')', in USER_HZ (100) ticks.
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
	if len(f) < 13 {
		b.Fatalf("short stat of pid %d: %q", pid, st)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("bad stat of pid %d: %q", pid, st)
	}
	return time.Duration(u+s) * 10 * time.Millisecond
}

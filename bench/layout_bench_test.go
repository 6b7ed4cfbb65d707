package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/syncer"
)

// BenchmarkSetToLive1M: Store.Set of an existing user -> the change in
// HAProxy's live map, at 1M users, with the single map and with the
// delta+base layout (topology delta_map). On HAProxy 2.6 a set in the
// single map walks the whole map; in the delta layout it walks the delta.
//
//	go test -run '^$' -bench SetToLive1M -benchtime 200x ./bench/
func BenchmarkSetToLive1M(b *testing.B) {
	const n = 1_000_000
	for _, layout := range []string{"single", "delta"} {
		b.Run(layout, func(b *testing.B) {
			r := newRigWith(b, func(t *haproxy.Topology) { t.DeltaMap = layout == "delta" })
			ctx := context.Background()
			as := make([]maps.Assignment, n)
			for i := range as {
				as[i] = maps.Assignment{User: fmt.Sprintf("user%09d", i), Shard: "shard0"}
			}
			if _, err := r.store.Import(ctx, as, 10_000, nil); err != nil {
				b.Fatal(err)
			}
			s := r.runSyncer(b, syncer.Config{Name: "bench", MapName: r.mapPath, Targets: []string{r.socket}, DeltaMax: 50_000})
			testenv.WaitFor(b, 120*time.Second, "syncer ready", func() error {
				if st := s.Status(); !st.Ready || st.Entries != n {
					return fmt.Errorf("not ready")
				}
				return nil
			})
			if got := s.Status().Targets[0].Layout; (layout == "delta") != (got == "delta+base") {
				b.Logf("layout %s (HAProxy 2.9 and later keep the single map)", got)
			}
			setToLive(b, r, s, func(i int) maps.Assignment {
				return maps.Assignment{User: fmt.Sprintf("user%09d", (i*7919)%n), Shard: []string{"shard1", "shard0"}[(i*7919/n)%2]}
			})
			b.ReportMetric(float64(s.Status().Targets[0].Folds), "folds")
		})
	}
}

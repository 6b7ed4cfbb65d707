package maps

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

func TestZZProbeImport(t *testing.T) {
	batchN := 500
	fmt.Sscan(os.Getenv("PROBE"), &batchN)
	if os.Getenv("PROBE") == "" {
		t.Skip()
	}
	s, r := newTestStore(t)
	ctx := context.Background()
	as := make([]Assignment, 1_000_000)
	for i := range as {
		as[i] = Assignment{fmt.Sprintf("user%09d", i), fmt.Sprint("shard", i%2)}
	}
	rdb := r.Client(t)
	rdb.ConfigResetStat(ctx)
	t0 := time.Now()
	if _, err := s.Import(ctx, as, batchN, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("import 1M: %s", time.Since(t0))
	info, _ := rdb.Info(ctx, "commandstats").Result()
	t.Log(info)
	t0 = time.Now()
	for i := range as[:300000] {
		as[i].Shard = "spare"
	}
	if _, err := s.Import(ctx, as[:300000], 500, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("reassign 300k: %s", time.Since(t0))
}

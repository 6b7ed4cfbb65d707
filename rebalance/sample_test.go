package rebalance

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

// SampleLoad on two real HAProxies: one reading per socket, in order; with
// a sample, two reads at least sample apart; without, one.
func TestSampleLoadRealHAProxy(t *testing.T) {
	var sockets []string
	for range 2 {
		dir := t.TempDir()
		socket := filepath.Join(dir, "admin.sock")
		cfg := fmt.Sprintf(`global
  stats socket %s mode 600 level admin
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend fe
  bind 127.0.0.1:%d
  use_backend %%[req.cook(user)]
backend shard0
  http-request return status 200 content-type text/plain string shard0
backend shard1
  http-request return status 200 content-type text/plain string shard1
`, socket, testenv.FreePort(t))
		testenv.StartHAProxy(t, dir, cfg, socket)
		sockets = append(sockets, socket)
	}
	ctx := context.Background()
	once, err := SampleLoad(ctx, sockets, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(once) != 2 || once[0].Socket != sockets[0] || once[1].Socket != sockets[1] {
		t.Fatalf("readings %+v, want one per socket in order", once)
	}
	for _, r := range once {
		if r.First != nil || r.Elapsed != 0 || len(r.Second) < 2 {
			t.Errorf("single read %+v: want Second only", r)
		}
	}
	const sample = 50 * time.Millisecond
	twice, err := SampleLoad(ctx, sockets, sample)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range twice {
		if r.First == nil || r.Second == nil || r.Elapsed < sample {
			t.Errorf("sampled read %s: first %d, second %d backends, elapsed %s: want both, at least %s apart", r.Socket, len(r.First), len(r.Second), r.Elapsed, sample)
		}
	}
	gone := filepath.Join(t.TempDir(), "gone.sock")
	if _, err := SampleLoad(ctx, []string{sockets[0], gone}, 0); err == nil || !strings.Contains(err.Error(), gone) {
		t.Errorf("dead socket: %v, want an error naming it", err)
	}
	if _, err := SampleLoad(ctx, []string{"tcp@nowhere:x"}, 0); !errors.Is(err, ErrInput) {
		t.Errorf("bad address: %v, want ErrInput", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := SampleLoad(cctx, sockets, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v, want context.Canceled", err)
	}
}

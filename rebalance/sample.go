package rebalance

import (
	"context"
	"fmt"
	"time"

	"github.com/shardmap/shardmap/runtime"
)

// SampleLoad reads HAProxy's "show stat" on every socket (a Runtime API
// address, as runtime.New takes it), one Reading per socket in the same
// order, for ShardsFromStats. With sample > 0 it reads every socket twice:
// all the first reads, one wait of sample, all the second reads (Elapsed is
// the time between them, at least sample); with sample <= 0 it reads once
// (First nil, Elapsed 0). A socket address that cannot be one is an error
// wrapping ErrInput; a read that fails is an error naming the socket; ctx
// ending during the wait is an error wrapping ctx.Err(). Each read is
// bounded by ctx (10 s when ctx has no deadline).
func SampleLoad(ctx context.Context, sockets []string, sample time.Duration) ([]Reading, error) {
	clients := make([]*runtime.Client, len(sockets))
	for i, s := range sockets {
		c, err := runtime.New(s, 0)
		if err != nil {
			return nil, fmt.Errorf("%w: socket %q: %w", ErrInput, s, err)
		}
		defer c.Close()
		clients[i] = c
	}
	readings := make([]Reading, len(sockets))
	read := func(first bool) error {
		for i, c := range clients {
			list, err := c.BackendStats(ctx)
			if err != nil {
				return fmt.Errorf("show stat on %s: %w", sockets[i], err)
			}
			readings[i].Socket = sockets[i]
			if first {
				readings[i].First = list
			} else {
				readings[i].Second = list
			}
		}
		return nil
	}
	if sample > 0 {
		if err := read(true); err != nil {
			return nil, err
		}
		start := time.Now()
		t := time.NewTimer(sample)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("sampling HAProxy's load: %w", ctx.Err())
		}
		for i := range readings {
			readings[i].Elapsed = time.Since(start)
		}
	}
	if err := read(false); err != nil {
		return nil, err
	}
	return readings, nil
}

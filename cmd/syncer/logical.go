package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/syncer"
)

// health is the JSON of /healthz and /readyz: the syncer's status (its
// fields at the top level) and, in routing: ids, the logical map syncer's.
type health struct {
	syncer.Status
	Logical *syncer.Status `json:"logical,omitempty"`
}

// pair is the two syncers of routing: ids as the status page and the health
// checks read them: the moved map's (main) and the logical map's.
type pair struct{ main, logical statusSource }

// Status is main's status, except that it is ready only when both are; when
// main is ready and the logical syncer is not, State is the logical one's
// and Problem says it is the logical map's.
func (p pair) Status() syncer.Status {
	st, l := p.main.Status(), p.logical.Status()
	if st.Ready && !l.Ready {
		st.Ready = false
		st.State = l.State
		st.Problem = "logical map: " + l.Problem
	}
	return st
}

// ShardCounts counts the moved IDs per shard.
func (p pair) ShardCounts() map[string]int { return p.main.ShardCounts() }

// runBoth runs both syncers until ctx is done or one of them fails; a
// failure stops the other one too. It returns the first error. Before the
// logical syncer starts, seed fills an empty logical map in Redis; it is
// retried (with a capped backoff, each failure logged) until it succeeds
// or ctx is done, so a Redis that is away at start delays only the logical
// map, as it delays the syncer itself.
func runBoth(ctx context.Context, main, logical *syncer.Syncer, seed func(context.Context) error, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	run := func(s *syncer.Syncer, what string) {
		err := s.Run(ctx)
		if err != nil {
			err = fmt.Errorf("%s: %w", what, err)
		}
		errs <- err
	}
	go run(main, "moved map")
	go func() {
		wait := 100 * time.Millisecond
		for {
			err := seed(ctx)
			if err == nil {
				break
			}
			log.Warn("logical map not seeded yet; trying again", "err", err, "in", wait)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				errs <- nil
				return
			case <-t.C:
			}
			wait = min(2*wait, 5*time.Second)
		}
		run(logical, "logical map")
	}()
	first := <-errs
	cancel()
	second := <-errs
	if first != nil {
		return first
	}
	return second
}

// seedLogical fills the logical map in Redis from the logical map file at
// path when Redis has no logical entry at all (a new Redis, or one that
// lost its data): `mapctl config render -o` wrote the file with the
// topology's spread, and the syncer keeps it in step since. It never
// overwrites: with any entry in Redis, or no file, it does nothing, and the
// write itself (maps.Store.Fill) only adds logical shards Redis lacks.
func seedLogical(ctx context.Context, store *maps.Store, path string, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := store.Count(ctx)
	if err != nil {
		return fmt.Errorf("logical map: %w", err)
	}
	if n > 0 {
		return nil
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		log.Warn("logical map empty in Redis and no file to seed it from; run mapctl logical init", "file", path)
		return nil
	} else if err != nil {
		return fmt.Errorf("logical map: %w", err)
	}
	defer f.Close()
	mf, err := maps.ParseMapFile(f)
	if err != nil {
		return fmt.Errorf("logical map %s: %w", path, err)
	}
	if len(mf.Entries) == 0 {
		return nil
	}
	res, err := store.Fill(ctx, mf.Entries, 1000, nil)
	if err != nil {
		return fmt.Errorf("logical map: seed Redis from %s: %w", path, err)
	}
	log.Info("logical map seeded in Redis from its file", "file", path, "written", res.Written, "kept", len(res.Conflicts))
	return nil
}

package ids

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/internal/testenv"
)

// Many goroutines on two generators (two clients, as two processes would
// be) make IDs on a few logical shards: every ID is unique and carries the
// logical shard it was made for.
func TestGeneratorUniqueAcrossGenerators(t *testing.T) {
	r := testenv.StartRedis(t)
	var gens []*Generator
	for i := 0; i < 2; i++ {
		g, err := NewGenerator(r.Client(t), "", Default)
		if err != nil {
			t.Fatal(err)
		}
		gens = append(gens, g)
	}
	const workers, perWorker = 16, 500 // 8000 IDs
	logicals := []int{0, 1, 4095, 8191}
	type made struct {
		id      int64
		logical int
	}
	out := make(chan made, workers*perWorker)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			g := gens[w%2]
			for i := 0; i < perWorker; i++ {
				l := logicals[(w+i)%len(logicals)]
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				id, err := g.New(ctx, l)
				cancel()
				if err != nil {
					errs <- err
					return
				}
				out <- made{id, l}
			}
		}(w)
	}
	wg.Wait()
	close(out)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[int64]bool{}
	for m := range out {
		if seen[m.id] {
			t.Fatalf("ID %d made twice", m.id)
		}
		seen[m.id] = true
		if got := Default.Logical(m.id); got != m.logical {
			t.Fatalf("ID %d carries logical shard %d, made for %d", m.id, got, m.logical)
		}
	}
	if len(seen) != workers*perWorker {
		t.Fatalf("%d IDs, want %d", len(seen), workers*perWorker)
	}
}

// redisMillis is Redis's clock in ms since the layout's epoch.
func redisMillis(t *testing.T, rdb *redis.Client, l Layout) int64 {
	t.Helper()
	now, err := rdb.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return now.UnixMilli() - l.EpochMillis()
}

// When a logical shard's sequence for the current millisecond is used up,
// New waits and takes the next millisecond. The counters of the next 30 ms
// are filled up beforehand, so every one of those ms is used up whatever the
// timing: the ID must come from after them, with sequence 0.
func TestGeneratorSequenceOverflowGoesToNextMillisecond(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := r.Client(t)
	l := Default
	g, err := NewGenerator(rdb, "", l)
	if err != nil {
		t.Fatal(err)
	}
	const logical = 77
	ctx := context.Background()
	start := redisMillis(t, rdb, l)
	const window = 30
	for ms := start; ms < start+window; ms++ {
		key := fmt.Sprintf("%s:%d:%d", g.CounterKey(), logical, ms)
		if err := rdb.Set(ctx, key, l.MaxSequence()+1, 10*time.Second).Err(); err != nil {
			t.Fatal(err)
		}
	}
	id, err := g.New(ctx, logical)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := l.Split(id)
	if p.Millis < start+window || p.Logical != logical || p.Sequence != 0 {
		t.Fatalf("ID %d = %+v: want ms >= %d (after the used-up ones), logical %d, sequence 0", id, p, start+window, logical)
	}
}

// A small sequence (4 per ms) on one logical shard, many callers: each
// millisecond holds at most 4 IDs and all are unique; New waits for later
// milliseconds instead of failing.
func TestGeneratorSmallSequence(t *testing.T) {
	r := testenv.StartRedis(t)
	l := Layout{TimeBits: 49, ShardBits: 13, SequenceBits: 2}.WithDefaults()
	g, err := NewGenerator(r.Client(t), "", l)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[int64]bool{}
	perMs := map[int64]int{}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				id, err := g.New(ctx, 5)
				cancel()
				if err != nil {
					errs <- err
					return
				}
				p, _ := l.Split(id)
				mu.Lock()
				if seen[id] {
					errs <- fmt.Errorf("ID %d twice", id)
				}
				seen[id] = true
				perMs[p.Millis]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for ms, n := range perMs {
		if n > 4 {
			t.Fatalf("%d IDs in ms %d, want at most 4", n, ms)
		}
	}
}

// Bad input never reaches Redis, and a deadline ends a wait.
func TestGeneratorErrors(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := r.Client(t)
	g, err := NewGenerator(rdb, "", Default)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []int{-1, 8192} {
		if _, err := g.New(context.Background(), l); !errors.Is(err, ErrRange) {
			t.Errorf("New(%d) = %v, want ErrRange", l, err)
		}
	}
	if _, err := NewGenerator(rdb, "", Layout{TimeBits: 50}); !errors.Is(err, ErrLayout) {
		t.Errorf("bad layout: %v", err)
	}
	// Every counter of the next 10 s used up: New gives up at its deadline.
	start := redisMillis(t, rdb, Default)
	pipe := rdb.Pipeline()
	for ms := start; ms < start+10000; ms++ {
		pipe.Set(context.Background(), g.CounterKey()+":3:"+strconv.FormatInt(ms, 10), 5000, time.Minute)
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := g.New(ctx, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("New with every ms used up = %v, want DeadlineExceeded", err)
	}
	// The script refuses a bad logical shard itself (for other languages).
	err = rdb.Eval(context.Background(), Script, []string{g.CounterKey()}, 9000, 0, 8191, 1023, 1<<40-1, 5000).Err()
	if err == nil {
		t.Fatal("script accepted logical shard 9000")
	}
}

// BenchmarkGeneratorNew: IDs per second from one process over loopback,
// 8 callers in parallel on random logical shards.
func BenchmarkGeneratorNew(b *testing.B) {
	r := testenv.StartRedis(b)
	g, err := NewGenerator(r.Client(b), "", Default)
	if err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		l := 0
		for pb.Next() {
			l = (l + 1237) % 8192
			if _, err := g.New(context.Background(), l); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

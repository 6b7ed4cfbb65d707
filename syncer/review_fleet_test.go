package syncer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	goruntime "runtime"
	"sync"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/runtime"
)

// lockedRuntime makes a fakeRuntime safe to read from the test while the
// target's goroutine drives it.
type lockedRuntime struct {
	mu sync.Mutex
	f  *fakeRuntime
}

func (l *lockedRuntime) Apply(ctx context.Context, n string, ops []runtime.Op) ([]error, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Apply(ctx, n, ops)
}
func (l *lockedRuntime) Replace(ctx context.Context, n string, es []runtime.Entry) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Replace(ctx, n, es)
}
func (l *lockedRuntime) AddFrom(ctx context.Context, n string, es runtime.Entries) error {
	return addVia(ctx, l.Apply, n, es)
}
func (l *lockedRuntime) ReplaceFrom(ctx context.Context, n string, es runtime.Entries) error {
	return l.Replace(ctx, n, listOf(es))
}
func (l *lockedRuntime) ClearUncommitted(ctx context.Context, n string) (int, error) { return 0, nil }
func (l *lockedRuntime) Backends(ctx context.Context) ([]string, error)              { return nil, nil }
func (l *lockedRuntime) Info(ctx context.Context) (runtime.Info, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Info(ctx)
}
func (l *lockedRuntime) Dump(ctx context.Context, n string, fn func(k, v string) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Dump(ctx, n, fn)
}
func (l *lockedRuntime) MapEntryCount(ctx context.Context, n string) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.MapEntryCount(ctx, n)
}
func (l *lockedRuntime) Maps(ctx context.Context) ([]runtime.MapStatus, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Maps(ctx)
}
func (l *lockedRuntime) Close() error { return nil }
func (l *lockedRuntime) routes() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return routes(l.f)
}

// hungRuntime is a HAProxy that never answers (until the call's context
// ends, as the real client's timeouts make it).
type hungRuntime struct{}

func (hungRuntime) Apply(ctx context.Context, _ string, _ []runtime.Op) ([]error, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (hungRuntime) Replace(ctx context.Context, _ string, _ []runtime.Entry) error {
	<-ctx.Done()
	return ctx.Err()
}
func (hungRuntime) AddFrom(ctx context.Context, _ string, _ runtime.Entries) error {
	<-ctx.Done()
	return ctx.Err()
}
func (hungRuntime) ReplaceFrom(ctx context.Context, _ string, _ runtime.Entries) error {
	<-ctx.Done()
	return ctx.Err()
}
func (hungRuntime) ClearUncommitted(ctx context.Context, _ string) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}
func (hungRuntime) Backends(ctx context.Context) ([]string, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (hungRuntime) Info(ctx context.Context) (runtime.Info, error) {
	<-ctx.Done()
	return runtime.Info{}, ctx.Err()
}
func (hungRuntime) Dump(ctx context.Context, _ string, _ func(k, v string) error) error {
	<-ctx.Done()
	return ctx.Err()
}
func (hungRuntime) MapEntryCount(ctx context.Context, _ string) (int, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}
func (hungRuntime) Maps(ctx context.Context) ([]runtime.MapStatus, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (hungRuntime) Close() error { return nil }

// Three targets, one hung: the two others follow every change (single and
// delta+base layouts), the hung one is reported not ready and so is the
// syncer, the summary's position is the lowest active one, and Run stops
// with no goroutine left behind.
func TestFleetWithHungTarget(t *testing.T) {
	before := goruntime.NumGoroutine()
	fs := newFakeStore(users(50, "s1"))
	dir := t.TempDir()
	a := &lockedRuntime{f: &fakeRuntime{live: map[string]string{}, mapName: dir + "/users.map"}}
	b := &lockedRuntime{f: &fakeRuntime{live: users(50, "s1"), delta: map[string]string{}, mapName: dir + "/users.map"}}
	rts := map[string]Runtime{"/run/a.sock": a, "127.0.0.1:9999": b, "unix@/run/c.sock": hungRuntime{}}
	s, err := New(Config{Name: "t", MapName: dir + "/users.map", Targets: []string{"/run/a.sock", "127.0.0.1:9999", "unix@/run/c.sock"},
		Heartbeat: 50 * time.Millisecond, CheckEvery: 20 * time.Millisecond, FlushDelay: time.Millisecond, DeltaMax: 7,
		MaxDeleteShare: DefaultMaxDeleteShare, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, fs,
		func(addr string) (Runtime, error) { return rts[addr], nil })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()
	testenv.WaitFor(t, 20*time.Second, "targets a and b ready", func() error {
		if st := s.Status(); !st.Targets[0].Ready || !st.Targets[1].Ready {
			return fmt.Errorf("%+v", st.Targets)
		}
		return nil
	})
	for i := range 200 {
		fs.set(fmt.Sprintf("u%d", i%70), fmt.Sprintf("s%d", i%5))
		if i%3 == 0 {
			fs.del(fmt.Sprintf("u%d", (i*7)%70))
		}
	}
	want := func() map[string]string {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		m := map[string]string{}
		for k, v := range fs.hash {
			m[k] = v
		}
		return m
	}()
	testenv.WaitFor(t, 20*time.Second, "targets a and b in sync despite c", func() error {
		if !equalMaps(a.routes(), want) || !equalMaps(b.routes(), want) {
			return fmt.Errorf("a %d entries, b %d, want %d; %+v", len(a.routes()), len(b.routes()), len(want), s.Status().Targets)
		}
		st := s.Status()
		if st.Targets[0].Applied != fs.lastID() || st.Targets[1].Applied != fs.lastID() {
			return fmt.Errorf("positions %s %s, want %s", st.Targets[0].Applied, st.Targets[1].Applied, fs.lastID())
		}
		return nil
	})
	st := s.Status()
	if st.Ready || st.Targets[2].Ready || !st.Targets[0].Ready || !st.Targets[1].Ready {
		t.Fatalf("ready: syncer %v, targets %v %v %v; want only a and b", st.Ready, st.Targets[0].Ready, st.Targets[1].Ready, st.Targets[2].Ready)
	}
	if st.Targets[1].Layout != "delta+base" || st.Targets[1].Folds == 0 {
		t.Fatalf("target b: layout %s, %d folds", st.Targets[1].Layout, st.Targets[1].Folds)
	}
	if st.Applied != st.Targets[2].Applied {
		t.Fatalf("summary position %q, want the lowest active target's %q", st.Applied, st.Targets[2].Applied)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	stopped = true
	testenv.WaitFor(t, 5*time.Second, "no goroutine left", func() error {
		if n := goruntime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines, %d before", n, before)
		}
		return nil
	})
}

package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// fakeRuntime stands in for HAProxy's socket: it keeps a map (and a delta
// map when delta is not nil), answers like HAProxy (set/del of a missing
// key: not found) and records calls.
type fakeRuntime struct {
	live     map[string]string
	delta    map[string]string // nil: HAProxy has no delta map
	version  string            // show info's Version ("2.6.12" when empty)
	mapName  string            // the base map's name, for Maps
	midDump  func()            // called once, half-way through a dump of the base
	applied  [][]runtime.Op
	replaced int
	failAt   int // Apply fails after this many replies when > 0
}

// isDelta tells the delta map's name from the base's.
func isDelta(name string) bool { return strings.Contains(name, ".delta") }

func (f *fakeRuntime) mapOf(name string) map[string]string {
	if isDelta(name) {
		return f.delta
	}
	return f.live
}

func (f *fakeRuntime) Apply(_ context.Context, name string, ops []runtime.Op) ([]error, error) {
	f.applied = append(f.applied, ops)
	m := f.mapOf(name)
	var res []error
	for i, op := range ops {
		if f.failAt > 0 && i == f.failAt {
			return res, errors.New("connection closed")
		}
		_, has := m[op.Key]
		switch {
		case op.Kind == runtime.Add:
			m[op.Key] = op.Value
			res = append(res, nil)
		case !has:
			res = append(res, fmt.Errorf("%s: %w", op, runtime.ErrNotFound))
		case op.Kind == runtime.Set:
			m[op.Key] = op.Value
			res = append(res, nil)
		default:
			delete(m, op.Key)
			res = append(res, nil)
		}
	}
	return res, nil
}

func (f *fakeRuntime) Replace(_ context.Context, name string, es []runtime.Entry) error {
	m := map[string]string{}
	for _, e := range es {
		m[e.Key] = e.Value
	}
	if isDelta(name) {
		f.delta = m
		return nil
	}
	f.replaced++
	f.live = m
	return nil
}
func (f *fakeRuntime) ReplaceFrom(ctx context.Context, name string, es runtime.Entries) error {
	return f.Replace(ctx, name, listOf(es))
}

// AddFrom is the entries as Add ops.
func (f *fakeRuntime) AddFrom(ctx context.Context, name string, es runtime.Entries) error {
	return addVia(ctx, f.Apply, name, es)
}

// addVia is AddFrom for the fakes: es as Add ops through apply.
func addVia(ctx context.Context, apply func(context.Context, string, []runtime.Op) ([]error, error), name string, es runtime.Entries) error {
	ops := make([]runtime.Op, 0, es.Len())
	for i := range es.Len() {
		k, v := es.At(i)
		ops = append(ops, runtime.Op{Kind: runtime.Add, Key: k, Value: v})
	}
	res, err := apply(ctx, name, ops)
	if err != nil {
		return err
	}
	return errors.Join(res...)
}

// listOf copies es into a slice, for the fakes.
func listOf(es runtime.Entries) []runtime.Entry {
	if es == nil {
		return nil
	}
	out := make([]runtime.Entry, es.Len())
	for i := range out {
		out[i].Key, out[i].Value = es.At(i)
	}
	return out
}
func (f *fakeRuntime) ClearUncommitted(context.Context, string) (int, error) { return 0, nil }
func (f *fakeRuntime) Close() error                                          { return nil }
func (f *fakeRuntime) Backends(context.Context) ([]string, error)            { return nil, nil }
func (f *fakeRuntime) Info(context.Context) (runtime.Info, error) {
	v := f.version
	if v == "" {
		v = "2.6.12"
	}
	return runtime.Info{Pid: 1, Version: v}, nil
}
func (f *fakeRuntime) MapEntryCount(_ context.Context, name string) (int, error) {
	return len(f.mapOf(name)), nil
}
func (f *fakeRuntime) Maps(context.Context) ([]runtime.MapStatus, error) {
	ms := []runtime.MapStatus{{Path: f.mapName}}
	if f.delta != nil {
		ms = append(ms, runtime.MapStatus{Path: maps.DeltaPath(f.mapName)})
	}
	return ms, nil
}
func (f *fakeRuntime) Dump(_ context.Context, name string, fn func(k, v string) error) error {
	m := f.mapOf(name)
	i := 0
	for k, v := range m {
		if i++; i == len(m)/2 && f.midDump != nil && !isDelta(name) {
			f.midDump()
			f.midDump = nil
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// newTestSyncer returns a syncer whose state and one target's live map
// hold live, in sync.
func newTestSyncer(t *testing.T, live map[string]string) (*Syncer, *fakeRuntime) {
	f := &fakeRuntime{live: map[string]string{}}
	for k, v := range live {
		f.live[k] = v
	}
	s, err := New(Config{Name: "t", MapName: "/m.map", Targets: []string{"/run/t.sock"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, newFakeStore(live), dialFake(f))
	if err != nil {
		t.Fatal(err)
	}
	if !s.targets[0].holdLease(context.Background()) {
		t.Fatal("no lease on an empty store")
	}
	if err := s.fullSync(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.applied, f.replaced = nil, 0
	return s, f
}

// apply publishes changes to the state and lets the target apply them.
func (s *Syncer) apply(ctx context.Context, changes []maps.Change) error {
	s.publish(changes)
	tg := s.targets[0]
	bs, _, _ := s.state.since(tg.seq)
	return tg.apply(ctx, bs)
}

func set(id, u, sh string) maps.Change {
	return maps.Change{ID: id, Op: maps.OpSet, User: u, Shard: sh}
}
func del(id, u string) maps.Change { return maps.Change{ID: id, Op: maps.OpDel, User: u} }

// The last change per user wins; changes the live map already has send
// nothing; new keys are added, present ones set, gone ones deleted.
func TestApplyCoalescesAndDiffs(t *testing.T) {
	s, f := newTestSyncer(t, map[string]string{"c": "s1", "d": "s1", "e": "s1"})
	err := s.apply(context.Background(), []maps.Change{
		set("1-0", "a", "s1"), set("2-0", "a", "s2"), // a: new, last value wins
		del("3-0", "b"),       // b: not live, nothing to do
		set("4-0", "c", "s1"), // c: unchanged
		del("5-0", "d"),       // d: live, delete
		set("6-0", "e", "s3"), // e: changed
		{ID: "7-0"},           // a bad entry, skipped but its ID counts
	})
	if err != nil {
		t.Fatal(err)
	}
	// The new user comes in its own call (AddFrom's payloads).
	want := [][]runtime.Op{{{Kind: runtime.Del, Key: "d"}, {Kind: runtime.Set, Key: "e", Value: "s3"}}, {{Kind: runtime.Add, Key: "a", Value: "s2"}}}
	if !reflect.DeepEqual(f.applied, want) {
		t.Fatalf("sent %v, want %v", f.applied, want)
	}
	if !reflect.DeepEqual(stateMap(s), f.live) || s.targets[0].applied != "7-0" {
		t.Fatalf("state %v, live %v, applied %s", stateMap(s), f.live, s.targets[0].applied)
	}
}

// A set whose key someone deleted by hand is retried as an add.
func TestApplySetOnMissingKeyBecomesAdd(t *testing.T) {
	s, f := newTestSyncer(t, map[string]string{"a": "s1"})
	delete(f.live, "a") // drift: removed over the socket
	if err := s.apply(context.Background(), []maps.Change{set("1-0", "a", "s2")}); err != nil {
		t.Fatal(err)
	}
	if len(f.applied) != 2 || f.applied[1][0] != (runtime.Op{Kind: runtime.Add, Key: "a", Value: "s2"}) {
		t.Fatalf("calls %v", f.applied)
	}
	if f.live["a"] != "s2" {
		t.Fatalf("live %v", f.live)
	}
}

// A batch with many set/del goes as one versioned swap of the whole map.
func TestApplyManySetsSwapsWholeMap(t *testing.T) {
	live := map[string]string{}
	var changes []maps.Change
	for i := 0; i < 100; i++ {
		u := fmt.Sprintf("u%d", i)
		live[u] = "s1"
		changes = append(changes, set(fmt.Sprintf("%d-0", i+1), u, "s2"))
	}
	s, f := newTestSyncer(t, live)
	if err := s.apply(context.Background(), changes); err != nil {
		t.Fatal(err)
	}
	if f.replaced != 1 || len(f.applied) != 0 {
		t.Fatalf("replaced %d times, %d pipelined calls; want one swap", f.replaced, len(f.applied))
	}
	if f.live["u42"] != "s2" || len(f.live) != 100 || !reflect.DeepEqual(stateMap(s), f.live) {
		t.Fatalf("live after swap: %d entries, u42=%s", len(f.live), f.live["u42"])
	}
}

// A connection that breaks mid-batch is an error, and the target's
// position does not move.
func TestApplyConnectionLost(t *testing.T) {
	s, f := newTestSyncer(t, nil)
	tg := s.targets[0]
	before := tg.applied
	f.failAt = 1
	err := s.apply(context.Background(), []maps.Change{set("1-0", "a", "s1"), set("2-0", "b", "s1")})
	if err == nil {
		t.Fatal("no error for a broken connection")
	}
	if tg.applied != before {
		t.Fatalf("applied %s, want %s", tg.applied, before)
	}
}

func TestBackoffIsCappedWithJitter(t *testing.T) {
	b := newBackoff(50e6, 1e9)
	for i := 0; i < 20; i++ {
		if d := b.next(); d < 0 || d > 1e9 {
			t.Fatalf("step %d: %s outside [0, 1s]", i, d)
		}
	}
	b.reset()
	if d := b.next(); d > 50e6 {
		t.Fatalf("after reset: %s", d)
	}
}

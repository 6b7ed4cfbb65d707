package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// monoRuntime is a fake HAProxy with a base and a delta map that checks,
// after every single command and swap, that no user is routed by a shard
// older than one it was routed by before (users only move forward: shard
// "s<N>" with a growing N). It fails commands at random: a pipelined batch
// cut midway, a swap refused before its commit or whose reply is lost after
// it.
type monoRuntime struct {
	t           *testing.T
	rng         *rand.Rand
	base, delta map[string]string
	mapName     string
	best        map[string]int
	failRate    float64
	swaps       int
	version     string
	noDelta     bool            // HAProxy has no delta map loaded
	deleted     map[string]bool // users deleted in Redis: routed nowhere for a while, not checked
}

func (m *monoRuntime) route(u string) int {
	v, ok := m.delta[u]
	if !ok {
		v, ok = m.base[u]
	}
	if !ok {
		return -1
	}
	n, _ := strconv.Atoi(v[1:])
	return n
}

func (m *monoRuntime) check(users ...string) {
	m.t.Helper()
	for _, u := range users {
		if m.deleted[u] {
			continue
		}
		r := m.route(u)
		if r < m.best[u] {
			m.t.Fatalf("%s routed by s%d after s%d", u, r, m.best[u])
		}
		m.best[u] = r
	}
}

func (m *monoRuntime) all() []string {
	var us []string
	for u := range m.base {
		us = append(us, u)
	}
	for u := range m.delta {
		us = append(us, u)
	}
	for u := range m.best {
		us = append(us, u)
	}
	return us
}

func (m *monoRuntime) mapOf(name string) map[string]string {
	if isDelta(name) {
		return m.delta
	}
	return m.base
}

func (m *monoRuntime) Apply(_ context.Context, name string, ops []runtime.Op) ([]error, error) {
	mp := m.mapOf(name)
	cut := len(ops)
	if m.rng.Float64() < m.failRate {
		cut = m.rng.IntN(len(ops) + 1)
	}
	var res []error
	for i, op := range ops {
		if i == cut {
			return res, errors.New("connection closed")
		}
		_, has := mp[op.Key]
		switch {
		case op.Kind == runtime.Add && has:
			m.t.Fatalf("add of %s to %s, which holds it: a duplicate, the first wins", op.Key, name)
		case op.Kind == runtime.Add:
			mp[op.Key] = op.Value
			res = append(res, nil)
		case !has:
			res = append(res, fmt.Errorf("%s: %w", op, runtime.ErrNotFound))
		case op.Kind == runtime.Set:
			mp[op.Key] = op.Value
			res = append(res, nil)
		default:
			delete(mp, op.Key)
			res = append(res, nil)
		}
		m.check(op.Key)
	}
	return res, nil
}

func (m *monoRuntime) AddFrom(ctx context.Context, name string, es runtime.Entries) error {
	return addVia(ctx, m.Apply, name, es)
}

func (m *monoRuntime) ReplaceFrom(ctx context.Context, name string, es runtime.Entries) error {
	return m.Replace(ctx, name, listOf(es))
}

func (m *monoRuntime) Replace(_ context.Context, name string, es []runtime.Entry) error {
	if m.rng.Float64() < m.failRate/2 {
		return errors.New("refused before the commit")
	}
	n := map[string]string{}
	for _, e := range es {
		n[e.Key] = e.Value
	}
	if isDelta(name) {
		m.delta = n
	} else {
		m.base = n
		m.swaps++
	}
	m.check(m.all()...)
	if m.rng.Float64() < m.failRate/2 {
		return errors.New("commit's reply lost")
	}
	return nil
}
func (m *monoRuntime) ClearUncommitted(context.Context, string) (int, error) { return 0, nil }
func (m *monoRuntime) Close() error                                          { return nil }
func (m *monoRuntime) Backends(context.Context) ([]string, error)            { return nil, nil }
func (m *monoRuntime) Info(context.Context) (runtime.Info, error) {
	return runtime.Info{Pid: 1, Version: m.version}, nil
}
func (m *monoRuntime) MapEntryCount(_ context.Context, name string) (int, error) {
	return len(m.mapOf(name)), nil
}
func (m *monoRuntime) Maps(context.Context) ([]runtime.MapStatus, error) {
	if m.noDelta {
		return []runtime.MapStatus{{Path: m.mapName}}, nil
	}
	return []runtime.MapStatus{{Path: m.mapName}, {Path: maps.DeltaPath(m.mapName)}}, nil
}
func (m *monoRuntime) Dump(_ context.Context, name string, fn func(k, v string) error) error {
	for k, v := range m.mapOf(name) {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// The delta+base layout under random forward moves, folds, failed
// commands and swaps, reloads of the state and syncers killed and
// restarted: no user is ever routed backwards, and in the end the live maps
// route as Redis says.
func TestDeltaLayoutMonotonicUnderFailures(t *testing.T) {
	for seed := range uint64(30) {
		layout := []struct {
			version string
			noDelta bool
		}{{"2.6.12", false}, {"2.6.12", true}, {"3.0.11", false}}[seed%3]
		t.Run(fmt.Sprint(seed, layout), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			const nUsers = 60
			hash := map[string]string{}
			for i := range nUsers {
				hash[fmt.Sprintf("u%d", i)] = "s0"
			}
			fs := newFakeStore(hash)
			mr := &monoRuntime{t: t, rng: rng, base: map[string]string{}, delta: map[string]string{}, best: map[string]int{}, failRate: 0.15,
				version: layout.version, noDelta: layout.noDelta, deleted: map[string]bool{}}
			dir := t.TempDir()
			newSyncer := func() *Syncer {
				s, err := New(Config{Name: "t", MapName: dir + "/users.map", Targets: []string{"/run/t.sock"}, DeltaMax: 10, ReplaceAbove: 5,
					MaxDeleteShare: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, fs, dialFake(mr))
				if err != nil {
					t.Fatal(err)
				}
				fs.mu.Lock()
				fs.claims = map[string]string{} // the previous one was killed: its lease gone
				fs.mu.Unlock()
				if !s.targets[0].holdLease(context.Background()) {
					t.Fatal("no lease")
				}
				if err := s.load(context.Background()); err != nil {
					t.Fatal(err)
				}
				return s
			}
			mr.mapName = dir + "/users.map"
			s := newSyncer()
			ctx := context.Background()
			level := map[string]int{}
			step := func() {
				tg := s.targets[0]
				if tg.needFull {
					tg.fullSync(ctx)
					return
				}
				bs, ok, _ := s.state.since(tg.seq)
				if !ok {
					tg.doubt(reasonBehind)
					return
				}
				if len(bs) == 0 {
					return
				}
				if err := tg.apply(ctx, bs); err != nil { // as step does
					tg.doubt(reasonDoubt)
				}
			}
			for range 300 {
				switch r := rng.IntN(10); {
				case r < 4: // users move forward
					for range 1 + rng.IntN(8) {
						u := fmt.Sprintf("u%d", rng.IntN(nUsers))
						level[u]++
						fs.set(u, fmt.Sprintf("s%d", level[u]))
					}
					_, applied, _ := s.state.position()
					changes, _, _ := fs.ReadLog(ctx, applied, 1000, 0)
					if len(changes) > 0 {
						s.publish(changes)
					}
				case r < 5: // a user deleted, later set again
					u := fmt.Sprintf("u%d", rng.IntN(nUsers))
					mr.deleted[u] = true
					fs.del(u)
					_, applied, _ := s.state.position()
					changes, _, _ := fs.ReadLog(ctx, applied, 1000, 0)
					s.publish(changes)
				case r < 8:
					step()
				case r < 9:
					s.load(ctx) // a reload (a gap, a count drift)
				default:
					s = newSyncer() // killed and restarted
				}
			}
			mr.failRate = 0
			for range 20 {
				step()
			}
			if s.targets[0].useDelta != (layout.version == "2.6.12" && !layout.noDelta) || mr.swaps < 5 {
				t.Fatalf("delta layout %v, or few folds (%d)", s.targets[0].useDelta, mr.swaps)
			}
			want := stateMap(s)
			for u, sh := range want {
				if got := mr.delta[u]; got == "" && mr.base[u] != sh || got != "" && got != sh {
					t.Fatalf("%s routes to delta %q base %q, Redis says %s", u, mr.delta[u], mr.base[u], sh)
				}
			}
			for _, u := range mr.all() {
				if _, ok := want[u]; !ok && mr.route(u) >= 0 {
					t.Fatalf("%s deleted in Redis still routes to s%d", u, mr.route(u))
				}
			}
		})
	}
}

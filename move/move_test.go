package move

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
)

type fixture struct {
	redis   *testenv.Redis
	rdb     redis.UniversalClient
	users   *maps.Store
	logical *maps.Store
	cfg     Config
	dir     string
}

// newFixture starts Redis with shards shard0..2 and the holding backend
// known, and a fake syncer on both maps that reports the log's last ID as
// applied every few milliseconds (WaitApplied's real answer, without
// HAProxy: the e2e tests drive a real syncer).
func newFixture(t *testing.T) *fixture {
	t.Helper()
	r := testenv.StartRedis(t)
	rdb := r.Client(t)
	f := &fixture{redis: r, rdb: rdb, users: maps.NewStore(rdb, ""), logical: maps.NewStore(rdb, maps.LogicalPrefix("")), dir: t.TempDir()}
	ctx := context.Background()
	if err := f.users.AddShards(ctx, []string{"shard0", "shard1", "shard2", maps.HoldShard}); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, s := range []*maps.Store{f.users, f.logical} {
				if id, err := s.LastLogID(sctx); err == nil {
					s.ReportSyncer(sctx, maps.SyncerState{Name: "fake", Applied: id, Seen: time.Now(), Ready: true})
				}
			}
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	f.cfg = Config{Redis: rdb, Users: f.users, Logical: f.logical, Shards: f.users, Wait: 10 * time.Second, LeaseTTL: time.Second, Log: slog.New(slog.DiscardHandler)}
	return f
}

// hooks returns hooks that append "STEP SUBJECT FROM TO" to a log file.
func (f *fixture) hooks() Hooks {
	line := func(name string) string {
		return `echo "` + name + ` $SHARDMAP_USER$SHARDMAP_LOGICAL $SHARDMAP_FROM $SHARDMAP_TO $SHARDMAP_STEP" >> ` + filepath.Join(f.dir, "hooks")
	}
	return Hooks{Freeze: line("freeze"), Unfreeze: line("unfreeze"), Copy: line("copy"), Verify: line("verify"), Cleanup: line("cleanup"),
		Timeout: 10 * time.Second, RetryDelay: time.Millisecond}
}

func (f *fixture) hookLog(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(f.dir, "hooks"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// history is every shard the change log gave user, in order ("-" = del).
func history(t *testing.T, s *maps.Store, user string) []string {
	t.Helper()
	changes, _, err := s.ReadLog(context.Background(), maps.ZeroID, 10000, -1)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range changes {
		if c.User != user {
			continue
		}
		if c.Op == maps.OpDel {
			out = append(out, "-")
		} else {
			out = append(out, c.Shard)
		}
	}
	return out
}

func (f *fixture) set(t *testing.T, s *maps.Store, user, shard string) {
	t.Helper()
	if _, err := s.Set(context.Background(), maps.Assignment{User: user, Shard: shard}); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) route(t *testing.T, s *maps.Store, user string) string {
	t.Helper()
	sh, ok, err := s.Get(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return ""
	}
	return sh
}

func TestMoveWithFreeze(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.set(t, f.users, "alice", "shard0")
	var mu sync.Mutex
	var done []Step
	cfg := f.cfg
	cfg.OnStep = func(mv Move, s Step) { mu.Lock(); done = append(done, s); mu.Unlock() }
	m := New(cfg)
	mv, err := m.Start(ctx, Request{Subject: "alice", To: "shard1", Reason: "even out", Freeze: true, Hooks: f.hooks()})
	if err != nil {
		t.Fatal(err)
	}
	if mv.State != StateDone || mv.Step != StepDone || mv.From != "shard0" || mv.FlipID == "" || mv.FreezeID == "" {
		t.Fatalf("move: %+v", mv)
	}
	if got := fmt.Sprint(done); got != "[plan freeze copy flip verify cleanup]" {
		t.Errorf("steps done: %s", got)
	}
	if got := fmt.Sprint(history(t, f.users, "alice")); got != "[shard0 shardmap_hold shard1]" {
		t.Errorf("routing history: %s", got)
	}
	want := "freeze alice shard0 shard1 freeze\ncopy alice shard0 shard1 copy\nunfreeze alice shard0 shard1 flip\nverify alice shard0 shard1 verify\ncleanup alice shard0 shard1 cleanup\n"
	if got := f.hookLog(t); got != want {
		t.Errorf("hooks ran:\n%s\nwant:\n%s", got, want)
	}
	got, err := m.Get(ctx, mv.ID)
	if err != nil || got.State != StateDone || got.Reason != "even out" || got.Driven {
		t.Fatalf("get: %+v %v", got, err)
	}
	if l, err := m.List(ctx, false); err != nil || len(l) != 0 {
		t.Errorf("unfinished moves: %v %v", l, err)
	}
	if l, err := m.List(ctx, true); err != nil || len(l) != 1 || l[0].ID != mv.ID {
		t.Errorf("all moves: %v %v", l, err)
	}
	// The lock is free: alice can move again (without a freeze: one write).
	mv2, err := m.Start(ctx, Request{Subject: "alice", To: "shard2"})
	if err != nil || mv2.State != StateDone {
		t.Fatalf("second move: %+v %v", mv2, err)
	}
	if got := fmt.Sprint(history(t, f.users, "alice")); got != "[shard0 shardmap_hold shard1 shard2]" {
		t.Errorf("routing history: %s", got)
	}
	if _, err := m.Resume(ctx, mv.ID); !errors.Is(err, ErrFinished) {
		t.Errorf("resume of a done move: %v", err)
	}
	if _, err := m.Abort(ctx, mv.ID); !errors.Is(err, ErrFinished) {
		t.Errorf("abort of a done move: %v", err)
	}
}

// A user with no assignment moves with --from; abort deletes the
// assignment again.
func TestMoveUnassignedUser(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m := New(f.cfg)
	if _, err := m.Start(ctx, Request{Subject: "bob", To: "shard1"}); !errors.Is(err, maps.ErrInvalid) || !strings.Contains(err.Error(), "--from") {
		t.Fatalf("no assignment, no --from: %v", err)
	}
	h := f.hooks()
	h.Copy = "exit 1"
	mv, err := m.Start(ctx, Request{Subject: "bob", From: "shard0", To: "shard1", Freeze: true, Hooks: h})
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepCopy || mv.State != StateFailed {
		t.Fatalf("failing copy: %v", err)
	}
	if r := f.route(t, f.users, "bob"); r != maps.HoldShard {
		t.Fatalf("bob during the failed copy: %q", r)
	}
	if _, err := m.Abort(ctx, mv.ID); err != nil {
		t.Fatal(err)
	}
	if r := f.route(t, f.users, "bob"); r != "" {
		t.Fatalf("bob after abort: %q, want no assignment", r)
	}
	if got := fmt.Sprint(history(t, f.users, "bob")); got != "[shardmap_hold -]" {
		t.Errorf("history: %s", got)
	}
	if !strings.Contains(f.hookLog(t), "unfreeze bob shard0 shard1 abort") {
		t.Errorf("abort did not run the unfreeze hook: %q", f.hookLog(t))
	}
}

// Killed at each step, before or after its action, and resumed: the same
// end state, each routing value written once.
func TestMoveCrashAtEachStepThenResume(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, step := range Steps[:len(Steps)-1] {
		for _, after := range []bool{false, true} {
			user := fmt.Sprintf("u-%s-%v", step, after)
			f.set(t, f.users, user, "shard0")
			cfg := f.cfg
			cfg.crash = func(s Step, a bool) bool { return s == step && a == after }
			_, err := New(cfg).Start(ctx, Request{Subject: user, To: "shard2", Freeze: true, Hooks: f.hooks()})
			if !errors.Is(err, errCrashed) {
				t.Fatalf("%s: start: %v", user, err)
			}
			m := New(f.cfg)
			l, err := m.List(ctx, false)
			if err != nil || len(l) != 1 || l[0].State != StateRunning || l[0].Step != step {
				t.Fatalf("%s: after the crash: %+v %v", user, l, err)
			}
			id := l[0].ID
			// Another move of the same user is refused, naming this one.
			if _, err := m.Start(ctx, Request{Subject: user, To: "shard1"}); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), id) {
				t.Fatalf("%s: second move: %v", user, err)
			}
			// The dead process's lease expires; then resume goes on.
			var mv *Move
			testenv.WaitFor(t, 10*time.Second, "resume after the lease expires", func() error {
				mv, err = m.Resume(ctx, id)
				if errors.Is(err, ErrBusy) {
					return err
				}
				return nil
			})
			if err != nil || mv.State != StateDone {
				t.Fatalf("%s: resume: %+v %v", user, mv, err)
			}
			if got := fmt.Sprint(history(t, f.users, user)); got != "[shard0 shardmap_hold shard2]" {
				t.Errorf("%s: routing history %s", user, got)
			}
		}
	}
	log := f.hookLog(t)
	for _, h := range []string{"freeze", "copy", "unfreeze", "verify", "cleanup"} {
		if n := strings.Count(log, "\n"+h+" "); n < 10 {
			t.Errorf("hook %s ran %d times for 12 moves (at least once each, twice when killed in it)", h, n)
		}
	}
}

func TestAbort(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m := New(f.cfg)
	// Stopped at flip (the routing frozen): abort restores it.
	f.set(t, f.users, "carol", "shard0")
	cfg := f.cfg
	cfg.crash = func(s Step, a bool) bool { return s == StepFlip && !a }
	_, err := New(cfg).Start(ctx, Request{Subject: "carol", To: "shard1", Freeze: true, Hooks: f.hooks()})
	if !errors.Is(err, errCrashed) {
		t.Fatal(err)
	}
	l, _ := m.List(ctx, false)
	id := l[0].ID
	if _, err := m.Abort(ctx, id); !errors.Is(err, ErrBusy) {
		t.Fatalf("abort while the lease lives: %v", err)
	}
	var mv *Move
	testenv.WaitFor(t, 10*time.Second, "abort after the lease expires", func() error {
		mv, err = m.Abort(ctx, id)
		if errors.Is(err, ErrBusy) {
			return err
		}
		return nil
	})
	if err != nil || mv.State != StateAborted {
		t.Fatalf("abort: %+v %v", mv, err)
	}
	if r := f.route(t, f.users, "carol"); r != "shard0" {
		t.Errorf("carol after abort: %q", r)
	}
	if _, err := m.Resume(ctx, id); !errors.Is(err, ErrFinished) {
		t.Errorf("resume of an aborted move: %v", err)
	}
	// Without a freeze, stopped before the flip: routing never changed.
	f.set(t, f.users, "dave", "shard0")
	h := f.hooks()
	h.Copy = "exit 7"
	mv, err = m.Start(ctx, Request{Subject: "dave", To: "shard1", Hooks: h})
	if !errors.Is(err, &HookError{}) && !strings.Contains(err.Error(), "exit status 7") {
		t.Fatalf("failing copy: %v", err)
	}
	if mv.Attempts != 1 || !strings.Contains(mv.Error, "exit status 7") {
		t.Errorf("failed record: %+v", mv)
	}
	if _, err := m.Abort(ctx, mv.ID); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(history(t, f.users, "dave")); got != "[shard0]" {
		t.Errorf("dave's routing history: %s", got)
	}
	// Once cleanup has started, abort is refused.
	f.set(t, f.users, "erin", "shard0")
	h = f.hooks()
	h.Cleanup = "exit 1"
	mv, err = m.Start(ctx, Request{Subject: "erin", To: "shard1", Hooks: h})
	if se := (*StepError)(nil); !errors.As(err, &se) || se.Step != StepCleanup {
		t.Fatalf("failing cleanup: %v", err)
	}
	if _, err := m.Abort(ctx, mv.ID); !errors.Is(err, ErrTooLate) {
		t.Fatalf("abort at cleanup: %v", err)
	}
	if r := f.route(t, f.users, "erin"); r != "shard1" {
		t.Errorf("erin: %q", r)
	}
}

// Someone else changes the routing while a move is stopped: the flip
// refuses to overwrite it, and so does abort (which ends the move).
func TestMoveRoutingChangedBySomeoneElse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m := New(f.cfg)
	f.set(t, f.users, "frank", "shard0")
	h := f.hooks()
	flag := filepath.Join(f.dir, "copy-ok")
	h.Copy = "test -e " + flag
	mv, err := m.Start(ctx, Request{Subject: "frank", To: "shard1", Hooks: h})
	if err == nil {
		t.Fatal("copy passed")
	}
	f.set(t, f.users, "frank", "shard2")
	os.WriteFile(flag, nil, 0o644)
	_, err = m.Resume(ctx, mv.ID)
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepFlip || !errors.Is(err, ErrRoutingChanged) {
		t.Fatalf("resume: %v", err)
	}
	// Abort ends the move and leaves the routing someone else set.
	if got, err := m.Abort(ctx, mv.ID); err != nil || got.State != StateAborted {
		t.Fatalf("abort: %+v %v", got, err)
	}
	if r := f.route(t, f.users, "frank"); r != "shard2" {
		t.Errorf("frank: %q", r)
	}
}

func TestMoveBadInput(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.set(t, f.users, "alice", "shard0")
	f.set(t, f.users, "held", maps.HoldShard)
	m := New(f.cfg)
	for _, c := range []struct {
		req  Request
		want string
	}{
		{Request{Subject: "alice", To: "shard9"}, `destination "shard9" is not a backend HAProxy is known to have`},
		{Request{Subject: "alice", To: maps.HoldShard}, "holding backend, never a destination"},
		{Request{Subject: "alice", To: "shard0"}, `already on "shard0"`},
		{Request{Subject: "alice", To: "bad shard"}, "shards are HAProxy backend names"},
		{Request{Subject: "al ice", To: "shard1"}, "users are"},
		{Request{Subject: "alice", To: "shard1", From: "shard2"}, `--from "shard2": user "alice" is on "shard0"`},
		{Request{Subject: "nobody", To: "shard1"}, "--from SHARD"},
		{Request{Subject: "held", To: "shard1"}, "frozen"},
		{Request{Kind: KindLogical, Subject: "07", To: "shard1"}, "without leading zeros"},
		{Request{Kind: KindLogical, Subject: "7", To: "shard1"}, "not in the logical map"},
		{Request{Kind: "team", Subject: "7", To: "shard1"}, "want user or logical"},
	} {
		_, err := m.Start(ctx, c.req)
		if !errors.Is(err, maps.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want ErrInvalid with %q", c.req, err, c.want)
		}
	}
	for _, id := range []string{"x", "20260101-000000-abcdeg"} {
		if _, err := m.Resume(ctx, id); !errors.Is(err, maps.ErrInvalid) {
			t.Errorf("resume %q: %v", id, err)
		}
	}
	if _, err := m.Abort(ctx, "20260101-000000-abcdef"); !errors.Is(err, ErrNotFound) || !errors.Is(err, maps.ErrInvalid) {
		t.Errorf("abort of an unknown move: %v", err)
	}
	// --freeze without the holding backend in HAProxy.
	if err := f.rdb.SRem(ctx, f.users.ShardsKey(), maps.HoldShard).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(ctx, Request{Subject: "alice", To: "shard1", Freeze: true}); !errors.Is(err, maps.ErrInvalid) ||
		!strings.Contains(err.Error(), "HAProxy has no backend shardmap_hold; render the config from the topology") {
		t.Errorf("freeze without hold: %v", err)
	}
	if l, err := m.List(ctx, true); err != nil || len(l) != 0 {
		t.Errorf("moves recorded for bad input: %v %v", l, err)
	}
}

func TestMoveLogical(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.set(t, f.logical, "3", "shard0")
	m := New(f.cfg)
	mv, err := m.Start(ctx, Request{Kind: KindLogical, Subject: "3", To: "shard1", Freeze: true, Hooks: f.hooks()})
	if err != nil || mv.State != StateDone {
		t.Fatalf("%+v %v", mv, err)
	}
	if got := fmt.Sprint(history(t, f.logical, "3")); got != "[shard0 shardmap_hold shard1]" {
		t.Errorf("logical history: %s", got)
	}
	if !strings.Contains(f.hookLog(t), "copy 3 shard0 shard1 copy") {
		t.Errorf("hooks: %q", f.hookLog(t))
	}
	// A user named 3 in the users' map is another subject: not locked by it.
	if got := history(t, f.users, "3"); len(got) != 0 {
		t.Errorf("users' map touched: %v", got)
	}
	if _, err := New(Config{Redis: f.rdb, Users: f.users, Shards: f.users}).Start(ctx, Request{Kind: KindLogical, Subject: "3", To: "shard2"}); !errors.Is(err, maps.ErrInvalid) {
		t.Errorf("logical move without a logical map: %v", err)
	}
}

// Moves of different users run in parallel on one Mover.
func TestMoveParallel(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m := New(f.cfg)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		u := fmt.Sprintf("p%d", i)
		f.set(t, f.users, u, "shard0")
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.Start(ctx, Request{Subject: u, To: "shard1", Freeze: true, Hooks: f.hooks()})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("p%d: %v", i, err)
		}
		if r := f.route(t, f.users, fmt.Sprintf("p%d", i)); r != "shard1" {
			t.Errorf("p%d: %q", i, r)
		}
	}
}

// A process that loses its lease (another took the move over) stops its
// running hook and writes nothing more to the record.
func TestMoveLeaseLostStopsTheHook(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.set(t, f.users, "gina", "shard0")
	m := New(f.cfg)
	started := filepath.Join(f.dir, "started")
	h := f.hooks()
	h.Copy = "touch " + started + "; sleep 300"
	h.Timeout = time.Hour
	done := make(chan error, 1)
	go func() { _, err := m.Start(ctx, Request{Subject: "gina", To: "shard1", Hooks: h}); done <- err }()
	testenv.WaitFor(t, 10*time.Second, "the copy hook to start", func() error { _, err := os.Stat(started); return err })
	l, err := m.List(ctx, false)
	if err != nil || len(l) != 1 {
		t.Fatalf("%v %v", l, err)
	}
	// Another process takes the lease.
	if err := f.rdb.Set(ctx, m.ownerKey(l[0].ID), "someone-else", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("start: %v, want ErrLeaseLost", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the hook kept running after the lease was lost")
	}
	mv, err := m.Get(ctx, l[0].ID)
	if err != nil || mv.State != StateRunning || mv.Step != StepCopy {
		t.Errorf("record after losing the lease: %+v %v (the new owner's to write)", mv, err)
	}
}

// A move stopped before its flip never routed the user to its destination:
// if the user is routed there now, someone else did it (mapctl set), and
// abort must not overwrite that with the old shard.
func TestAbortBeforeFlipKeepsAConcurrentSetToTheDestination(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m := New(f.cfg)
	for _, freeze := range []bool{false, true} {
		user := fmt.Sprintf("henry-%v", freeze)
		f.set(t, f.users, user, "shard0")
		h := f.hooks()
		h.Copy = "exit 3"
		mv, err := m.Start(ctx, Request{Subject: user, To: "shard1", Freeze: freeze, Hooks: h})
		if se := (*StepError)(nil); !errors.As(err, &se) || se.Step != StepCopy {
			t.Fatalf("%s: failing copy: %v", user, err)
		}
		f.set(t, f.users, user, "shard1") // an operator's mapctl set
		if got, err := m.Abort(ctx, mv.ID); err != nil || got.State != StateAborted {
			t.Errorf("%s: abort: %+v %v", user, got, err)
		}
		if r := f.route(t, f.users, user); r != "shard1" {
			t.Errorf("%s: routed to %q after abort, want the operator's shard1", user, r)
		}
	}
}

// Someone else routed the user elsewhere while a move was stopped: the move
// can no longer flip, and abort must still end it (leaving that routing as
// it is: nothing of the move's is left to roll back), or the user's lock is
// held for ever and no move of the user is possible again short of
// flapping its live routing back to the move's start.
func TestAbortAfterSomeoneElseRoutedTheUserFreesIt(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m := New(f.cfg)
	for _, freeze := range []bool{false, true} {
		user := fmt.Sprintf("ivy-%v", freeze)
		f.set(t, f.users, user, "shard0")
		h := f.hooks()
		flag := filepath.Join(f.dir, "copy-ok-"+user)
		h.Copy = "test -e " + flag
		mv, err := m.Start(ctx, Request{Subject: user, To: "shard1", Freeze: freeze, Hooks: h})
		if err == nil {
			t.Fatalf("%s: copy passed", user)
		}
		f.set(t, f.users, user, "shard2") // the operator decides otherwise
		os.WriteFile(flag, nil, 0o644)
		if _, err := m.Resume(ctx, mv.ID); !errors.Is(err, ErrRoutingChanged) {
			t.Fatalf("%s: resume: %v, want ErrRoutingChanged", user, err)
		}
		got, err := m.Abort(ctx, mv.ID)
		if err != nil || got.State != StateAborted {
			t.Fatalf("%s: abort: %+v %v", user, got, err)
		}
		if r := f.route(t, f.users, user); r != "shard2" {
			t.Errorf("%s: routed to %q after abort, want the operator's shard2 left alone", user, r)
		}
		if !strings.Contains(f.hookLog(t), "unfreeze "+user+" shard0 shard1 abort") {
			t.Errorf("%s: the unfreeze hook did not run on abort:\n%s", user, f.hookLog(t))
		}
		if _, err := m.Start(ctx, Request{Subject: user, To: "shard0", Hooks: f.hooks()}); err != nil {
			t.Errorf("%s: a new move after the abort: %v", user, err)
		}
	}
}

// The routing changes between plan's read and the record (another move of
// the user finished in between, or a mapctl set): the move must not run its
// hooks with a From that is no longer where the data is.
func TestRoutingChangedBetweenPlanAndRecordStopsAtPlan(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.set(t, f.users, "jack", "shard0")
	cfg := f.cfg
	cfg.crash = func(s Step, after bool) bool {
		if s == StepPlan && !after {
			f.set(t, f.users, "jack", "shard2") // as if another move of jack just finished
		}
		return false
	}
	mv, err := New(cfg).Start(ctx, Request{Subject: "jack", To: "shard1", Hooks: f.hooks()})
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepPlan || !errors.Is(err, ErrRoutingChanged) {
		t.Fatalf("start: %v, want a StepError at plan wrapping ErrRoutingChanged", err)
	}
	if log := f.hookLog(t); log != "" {
		t.Errorf("hooks ran with the stale From shard0:\n%s", log)
	}
	if got, err := New(f.cfg).Abort(ctx, mv.ID); err != nil || got.State != StateAborted {
		t.Fatalf("abort: %+v %v", got, err)
	}
	if r := f.route(t, f.users, "jack"); r != "shard2" {
		t.Errorf("jack: %q", r)
	}
}

// A Mover without a logical map (Config.Logical nil) that finds a logical
// move in Redis (recorded by another mapctl, or a record written by hand)
// answers with an error, never a nil-interface panic.
func TestLogicalRecordWithoutLogicalMapIsAnError(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.set(t, f.logical, "3", "shard0")
	cfg := f.cfg
	cfg.crash = func(s Step, after bool) bool { return s == StepCopy && !after }
	mv, err := New(cfg).Start(ctx, Request{Kind: KindLogical, Subject: "3", To: "shard1", Hooks: f.hooks()})
	if !errors.Is(err, errCrashed) {
		t.Fatal(err)
	}
	cfg = f.cfg
	cfg.Logical = nil
	m := New(cfg)
	// The dead process's lease expires; then resume and abort answer.
	testenv.WaitFor(t, 10*time.Second, "the lease to expire", func() error {
		n, err := f.rdb.Exists(ctx, m.ownerKey(mv.ID)).Result()
		if err == nil && n != 0 {
			err = errors.New("lease still held")
		}
		return err
	})
	if _, err := m.Resume(ctx, mv.ID); !errors.Is(err, maps.ErrInvalid) {
		t.Errorf("resume of a logical move without a logical map: %v", err)
	}
	if strings.Contains(f.hookLog(t), "copy") {
		t.Errorf("resume ran the copy hook:\n%s", f.hookLog(t))
	}
	if _, err := m.Abort(ctx, mv.ID); err == nil {
		t.Error("abort of a logical move without a logical map passed")
	}
}

// Redis stops answering the driving process (a partition, a paused Redis)
// while a hook runs: after a lease TTL with no renewal confirmed, another
// process may have taken the move over, so this one must stop its hook
// rather than keep running it alongside the new owner's.
func TestMoveUnrenewableLeaseStopsTheHook(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.set(t, f.users, "kate", "shard0")
	m := New(f.cfg)
	started := filepath.Join(f.dir, "started")
	h := f.hooks()
	h.Copy = "touch " + started + "; sleep 300"
	h.Timeout = time.Hour
	done := make(chan error, 1)
	go func() { _, err := m.Start(ctx, Request{Subject: "kate", To: "shard1", Hooks: h}); done <- err }()
	testenv.WaitFor(t, 10*time.Second, "the copy hook to start", func() error { _, err := os.Stat(started); return err })
	f.redis.Pause(t)
	defer f.redis.Signal(syscall.SIGCONT)
	select {
	case err := <-done:
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("start: %v, want ErrLeaseLost", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the hook kept running with a lease nobody could renew")
	}
}

// The lease passes to another process between a step's record and its
// routing write (this process stalled past the TTL; the other resumed or
// aborted the move): the write must not land, or a stale process could
// freeze a user whose move another process has aborted (on the hold backend
// for ever) or flip it after an abort.
func TestRoutingWriteNeedsTheLease(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, step := range []Step{StepFreeze, StepFlip} {
		user := "liz-" + string(step)
		f.set(t, f.users, user, "shard0")
		cfg := f.cfg
		m := New(cfg)
		cfg.crash = func(s Step, after bool) bool {
			if s == step && !after {
				l, _ := m.List(ctx, false)
				for _, mv := range l {
					if mv.Subject == user {
						f.rdb.Set(ctx, m.ownerKey(mv.ID), "another-process", time.Minute)
					}
				}
			}
			return false
		}
		_, err := New(cfg).Start(ctx, Request{Subject: user, To: "shard1", Freeze: true, Hooks: f.hooks()})
		if !errors.Is(err, ErrLeaseLost) {
			t.Errorf("%s: start: %v, want ErrLeaseLost", user, err)
		}
		want := "[shard0]"
		if step == StepFlip {
			want = "[shard0 shardmap_hold]"
		}
		if got := fmt.Sprint(history(t, f.users, user)); got != want {
			t.Errorf("%s: routing history %s, want %s: written without the lease", user, got, want)
		}
	}
}

package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
)

// The batches a target took from the state stay whole while the reader
// trims the ring: a target at the ring's oldest batch, applying, must not
// find nil batches (a nil dereference that took the whole syncer down).
func TestRingTrimKeepsTakenBatches(t *testing.T) {
	st := newState()
	st.reload(map[string]string{}, "0-0")
	start, _, _ := st.position()
	for i := 0; i < 4096; i++ {
		st.publish([]want{{user: fmt.Sprintf("u%d", i), shard: "s1"}}, fmt.Sprintf("%d-0", i+1), nil)
	}
	bs, ok, _ := st.since(start)
	if !ok || len(bs) != 4096 {
		t.Fatalf("since: ok %v, %d batches", ok, len(bs))
	}
	// The reader publishes more while the target applies bs: the ring trims.
	st.publish([]want{{user: "late", shard: "s1"}}, "5000-0", nil)
	for i, b := range bs {
		if b == nil {
			t.Fatalf("batch %d of those taken became nil when the ring was trimmed", i)
		}
	}
}

// hookStore runs onForced when the delete guard asks for a human's
// permission: the reader moving the state on meanwhile.
type hookStore struct {
	*fakeStore
	onForced func()
}

func (h *hookStore) TakeForcedReconcile(ctx context.Context) (bool, error) {
	if h.onForced != nil {
		h.onForced()
	}
	return h.fakeStore.TakeForcedReconcile(ctx)
}

// hookRuntime runs onDump before each dump of a live map: the reader moving
// the state on while a target reads its live map.
type hookRuntime struct {
	*fakeRuntime
	onDump func()
}

func (h *hookRuntime) Dump(ctx context.Context, name string, fn func(k, v string) error) error {
	if h.onDump != nil {
		h.onDump()
	}
	return h.fakeRuntime.Dump(ctx, name, fn)
}

// A batch the reader publishes while a full sync runs (here while the
// delete guard asks Redis for a human's permission) is not lost: the full
// sync's diff and the position it resumes from are the same state.
func TestFullSyncDoesNotSkipBatchPublishedMeanwhile(t *testing.T) {
	live := users(100, "s1")
	for i := 0; i < 20; i++ {
		live[fmt.Sprintf("extra%d", i)] = "s1" // deleted from Redis: 20 of 120, past the guard
	}
	fs := newFakeStore(users(100, "s1"))
	fs.forced = true
	hs := &hookStore{fakeStore: fs}
	rt := &fakeRuntime{live: live}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/test.sock"},
		MaxDeleteShare: DefaultMaxDeleteShare, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, hs, dialFake(rt))
	if err != nil {
		t.Fatal(err)
	}
	rt.mapName = s.cfg.MapName
	ctx := context.Background()
	tg := s.targets[0]
	if !tg.holdLease(ctx) {
		t.Fatal("no lease")
	}
	if err := s.load(ctx); err != nil {
		t.Fatal(err)
	}
	hs.onForced = func() {
		hs.onForced = nil
		fs.set("u1", "s2")
		s.publish([]maps.Change{set(fs.lastID(), "u1", "s2")})
	}
	if err := tg.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	follow(t, s)
	if rt.live["u1"] != "s2" || !equalMaps(rt.live, stateMap(s)) {
		t.Fatalf("u1 routes to %q after the full sync and what followed it, state says s2: the batch was lost", rt.live["u1"])
	}
}

// A reload of the state while a target reads its live map: the full sync
// that follows checked the new state, so the map file may be written from
// it (it was never written again: the target recorded the load before).
func TestFullSyncDuringReloadAllowsFile(t *testing.T) {
	fs := newFakeStore(users(10, "s1"))
	frt := &fakeRuntime{live: users(10, "s1")}
	rt := &hookRuntime{fakeRuntime: frt}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/test.sock"},
		MaxDeleteShare: DefaultMaxDeleteShare, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, fs, dialFake(rt))
	if err != nil {
		t.Fatal(err)
	}
	frt.mapName = s.cfg.MapName
	ctx := context.Background()
	tg := s.targets[0]
	if !tg.holdLease(ctx) {
		t.Fatal("no lease")
	}
	if err := s.load(ctx); err != nil {
		t.Fatal(err)
	}
	rt.onDump = func() {
		rt.onDump = nil
		fs.set("u1", "s2")
		if err := s.load(ctx); err != nil { // the reader reloads (a gap, a count drift)
			t.Fatal(err)
		}
	}
	if err := tg.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	if bs, ok, _ := s.state.since(tg.seq); !ok || len(bs) != 0 {
		t.Fatalf("target not at the state after its full sync: ok %v, %d batches behind", ok, len(bs))
	}
	if !s.fileAllowed(ctx) {
		t.Fatal("the target reconciled with the state's current load, yet the map file may not be written")
	}
}

// A large batch folds (a swap of the whole map to the state). If the
// reader reloaded the state meanwhile (Redis came back empty), the swap must
// not install the reloaded state: only a full sync, behind the delete
// guard, may.
func TestFoldAfterReloadKeepsDeleteGuard(t *testing.T) {
	s, st, rt, _ := newLoop(t, users(1000, "s1"), users(1000, "s1"))
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	tg := s.targets[0]
	for i := 0; i < 100; i++ { // past ReplaceAbove: a fold
		st.set(fmt.Sprintf("u%d", i), "s2")
	}
	_, applied, _ := s.state.position()
	changes, _, _ := st.ReadLog(ctx, applied, 1000, 0)
	s.publish(changes)
	bs, ok, _ := s.state.since(tg.seq)
	if !ok || len(bs) == 0 {
		t.Fatal("nothing to apply")
	}
	// Redis loses its data (FLUSHALL) and the reader reloads, while the
	// target holds the batch.
	st.mu.Lock()
	st.hash, st.log = map[string]string{}, nil
	st.mu.Unlock()
	if err := s.load(ctx); err != nil {
		t.Fatal(err)
	}
	tg.apply(ctx, bs) // an error is fine: the target then doubts and full-syncs behind the guard
	if len(rt.live) < 1000 {
		t.Fatalf("the live map went from 1000 to %d entries without the delete guard", len(rt.live))
	}
	tg.needFull = true
	if err := tg.fullSync(ctx); err == nil || !errors.Is(err, errRefused) {
		t.Fatalf("full sync against an emptied Redis: %v, want refused", err)
	}
}

// Redis comes back empty: the delete guard refuses to empty the live map,
// and the map file must not be emptied either, even when the syncer stops
// meanwhile (its final flush wrote the reloaded, empty state).
func TestStopAfterRefusedReloadKeepsFile(t *testing.T) {
	fs := newFakeStore(users(100, "s1"))
	rt := &fakeRuntime{live: users(100, "s1")}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/test.sock"},
		Heartbeat: 50 * time.Millisecond, ClaimTTL: 5 * time.Second, FlushDelay: time.Millisecond,
		MaxDeleteShare: DefaultMaxDeleteShare, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, fs, dialFake(rt))
	if err != nil {
		t.Fatal(err)
	}
	rt.mapName = s.cfg.MapName
	fs.set("u1", "s1") // a log entry, so that emptying Redis makes a gap
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.WaitFor(t, 10*time.Second, "the syncer ready, the map file written", func() error {
		if st := s.Status(); !st.Ready || st.FileWritten.IsZero() {
			return fmt.Errorf("state %s, problem %q", st.State, st.Problem)
		}
		return nil
	})
	fs.mu.Lock()
	fs.hash, fs.log = map[string]string{}, nil // FLUSHALL
	fs.mu.Unlock()
	testenv.WaitFor(t, 10*time.Second, "the delete guard refusing", func() error {
		if st := s.Status(); st.Refused == 0 {
			return fmt.Errorf("refused %d, state %s", st.Refused, st.State)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil
	mf, err := maps.ReadMapFile(s.cfg.MapFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(mf.Entries) != 100 {
		t.Fatalf("the map file holds %d entries after the stop, want the 100 the guard kept", len(mf.Entries))
	}
}

// The same for the drift check of the map file: a file edited by hand while
// the guard refuses a reloaded, empty state is not rewritten from it.
func TestFileDriftAfterRefusedReloadKeepsFile(t *testing.T) {
	s, st, _, _ := newLoop(t, users(100, "s1"), users(100, "s1"))
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.fileActive.Load() {
		t.Fatal("the map file was not written")
	}
	st.mu.Lock()
	st.hash = map[string]string{} // FLUSHALL
	st.mu.Unlock()
	if err := s.load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.targets[0].fullSync(ctx); !errors.Is(err, errRefused) {
		t.Fatalf("full sync: %v, want refused", err)
	}
	f, err := os.OpenFile(s.cfg.MapFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("handmade s1\n")
	f.Close()
	s.checkFile(ctx)
	mf, err := maps.ReadMapFile(s.cfg.MapFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(mf.Entries) < 100 {
		t.Fatalf("the map file holds %d entries, want the 100 the guard kept", len(mf.Entries))
	}
}

// A map file in a directory that does not exist (a typo in --map-file):
// the syncer cannot take the file's lease, so it never writes the file nor
// becomes ready; its status must say why instead of "starting" forever.
func TestMapFileDirMissingIsAProblem(t *testing.T) {
	fs := newFakeStore(users(3, "s1"))
	rt := &fakeRuntime{live: users(3, "s1")}
	file := t.TempDir() + "/no/such/dir/users.map"
	s, err := New(Config{Name: "t", MapName: "/etc/haproxy/users.map", MapFile: file, Targets: []string{"/run/test.sock"},
		MaxDeleteShare: DefaultMaxDeleteShare, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, fs, dialFake(rt))
	if err != nil {
		t.Fatal(err)
	}
	rt.mapName = s.cfg.MapName
	ctx := context.Background()
	if !s.targets[0].holdLease(ctx) {
		t.Fatal("no lease")
	}
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	s.setLoopProblem(ctx, nil)
	st := s.Status()
	if st.Ready || !strings.Contains(st.Problem, file) {
		t.Fatalf("status %s, problem %q: want not ready, naming %s", st.State, st.Problem, file)
	}
}

// A socket in a directory that does not exist (HAProxy not started yet, or
// a typo in --socket): the target cannot be identified, so its lease cannot
// be taken; its status must say why instead of "starting" with no problem.
func TestSocketDirMissingIsAProblem(t *testing.T) {
	fs := newFakeStore(users(3, "s1"))
	rt := &fakeRuntime{live: users(3, "s1")}
	sock := t.TempDir() + "/no/such/dir/haproxy.sock"
	s, err := New(Config{Name: "t", MapName: "/etc/haproxy/users.map", MapFile: t.TempDir() + "/users.map", Targets: []string{sock},
		MaxDeleteShare: DefaultMaxDeleteShare, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, fs, dialFake(rt))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if s.targets[0].holdLease(ctx) {
		t.Fatal("leased a target whose socket directory does not exist")
	}
	st := s.Status()
	if len(st.Targets) != 1 || !strings.Contains(st.Targets[0].Problem, "/no/such/dir") {
		t.Fatalf("targets %+v: want one, its problem naming the missing directory", st.Targets)
	}
}

// A write of the map file failed, then another syncer took the file's
// lease and writes it: the old failure is not this syncer's state any more
// (it was not ready for good, as no write of its own would clear it).
func TestFileFailureThenLeaseLostIsNotAProblem(t *testing.T) {
	s, st, _, _ := newLoop(t, users(3, "s1"), nil)
	ctx := context.Background()
	if err := s.fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	good := s.file.path
	s.file.path = "/nonexistent-dir/users.map"
	s.file.markDirty()
	if err := s.file.flushNow(s); err == nil {
		t.Fatal("write to a missing directory succeeded")
	}
	s.file.path = good
	// This syncer paused past the lease's lifetime; another took the file.
	s.fileLease.mu.Lock()
	key := s.fileLease.key
	s.fileLease.at = time.Time{}
	s.fileLease.mu.Unlock()
	st.mu.Lock()
	st.claims[key] = "other"
	st.mu.Unlock()
	if s.fileAllowed(ctx) {
		t.Fatal("file allowed while another syncer holds its lease")
	}
	s.setLoopProblem(ctx, nil)
	if got := s.Status(); !got.Ready {
		t.Fatalf("status %s (%q): want ready, another syncer writes the file", got.State, got.Problem)
	}
}

// One HAProxy named twice in two spellings would get two target
// goroutines of one syncer, both holding its lease (same holder) and both
// writing its live map: refused like a target given twice.
func TestSameTargetInTwoSpellingsIsRefused(t *testing.T) {
	for _, pair := range [][2]string{
		{"/run/haproxy/admin.sock", "unix@/run/haproxy/admin.sock"},
		{"127.0.0.1:9999", "ipv4@127.0.0.1:9999"},
	} {
		_, err := New(Config{Name: "t", MapName: "/m.map", Targets: pair[:], Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
			newFakeStore(nil), dialFake(&fakeRuntime{}))
		if err == nil || !strings.Contains(err.Error(), pair[1]) {
			t.Errorf("targets %q: err %v, want one naming %q as given twice", pair, err, pair[1])
		}
	}
}

// Two targets; Redis comes back empty. The target whose live map holds the
// users refuses the reload (delete guard), but a target whose live map was
// empty anyway (a new node) deletes nothing and accepts it; the map file,
// shared by both, is then written from the empty state, and target A's
// HAProxy loses every user at its next reload.
func TestEmptyTargetAcceptingReloadKeepsFile(t *testing.T) {
	fs := newFakeStore(users(100, "s1"))
	rts := map[string]*fakeRuntime{"/run/a.sock": {live: users(100, "s1")}, "/run/b.sock": {live: map[string]string{}}}
	s, err := New(Config{Name: "t", MapName: t.TempDir() + "/users.map", Targets: []string{"/run/a.sock", "/run/b.sock"},
		MaxDeleteShare: DefaultMaxDeleteShare, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, fs,
		func(addr string) (Runtime, error) { return rts[addr], nil })
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, rt := range rts {
		rt.mapName = s.cfg.MapName
	}
	for _, tg := range s.targets {
		if !tg.holdLease(ctx) {
			t.Fatal("no lease")
		}
	}
	if err := s.fullSync(ctx); err != nil { // target a, and the file
		t.Fatal(err)
	}
	fs.mu.Lock()
	fs.hash = map[string]string{} // FLUSHALL
	fs.mu.Unlock()
	if err := s.load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.targets[0].fullSync(ctx); !errors.Is(err, errRefused) {
		t.Fatalf("target a: %v, want refused", err)
	}
	if err := s.targets[1].fullSync(ctx); err != nil {
		t.Fatal(err)
	}
	if s.fileAllowed(ctx) {
		s.file.flushNow(s)
	}
	mf, err := maps.ReadMapFile(s.cfg.MapFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(mf.Entries) != 100 {
		t.Fatalf("the map file holds %d entries, want the 100 target a's guard kept", len(mf.Entries))
	}
}

// A target's state change is logged with its position, which its own
// goroutine updates meanwhile (go test -race).
func TestTargetStateLogDoesNotRace(t *testing.T) {
	fs := newFakeStore(nil)
	s, err := New(Config{Name: "t", MapName: "/m.map", Targets: []string{"/run/a.sock", "/run/b.sock"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, fs, dialFake(&fakeRuntime{live: map[string]string{}}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tg := s.targets[0]
	tg.active.Store(true)
	tg.inSync.Store(true)
	done, stop := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.updateTarget(tg, func(st *TargetStatus) { st.Applied = fmt.Sprintf("%d-0", i) })
		}
	}()
	defer func() { close(stop); <-done }()
	for i := range 2000 {
		if i%2 == 0 {
			tg.setProblem(ctx, fail(kindHAProxy, errors.New("down")))
		} else {
			tg.setProblem(ctx, nil) // "target ready", with its log_id
		}
	}
}

// A syncer stopped while it waits for its name (held by a running syncer)
// never held it: it must not report under it (its "starting" report
// replaced the running one's until that one's next heartbeat).
func TestStopWhileWaitingForNameDoesNotReport(t *testing.T) {
	fs := newFakeStore(nil)
	fs.claims["name:t"] = "other-instance"
	s, err := New(Config{Name: "t", MapName: "/m.map", Targets: []string{"/run/a.sock"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, fs, dialFake(&fakeRuntime{live: map[string]string{}}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	cancel() // while it waits (or before it starts to)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if len(fs.reports) > 0 {
		t.Fatalf("reported under a name it never held: %+v", fs.reports[0])
	}
}

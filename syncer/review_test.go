package syncer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"

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

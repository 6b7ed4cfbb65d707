package syncer

import (
	"fmt"
	"testing"
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

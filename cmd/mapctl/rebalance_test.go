package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/shardmap/shardmap/move"
	"github.com/shardmap/shardmap/rebalance"
)

// What rebalance plan --write writes, mapctl move --from-file reads back as
// the same moves, header included, for users and for logical shards.
func TestPlanFileReadsBackAsMoves(t *testing.T) {
	p := rebalance.Plan{Moves: []rebalance.Move{{Subject: "12", From: "shard0", To: "shard1"}, {Subject: "7", From: "shard0", To: "shard2"}}}
	rp := &rebalanceReport{Mode: "users", Figure: "users", Plan: p}
	for _, logical := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "plan.txt")
		var b bytes.Buffer
		if err := move.WritePlan(&b, rp.header(), p.PlanLines(logical)); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := readPlan(path)
		if err != nil {
			t.Fatalf("logical=%v: %v", logical, err)
		}
		if len(got) != len(p.Moves) {
			t.Fatalf("logical=%v: %d moves read, want %d", logical, len(got), len(p.Moves))
		}
		for i, m := range p.Moves {
			kind := move.KindUser
			if logical {
				kind = move.KindLogical
			}
			if g := got[i]; g.Kind != kind || g.Subject != m.Subject || g.To != m.To {
				t.Errorf("logical=%v: move %d read as %+v, want %+v", logical, i, g, m)
			}
		}
	}
}

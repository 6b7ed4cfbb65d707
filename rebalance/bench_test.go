package rebalance

import "testing"

func BenchmarkPropose20kMovesOf200kUsers(b *testing.B) {
	in := Input{Measure: ByUsers, Shards: up("s0", "s1", "s2", "s3"), Subjects: users("u", "s0", 200000), MaxMoves: 20000}
	for b.Loop() {
		if _, err := Propose(in); err != nil {
			b.Fatal(err)
		}
	}
}

package maps

import (
	"fmt"
	"path/filepath"
	"testing"
)

// The syncer rewrites the whole map file (encode, sorted, atomic write) at
// most every flush delay while changes arrive: its cost bounds how far the
// file can lag at a given map size.
func BenchmarkWriteMapFile(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("%d", n), func(b *testing.B) {
			mf := MapFile{LogID: "1-0"}
			for i := 0; i < n; i++ {
				mf.Entries = append(mf.Entries, Assignment{User: fmt.Sprintf("user%09d", (i*7919)%n), Shard: "shard1"})
			}
			path := filepath.Join(b.TempDir(), "users.map")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				mf.LogID = fmt.Sprintf("%d-0", i+2) // a new header: always rewritten
				if _, err := WriteMapFile(path, mf, 0o640); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

package syncer

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the GOGC a syncer process runs with unless the GOGC
// environment variable says otherwise. The state's large parts (the name
// arena and the index of the user table, the frozen lists of a swap or a
// file write) hold no pointers, so a collection costs little CPU however
// big they are. Collecting at 1.25x the live heap instead of Go's 2x keeps
// a 1M-user syncer's peak RSS under 150 MB: at 1.5x it reached 146-160 MB
// in make bench's live scenarios, at 1.25x 129-133 MB, for the same CPU
// during the import (docs/MEMORY.md, shardmap-bench -only memory).
const DefaultGCPercent = 25

// TuneMemory sets the garbage collector of a syncer's process: GOGC
// DefaultGCPercent unless GOGC is set in the environment, and, when limit is
// positive, a soft memory limit of limit bytes (debug.SetMemoryLimit): the
// collector then works harder as the process nears it, but never fails an
// allocation for it. With limit 0, GOMEMLIMIT in the environment (read by the
// Go runtime itself) applies, or no limit. Call it once, from main.
func TuneMemory(limit int64) {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(DefaultGCPercent)
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
	}
}

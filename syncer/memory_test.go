package syncer

import (
	"os"
	"runtime/debug"
	"testing"
)

func TestTuneMemory(t *testing.T) {
	oldGC := debug.SetGCPercent(100)
	oldLimit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(oldGC); debug.SetMemoryLimit(oldLimit) })

	t.Setenv("GOGC", "")
	TuneMemory(0)
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC set in the environment: TuneMemory changed the GC percent to %d", got)
	}
	if got := debug.SetMemoryLimit(-1); got != oldLimit {
		t.Fatalf("limit 0 changed the memory limit to %d", got)
	}
	t.Run("defaults", func(t *testing.T) {
		unsetenv(t, "GOGC")
		TuneMemory(128 << 20)
		if got := debug.SetGCPercent(100); got != DefaultGCPercent {
			t.Fatalf("GC percent %d, want %d", got, DefaultGCPercent)
		}
		if got := debug.SetMemoryLimit(-1); got != 128<<20 {
			t.Fatalf("memory limit %d, want %d", got, 128<<20)
		}
	})
}

// unsetenv removes key for the test and puts it back after.
func unsetenv(t *testing.T, key string) {
	t.Helper()
	t.Setenv(key, "") // registers the restore
	os.Unsetenv(key)
}

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mapctl move --from-file: a missing file and a bad line are bad input
// (exit 2) naming the file; the format itself is tested in package move.
func TestReadPlanFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := readPlan(filepath.Join(dir, "none")); exitCode(err) != exitUsage {
		t.Errorf("missing file: %v", err)
	}
	p := filepath.Join(dir, "plan.txt")
	if err := os.WriteFile(p, []byte("alice shard1\nbob\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readPlan(p); exitCode(err) != exitUsage || !strings.Contains(err.Error(), p+":2") {
		t.Errorf("bad line: %v, want exit 2 naming %s:2", err, p)
	}
}

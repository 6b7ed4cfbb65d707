package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/move"
)

func TestReadPlan(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "plan.txt")
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plan, err := readPlan(write("# moves\n\nalice shard1\n  logical:7   shard2  \n"))
	if err != nil || len(plan) != 2 || plan[0].subject != "alice" || plan[0].kind != move.KindUser ||
		plan[1].subject != "7" || plan[1].kind != move.KindLogical || plan[1].to != "shard2" || plan[1].line != 4 {
		t.Fatalf("plan %+v %v", plan, err)
	}
	for _, c := range []struct{ text, want string }{
		{"alice\n", "plan.txt:1"},
		{"alice shard1 extra\n", "want USER SHARD"},
		{"alice bad/shard\n", "shards are"},
		{"#x\nal\"ice shard1\n", "plan.txt:2"},
		{"alice shard1\nalice shard2\n", "line 1 already"},
	} {
		_, err := readPlan(write(c.text))
		var u usageError
		if err == nil || !strings.Contains(err.Error(), c.want) || !(errors.As(err, &u) || errors.Is(err, maps.ErrInvalid)) {
			t.Errorf("%q: %v, want a usage error with %q", c.text, err, c.want)
		}
	}
	if _, err := readPlan(filepath.Join(dir, "none")); exitCode(err) != exitUsage {
		t.Errorf("missing file: %v", err)
	}
}

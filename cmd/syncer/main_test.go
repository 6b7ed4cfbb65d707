package main

import (
	"errors"
	"reflect"
	"testing"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/syncer"
)

func TestEveryCommandHasAnExample(t *testing.T) {
	cli.WalkCommands(newRoot(), func(c *cobra.Command) {
		if c.Example == "" {
			t.Errorf("%s has no example", c.CommandPath())
		}
	})
}

// Flags given the standard flag package's way keep working.
func TestSingleDashLong(t *testing.T) {
	got := singleDashLong(newRoot(), []string{"-redis", "redis://h:1", "-map=/m", "-v", "--socket", "/s", "-x", "--", "-name"})
	want := []string{"--redis", "redis://h:1", "--map=/m", "-v", "--socket", "/s", "-x", "--", "-name"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestExitCode(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("redis away"), 1},
		{cli.Usagef("bad"), 2},
		{loggedError{syncer.ErrNameTaken}, 2},
		{loggedError{errors.New("x")}, 1},
	} {
		if got := exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

func TestBadFlagValuesExit2(t *testing.T) {
	for _, args := range [][]string{
		{"--socket", "/s", "--map", "/m", "--file-mode", "999"},
		{"--socket", "/s", "--map", "/m", "--max-delete-share", "2"},
		{"--socket", "/s", "--map", "/m", "--log-format", "xml"},
		{"--socket", "/s", "--map", "/m", "--log-level", "loud"},
		{"--map", "/m"},
	} {
		if got := run(args); got != 2 {
			t.Errorf("syncer %v: exit %d, want 2", args, got)
		}
	}
}

// "-help", which the standard flag package took, still prints the help and
// exits 0 (found by review).
func TestSingleDashHelp(t *testing.T) {
	if code := run([]string{"-help"}); code != 0 {
		t.Fatalf("syncer -help: exit %d, want 0", code)
	}
}

package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestBuildFrom(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	b := buildFrom(bi, "")
	want := Build{Version: "v1.2.0", Revision: "abc123", Time: "2026-01-02T03:04:05Z", Modified: true, GoVersion: "go1.26.8"}
	if b != want {
		t.Fatalf("buildFrom = %+v, want %+v", b, want)
	}
	if got := buildFrom(bi, "v9.9.9").Version; got != "v9.9.9" {
		t.Errorf("link-time Version ignored: %q", got)
	}
	text := b.String("mapctl")
	for _, w := range []string{"mapctl v1.2.0\n", "revision: abc123 (modified)", "time:     2026-01-02T03:04:05Z", "go:       go1.26.8"} {
		if !strings.Contains(text, w) {
			t.Errorf("String lacks %q:\n%s", w, text)
		}
	}
	if none := buildFrom(nil, ""); none.Version != "(devel)" || none.Revision != "" || strings.Contains(none.String("x"), "revision") {
		t.Errorf("no build info: %+v", none)
	}
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(&buf, LogAuto, "WARN") // a buffer is no terminal: JSON
	if err != nil {
		t.Fatal(err)
	}
	log.Info("dropped")
	log.Warn("kept", "k", 1)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil || m["msg"] != "kept" {
		t.Fatalf("auto on a buffer: %q (%v), want one JSON line with msg kept", buf.String(), err)
	}
	buf.Reset()
	log, _ = NewLogger(&buf, LogText, "debug")
	log.Debug("full sync")
	if !strings.Contains(buf.String(), `msg="full sync"`) {
		t.Errorf("text: %q", buf.String())
	}
	for _, bad := range [][2]string{{"xml", "info"}, {"text", "loud"}} {
		_, err := NewLogger(&buf, bad[0], bad[1])
		var u UsageError
		if !errors.As(err, &u) {
			t.Errorf("NewLogger(%q, %q) = %v, want a UsageError", bad[0], bad[1], err)
		}
	}
}

func TestConventions(t *testing.T) {
	root := &cobra.Command{Use: "tool", Example: "  tool", RunE: func(*cobra.Command, []string) error { return nil }}
	group := &cobra.Command{Use: "group", Example: "  tool group leaf"}
	group.AddCommand(&cobra.Command{Use: "leaf", Example: "  tool group leaf", RunE: func(*cobra.Command, []string) error { return nil }})
	root.AddCommand(group)
	Conventions(root)
	WalkCommands(root, func(c *cobra.Command) {
		if c.Example == "" {
			t.Errorf("%s has no example", c.CommandPath())
		}
	})
	for _, args := range [][]string{{"bogus"}, {"--bogus"}, {"group", "bogus"}, {"version", "extra"}} {
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(args)
		err := root.Execute()
		var u UsageError
		if !errors.As(err, &u) {
			t.Errorf("tool %v: %v, want a UsageError", args, err)
		}
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		if err := root.Execute(); err != nil || !strings.HasPrefix(out.String(), "tool ") || !strings.Contains(out.String(), "go:") {
			t.Errorf("tool %v: %v %q", args, err, out.String())
		}
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		c, _, err := root.Find([]string{"completion", sh})
		if err != nil || c.Name() != sh || !Housekeeping(c) {
			t.Errorf("completion %s: %v %v", sh, c, err)
		}
	}
	if !Housekeeping(group) || Housekeeping(group.Commands()[0]) {
		t.Error("a group showing its help needs nothing; its subcommands may")
	}
}

package main

import (
	"testing"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/internal/cli"
)

func TestEveryCommandHasAnExample(t *testing.T) {
	root, _ := newRoot()
	cli.WalkCommands(root, func(c *cobra.Command) {
		if c.Example == "" {
			t.Errorf("%s has no example", c.CommandPath())
		}
	})
}

// config render keeps its own -o FILE; the four reading commands take -o
// table|json, and refuse anything else.
func TestOutputFlags(t *testing.T) {
	root, _ := newRoot()
	for _, path := range [][]string{{"get"}, {"list"}, {"status"}, {"syncers"}} {
		c, _, err := root.Find(path)
		if err != nil {
			t.Fatal(err)
		}
		f := c.Flags().ShorthandLookup("o")
		if f == nil || f.Name != "output" || f.Value.Type() != "table|json" {
			t.Errorf("%v: -o is %v", path, f)
			continue
		}
		if err := f.Value.Set("yaml"); err == nil {
			t.Errorf("%v: -o yaml accepted", path)
		}
	}
	render, _, _ := root.Find([]string{"config", "render"})
	if f := render.Flags().ShorthandLookup("o"); f == nil || f.Value.Type() != "string" {
		t.Errorf("config render -o is %v, want its file path", f)
	}
}

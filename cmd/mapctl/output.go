package main

import (
	"encoding/json"
	"io"

	"github.com/spf13/cobra"
)

// output is the value of --output/-o on get, list, status and syncers:
// "table" (the text for people, the default) or "json" (one JSON document
// with snake_case keys, for scripts). It is a flag of each of those commands,
// not a global one, so config render keeps its own -o/--output FILE.
type output string

const (
	outTable output = "table"
	outJSON  output = "json"
)

func (o *output) String() string { return string(*o) }
func (o *output) Type() string   { return "table|json" }

// Set accepts table or json; anything else is a flag error (exit 2).
func (o *output) Set(v string) error {
	switch output(v) {
	case outTable, outJSON:
		*o = output(v)
		return nil
	}
	return usagef("want table or json, got %q", v)
}

// outputFlag adds --output/-o to c and returns where its value goes.
func outputFlag(c *cobra.Command) *output {
	o := outTable
	c.Flags().VarP(&o, "output", "o", "output format: table or json (one JSON document, snake_case keys)")
	c.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{string(outTable), string(outJSON)}, cobra.ShellCompDirectiveNoFileComp))
	return &o
}

// writeJSON writes v as one indented JSON document and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// assignmentJSON is one assignment in get's and list's JSON.
type assignmentJSON struct {
	User  string `json:"user"`
	Shard string `json:"shard"`
}

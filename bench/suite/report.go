package suite

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Report is everything docs/BENCHMARKS.md says: the machine, the commands,
// one section per scenario and the targets. WriteMarkdown renders it; every
// figure in it is measured by Run.
type Report struct {
	Title    string
	Intro    []string // paragraphs
	Machine  []KV     // CPU model, cores, versions, load
	Commands []string // the exact commands that produced the figures
	Sections []Section
	Targets  []Target
	Notes    []string // paragraphs after the targets
}

// KV is one line of the machine table.
type KV struct{ Key, Value string }

// Section is one scenario's figures.
type Section struct {
	Title  string
	Text   []string // paragraphs before the table
	Table  *Table
	Charts []Chart // PNGs beside the doc
	After  []string
}

// Table is a Markdown table; every row has len(Header) cells.
type Table struct {
	Header []string
	Rows   [][]string
}

// Chart is a PNG written beside the doc (Path relative to the doc).
type Chart struct{ Alt, Path string }

// Target is one target of the scale issue and what was measured for it.
type Target struct {
	Name string // what is measured
	Want string // the target, e.g. "<= 5 ms"
	Got  string // the measured figure, "not measured" when the scenario did not run
	Met  bool
	Miss string // by how much it is missed (empty when met)
	// Bound is what bounds a missed target, from this run's figures and
	// profiles where it can say (empty when met).
	Bound string
}

// WriteMarkdown renders r. Cells have '|' escaped and newlines folded, so a
// value cannot break the table.
func WriteMarkdown(r *Report) []byte {
	var b bytes.Buffer
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	p("# %s", r.Title)
	p("")
	for _, t := range r.Intro {
		p("%s", t)
		p("")
	}
	if len(r.Machine) > 0 {
		p("## The machine")
		p("")
		writeTable(&b, &Table{Header: []string{"", ""}, Rows: kvRows(r.Machine)})
		p("")
	}
	if len(r.Commands) > 0 {
		p("## The commands")
		p("")
		p("```sh")
		for _, c := range r.Commands {
			p("%s", c)
		}
		p("```")
		p("")
	}
	for _, s := range r.Sections {
		p("## %s", s.Title)
		p("")
		for _, t := range s.Text {
			p("%s", t)
			p("")
		}
		if s.Table != nil {
			writeTable(&b, s.Table)
			p("")
		}
		for _, c := range s.Charts {
			p("![%s](%s)", c.Alt, c.Path)
			p("")
		}
		for _, t := range s.After {
			p("%s", t)
			p("")
		}
	}
	if len(r.Targets) > 0 {
		p("## Targets")
		p("")
		t := &Table{Header: []string{"target", "want", "measured", "met", "missed by", "what bounds it"}}
		for _, g := range r.Targets {
			met := "no"
			if g.Met {
				met = "yes"
			}
			bound := g.Bound
			if g.Met {
				bound = ""
			}
			t.Rows = append(t.Rows, []string{g.Name, g.Want, g.Got, met, g.Miss, bound})
		}
		writeTable(&b, t)
		p("")
	}
	for _, t := range r.Notes {
		p("%s", t)
		p("")
	}
	return bytes.TrimRight(b.Bytes(), "\n")
}

func kvRows(kvs []KV) [][]string {
	rows := make([][]string, len(kvs))
	for i, kv := range kvs {
		rows[i] = []string{kv.Key, kv.Value}
	}
	return rows
}

func writeTable(b *bytes.Buffer, t *Table) {
	row := func(cells []string) {
		b.WriteString("|")
		for i := range t.Header {
			c := ""
			if i < len(cells) {
				c = cells[i]
			}
			b.WriteString(" " + cell(c) + " |")
		}
		b.WriteString("\n")
	}
	row(t.Header)
	b.WriteString("|")
	for range t.Header {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		row(r)
	}
}

func cell(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", `\|`)
}

// trimFloat formats f with at most prec decimals, trailing zeros dropped.
func trimFloat(f float64, prec int) string {
	s := strconv.FormatFloat(f, 'f', prec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// ratio formats a/b as "0.87"; "n/a" when b is 0.
func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64)
}

// count formats n with thin separators: 1234567 -> "1,234,567".
func count(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

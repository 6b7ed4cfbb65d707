package move

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/shardmap/shardmap/maps"
)

// The plan file (mapctl move --from-file, mapctl rebalance plan --write):
// one move a line, "USER SHARD" or "logical:L SHARD", fields separated by
// spaces or tabs; blank lines and lines starting with # are comments.

// logicalPrefix marks a logical shard's line.
const logicalPrefix = "logical:"

// PlanLine is one move of a plan file.
type PlanLine struct {
	Line    int    // its line number in the file (1-based); 0 when not read from one
	Kind    Kind   // KindUser or KindLogical
	Subject string // the user (ID), or the logical shard's number
	To      string // destination shard
}

// String is the line as WritePlan writes it.
func (p PlanLine) String() string {
	if p.Kind == KindLogical {
		return logicalPrefix + p.Subject + " " + p.To
	}
	return p.Subject + " " + p.To
}

// PlanError is a plan file line that breaks a rule. It wraps
// maps.ErrInvalid (bad input), and Err when the rule is another package's.
type PlanError struct {
	File string // the file's name as the caller gave it
	Line int
	Text string // the line, trimmed
	Rule string // what the line should be
	Err  error  // the rule's own error, or nil
}

func (e *PlanError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s:%d: %q: %s: %v", e.File, e.Line, e.Text, e.Rule, e.Err)
	}
	return fmt.Sprintf("%s:%d: %q: %s", e.File, e.Line, e.Text, e.Rule)
}

// Unwrap returns maps.ErrInvalid and Err.
func (e *PlanError) Unwrap() []error { return []error{maps.ErrInvalid, e.Err} }

// ReadPlan reads a plan file from r; name is the file's name for errors.
// It checks every line before returning: two fields, a user name
// (maps.ValidateUser) or "logical:" and a number without leading zeros, a
// shard name (maps.ValidateShard) that is not the hold backend, and no
// subject twice. A line that breaks a rule is a *PlanError naming the file,
// the line and the rule (it wraps maps.ErrInvalid); a read error is wrapped
// with the file's name.
func ReadPlan(r io.Reader, name string) ([]PlanLine, error) {
	var out []PlanLine
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		bad := func(rule string, err error) error {
			return &PlanError{File: name, Line: n, Text: text, Rule: rule, Err: err}
		}
		fs := strings.Fields(text)
		if len(fs) != 2 {
			return nil, bad("want USER SHARD or logical:L SHARD", nil)
		}
		p := PlanLine{Line: n, Kind: KindUser, Subject: fs[0], To: fs[1]}
		if l, ok := strings.CutPrefix(fs[0], logicalPrefix); ok {
			p.Kind, p.Subject = KindLogical, l
			if v, err := strconv.Atoi(l); err != nil || v < 0 || strconv.Itoa(v) != l {
				return nil, bad("logical shard: want a number without leading zeros", nil)
			}
		} else if err := maps.ValidateUser(p.Subject); err != nil {
			return nil, bad("user", err)
		}
		if err := maps.ValidateShard(p.To); err != nil {
			return nil, bad("shard", err)
		}
		if p.To == maps.HoldShard {
			return nil, bad(maps.HoldShard+" is the holding backend, never a destination", nil)
		}
		if prev, ok := seen[fs[0]]; ok {
			return nil, bad(fmt.Sprintf("%s is moved on line %d already: one move per subject", fs[0], prev), nil)
		}
		seen[fs[0]] = n
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return out, nil
}

// WritePlan writes a plan file to w: header as "# " comment lines (blank
// lines of it dropped), then one line per move, in order. ReadPlan reads it
// back to the same moves (Line aside) when they obey its rules.
func WritePlan(w io.Writer, header string, lines []PlanLine) error {
	bw := bufio.NewWriter(w)
	for _, l := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
		if l != "" {
			bw.WriteString("# " + l + "\n")
		}
	}
	for _, p := range lines {
		if p.Kind != KindUser && p.Kind != KindLogical {
			return fmt.Errorf("%w: plan line %q: kind %q: want user or logical", maps.ErrInvalid, p.String(), p.Kind)
		}
		bw.WriteString(p.String() + "\n")
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write plan: %w", err)
	}
	return nil
}

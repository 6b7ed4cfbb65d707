package runtime

import (
	"context"
	"encoding/csv"
	"fmt"
	"strconv"
	"strings"
)

// BackendStat is one backend's figures from "show stat" (its BACKEND row),
// as HAProxy 2.6 and 3.0 both report them. HAProxy has no per-backend
// request rate (req_rate is filled in on frontends only, on both versions):
// a request rate is the difference of RequestsTotal between two readings
// divided by the time between them.
type BackendStat struct {
	Name string
	// Status is HAProxy's status of the backend: "UP" or "DOWN" (with no
	// usable server), as HAProxy writes it.
	Status string
	// ServersUp is how many servers HAProxy can send traffic to: the
	// backend's act + bck (usable active and backup servers).
	ServersUp int
	// Servers counts the backend's server rows, whatever their state.
	Servers int
	// Sessions is the current session count (scur).
	Sessions int64
	// SessionRate is the sessions per second over the last second (rate).
	SessionRate int64
	// SessionsTotal is the sessions since HAProxy started or its counters
	// were cleared (stot).
	SessionsTotal int64
	// RequestsTotal is the HTTP requests since HAProxy started or its
	// counters were cleared (req_tot); HasRequests is false, and
	// RequestsTotal 0, when HAProxy gave none (a backend in tcp mode).
	RequestsTotal int64
	HasRequests   bool
}

// statCmd asks for the backend (2) and server (4) rows of every proxy.
const statCmd = "show stat -1 6 -1"

// BackendStats returns every backend's figures from "show stat", in
// HAProxy's order. The reply is checked whole: a cut reply, a missing
// column, a row with too few fields, a number that is not a non-negative
// integer, a backend listed twice or a server row for a backend with no
// BACKEND row is an error wrapping ErrBadReply (or ErrTruncated /
// ErrNoAnswer for a reply that ended early), never a partial list.
func (c *Client) BackendStats(ctx context.Context) ([]BackendStat, error) {
	ctx, cancel := c.bound(ctx, 0)
	defer cancel()
	var p statParser
	if err := c.stream(ctx, statCmd, p.line); err != nil {
		return nil, withCmd("show_stat", err)
	}
	list, err := p.done()
	if err != nil {
		return nil, withCmd("show_stat", fmt.Errorf("runtime %s on %s: %w", statCmd, c.path, err))
	}
	return list, nil
}

// statParser reads "show stat" CSV one line at a time.
type statParser struct {
	col     map[string]int
	need    int // the fewest fields a row must have
	list    []BackendStat
	index   map[string]int // backend -> position in list
	servers map[string]int // server rows per backend
	rows    int
	err     error
}

// statColumns must all be in the header; rate and req_tot may be missing.
var statColumns = []string{"pxname", "svname", "scur", "stot", "status", "act", "bck"}

func (p *statParser) line(line string) error {
	if p.err != nil {
		return nil
	}
	p.rows++
	if p.col == nil {
		p.err = p.header(line)
		return nil
	}
	if line == "" {
		p.err = fmt.Errorf("%w: empty line %d inside the CSV", ErrBadReply, p.rows)
		return nil
	}
	r := csv.NewReader(strings.NewReader(line))
	r.FieldsPerRecord = -1
	r.LazyQuotes = true
	row, err := r.Read()
	if err != nil {
		p.err = fmt.Errorf("%w: line %d is not CSV: %v", ErrBadReply, p.rows, err)
		return nil
	}
	if len(row) < p.need {
		p.err = fmt.Errorf("%w: line %d has %d fields, want at least %d: %.80q", ErrBadReply, p.rows, len(row), p.need, line)
		return nil
	}
	p.err = p.row(row)
	return nil
}

func (p *statParser) header(line string) error {
	h, ok := strings.CutPrefix(line, "# ")
	if !ok || !strings.HasPrefix(h, "pxname,svname,") {
		return fmt.Errorf("%w: not a show stat header: %.80q", ErrBadReply, line)
	}
	p.col = map[string]int{}
	for i, name := range strings.Split(h, ",") {
		if _, dup := p.col[name]; !dup && name != "" {
			p.col[name] = i
		}
	}
	for _, name := range statColumns {
		i, ok := p.col[name]
		if !ok {
			return fmt.Errorf("%w: no %s column in the header", ErrBadReply, name)
		}
		p.need = max(p.need, i+1)
	}
	p.index, p.servers = map[string]int{}, map[string]int{}
	return nil
}

func (p *statParser) row(row []string) error {
	px, sv := row[p.col["pxname"]], row[p.col["svname"]]
	if px == "" || sv == "" {
		return fmt.Errorf("%w: line %d has no pxname or svname", ErrBadReply, p.rows)
	}
	switch sv {
	case "FRONTEND":
		return nil
	case "BACKEND":
	default:
		p.servers[px]++
		return nil
	}
	if _, dup := p.index[px]; dup {
		return fmt.Errorf("%w: backend %.64q listed twice", ErrBadReply, px)
	}
	b := BackendStat{Name: px, Status: row[p.col["status"]]}
	num := func(name string, optional bool) (int64, bool, error) {
		i, ok := p.col[name]
		if !ok || i >= len(row) || (optional && row[i] == "") {
			if optional {
				return 0, false, nil
			}
			return 0, false, fmt.Errorf("%w: backend %.64q has no %s", ErrBadReply, px, name)
		}
		n, err := strconv.ParseInt(row[i], 10, 64)
		if err != nil || n < 0 {
			return 0, false, fmt.Errorf("%w: backend %.64q: %s %.40q is not a count", ErrBadReply, px, name, row[i])
		}
		return n, true, nil
	}
	var act, bck int64
	var err error
	for _, f := range []struct {
		name     string
		to       *int64
		has      *bool
		optional bool
	}{
		{"scur", &b.Sessions, nil, false},
		{"stot", &b.SessionsTotal, nil, false},
		{"act", &act, nil, false},
		{"bck", &bck, nil, false},
		{"rate", &b.SessionRate, nil, true},
		{"req_tot", &b.RequestsTotal, &b.HasRequests, true},
	} {
		var has bool
		if *f.to, has, err = num(f.name, f.optional); err != nil {
			return err
		}
		if f.has != nil {
			*f.has = has
		}
	}
	if act > 1<<30 || bck > 1<<30 {
		return fmt.Errorf("%w: backend %.64q: act %d, bck %d servers", ErrBadReply, px, act, bck)
	}
	b.ServersUp = int(act + bck)
	p.index[px] = len(p.list)
	p.list = append(p.list, b)
	return nil
}

func (p *statParser) done() ([]BackendStat, error) {
	switch {
	case p.err != nil:
		return nil, p.err
	case p.col == nil:
		return nil, fmt.Errorf("%w: empty reply, no header", ErrBadReply)
	}
	for px, n := range p.servers {
		i, ok := p.index[px]
		if !ok {
			return nil, fmt.Errorf("%w: servers of %.64q but no BACKEND row", ErrBadReply, px)
		}
		p.list[i].Servers = n
	}
	return p.list, nil
}

// parseBackendStats parses a whole "show stat" reply body.
func parseBackendStats(reply string) ([]BackendStat, error) {
	var p statParser
	for _, l := range strings.Split(reply, "\n") {
		p.line(l)
	}
	return p.done()
}

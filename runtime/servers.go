package runtime

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// unframed runs one command on a fresh connection and returns everything
// HAProxy sent before closing it (at most 64 KB), for replies that lack the
// closing empty line. The caller must check the text whole: a cut reply is
// only told from a full one by its content.
func (c *Client) unframed(ctx context.Context, cmd string) (string, error) {
	ctx, cancel := c.bound(ctx, 0)
	defer cancel()
	conn, done, err := c.send(ctx, cmd)
	if err != nil {
		return "", err
	}
	defer done()
	const max = 64 * 1024
	b, err := io.ReadAll(io.LimitReader(conn, max+1))
	if err != nil {
		return "", c.ioErr(ctx, cmd, err, len(b) > 0)
	}
	if len(b) > max {
		return "", fmt.Errorf("runtime %q on %s: %w: over %d bytes", cmd, c.path, ErrBadReply, max)
	}
	return string(b), nil
}

func checkServerWords(words ...string) error {
	for _, w := range words {
		if err := CheckWord(w); err != nil {
			return err
		}
		if strings.Contains(w, "/") {
			return fmt.Errorf("%w: %q has '/'", ErrUnsafeWord, w)
		}
	}
	return nil
}

// AddServer adds a server to a backend at runtime ("add server"), then
// enables it (new dynamic servers start in maintenance) and, with check,
// its health check. The backend must allow dynamic servers (roundrobin does).
func (c *Client) AddServer(ctx context.Context, backend, name, addr string, weight int, check bool) error {
	if err := checkServerWords(backend, name); err != nil {
		return err
	}
	if err := CheckWord(addr); err != nil {
		return err
	}
	cmd := fmt.Sprintf("add server %s/%s %s weight %d", backend, name, addr, weight)
	if check {
		cmd += " check"
	}
	if out, err := c.oneShot(ctx, cmd); err != nil {
		return err
	} else if out != "New server registered." {
		return fmt.Errorf("runtime %q: haproxy replied %q", cmd, out)
	}
	steps := []string{"enable server " + backend + "/" + name}
	if check {
		steps = append([]string{"enable health " + backend + "/" + name}, steps...)
	}
	for _, cmd := range steps {
		if out, err := c.oneShot(ctx, cmd); err != nil {
			return err
		} else if out != "" {
			return fmt.Errorf("runtime %q: haproxy replied %q", cmd, out)
		}
	}
	return nil
}

// SetServerState sets a server's administrative state: "ready", "drain"
// (no new sessions, existing ones finish) or "maint".
func (c *Client) SetServerState(ctx context.Context, backend, name, state string) error {
	if err := checkServerWords(backend, name, state); err != nil {
		return err
	}
	cmd := fmt.Sprintf("set server %s/%s state %s", backend, name, state)
	if out, err := c.oneShot(ctx, cmd); err != nil {
		return err
	} else if out != "" {
		return fmt.Errorf("runtime %q: haproxy replied %q", cmd, out)
	}
	return nil
}

// DelServer deletes a server, which must be in maintenance with no sessions.
func (c *Client) DelServer(ctx context.Context, backend, name string) error {
	if err := checkServerWords(backend, name); err != nil {
		return err
	}
	cmd := fmt.Sprintf("del server %s/%s", backend, name)
	// HAProxy 2.6 ends this one reply without the usual empty line, 3.0 with
	// it, so the whole reply up to EOF is read and must be exactly one of the
	// two. (A 3.0 reply cut after its first line reads as 2.6's: HAProxy
	// writes it only once the server is gone, so success is still true.)
	if out, err := c.unframed(ctx, cmd); err != nil {
		return err
	} else if out != "Server deleted.\n" && out != "Server deleted.\n\n" {
		return fmt.Errorf("runtime %q: haproxy replied %q", cmd, out)
	}
	return nil
}

// ServerStat is one server's line of "show stat".
type ServerStat struct {
	Backend, Name, Addr, Status string
	Sessions                    int // current sessions (scur)
}

// Servers lists the servers of backend (all backends when empty).
func (c *Client) Servers(ctx context.Context, backend string) ([]ServerStat, error) {
	out, err := c.oneShot(ctx, "show stat")
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# ")))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) == 0 {
		return nil, fmt.Errorf("runtime show stat: %w: unreadable CSV: %v", ErrBadReply, err)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, h := range []string{"pxname", "svname", "scur", "status", "addr"} {
		if _, ok := col[h]; !ok {
			return nil, fmt.Errorf("runtime show stat: no %s column", h)
		}
	}
	need := 0
	for _, h := range []string{"pxname", "svname", "scur", "status", "addr"} {
		need = max(need, col[h]+1)
	}
	var list []ServerStat
	for i, row := range rows[1:] {
		if len(row) < need {
			return nil, fmt.Errorf("runtime show stat: %w: row %d has %d fields, want %d", ErrBadReply, i+1, len(row), need)
		}
		if row[col["svname"]] == "FRONTEND" || row[col["svname"]] == "BACKEND" {
			continue
		}
		if backend != "" && row[col["pxname"]] != backend {
			continue
		}
		n, err := strconv.Atoi(row[col["scur"]])
		if err != nil {
			return nil, fmt.Errorf("runtime show stat: %w: scur of %s/%s: %q", ErrBadReply, row[col["pxname"]], row[col["svname"]], row[col["scur"]])
		}
		list = append(list, ServerStat{Backend: row[col["pxname"]], Name: row[col["svname"]],
			Addr: row[col["addr"]], Status: row[col["status"]], Sessions: n})
	}
	return list, nil
}

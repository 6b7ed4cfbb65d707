package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Kind is a single-entry map command.
type Kind int

// The single-entry commands. Add never replaces (a second add of a key makes
// a duplicate); Set fails with ErrNotFound on a missing key; Del likewise.
const (
	Add Kind = iota
	Set
	Del
)

func (k Kind) String() string {
	switch k {
	case Add:
		return "add"
	case Set:
		return "set"
	case Del:
		return "del"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Op is one single-entry map command.
type Op struct {
	Kind  Kind
	Key   string
	Value string // unused for Del
}

// String renders the op for logs and errors.
func (o Op) String() string {
	if o.Kind == Del {
		return "del " + o.Key
	}
	return o.Kind.String() + " " + o.Key + " " + o.Value
}

func (o Op) line(mapPath string) string {
	if o.Kind == Del {
		return "del map " + mapPath + " " + o.Key + "\n"
	}
	return o.Kind.String() + " map " + mapPath + " " + o.Key + " " + o.Value + "\n"
}

// idleRedial is how long the long-lived connection may sit unused before it
// is replaced: HAProxy closes idle CLI connections after "stats timeout"
// (10 s by default).
const idleRedial = 3 * time.Second

// window bounds the bytes of commands written but not yet answered on the
// prompt-mode connection. HAProxy 3.2.0 stalls or spins until its watchdog
// kills it once pipelined input fills its 16 KB CLI buffer (HAProxy issue
// #3064); 8 KB costs no rate on 2.6.
const window = 8 * 1024

// perOp is the time allowed per op of an Apply whose context has no
// deadline, on top of the client's timeout: set and del scan the whole map
// in HAProxy 2.6 (46 ms at 1M entries).
const perOp = 50 * time.Millisecond

// Apply sends ops pipelined on the long-lived prompt-mode connection, with
// at most 8 KB of unanswered commands in flight, and returns one result per
// op, in order: nil, ErrNotFound (wrapped), ErrUnknownMap (wrapped), or the
// error HAProxy replied. Every key and value is checked with CheckWord
// first; if any fails, nothing is sent.
//
// A non-nil error means the batch as a whole failed. If HAProxy has no such
// map, every op failed, results holds them all and the error wraps
// ErrUnknownMap. Otherwise the connection failed (ErrTruncated,
// ErrNoAnswer, ErrBadReply, ctx's error): results then holds only the
// replies read before the failure, the ops after them may or may not have
// been applied, and the caller must treat the live map as unknown.
// Apply holds the client's map-write lock (see Client).
func (c *Client) Apply(ctx context.Context, mapPath string, ops []Op) (results []error, err error) {
	if err := checkPath(mapPath); err != nil {
		return nil, err
	}
	lines := make([]string, len(ops))
	for i, op := range ops {
		if err := CheckWord(op.Key); err != nil {
			return nil, fmt.Errorf("runtime op %d (%s) key: %w", i, op.Kind, err)
		}
		if op.Kind != Del {
			if err := CheckWord(op.Value); err != nil {
				return nil, fmt.Errorf("runtime op %d (%s %s) value: %w", i, op.Kind, op.Key, err)
			}
		}
		lines[i] = op.line(mapPath)
	}
	if len(ops) == 0 {
		return nil, nil
	}
	ctx, cancel := c.bound(ctx, time.Duration(len(ops))*perOp)
	defer cancel()
	if err := c.lockWrites(ctx); err != nil {
		return nil, err
	}
	defer c.unlockWrites()

	results = make([]error, 0, len(ops))
	unknown := false
	err = c.pipeline(ctx, mapPath, lines, func(i int, body string) error {
		r := replyError(ops[i], mapPath, body)
		unknown = unknown || errors.Is(r, ErrUnknownMap)
		results = append(results, r)
		return nil
	})
	if err != nil {
		return results, fmt.Errorf("runtime apply %d ops to %s: %w", len(ops), mapPath, err)
	}
	if unknown {
		return results, withCmd(ops[0].Kind.String()+"_map", c.unknownMap(ctx, mapPath))
	}
	return results, nil
}

// pipeline writes lines (each ending in a newline) on the long-lived
// prompt-mode connection, keeping at most window bytes unanswered, and
// passes each reply body to fn in order. On any error the connection is
// dropped. The caller holds the map-write lock; ctx has a deadline.
func (c *Client) pipeline(ctx context.Context, mapPath string, lines []string, fn func(i int, body string) error) error {
	c.mu.Lock()
	if c.conn != nil && time.Since(c.lastUsed) > idleRedial {
		c.conn.Close()
		c.conn, c.rd = nil, nil
	}
	conn, rd, closes := c.conn, c.rd, c.closes
	c.conn, c.rd = nil, nil // ours until put back
	c.mu.Unlock()
	if conn == nil {
		var err error
		if conn, rd, err = c.openPrompt(ctx); err != nil {
			return err
		}
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	// Besides the whole batch's deadline, every reply must come within the
	// client's timeout of the last: a HAProxy that hangs mid-batch is
	// reported as not answering in seconds, not at the end of the allowance
	// a large batch gets.
	total, _ := ctx.Deadline()
	idle := func() {
		d := time.Now().Add(c.timeout)
		if !total.IsZero() && total.Before(d) {
			d = total
		}
		conn.SetDeadline(d)
	}

	var wbuf []byte
	inflight, next := 0, 0
	for i := range lines {
		// Refill once half the window is answered, so that writes go out in
		// chunks rather than one per reply.
		if next < len(lines) && inflight <= window/2 {
			wbuf = wbuf[:0]
			for next < len(lines) && (inflight == 0 || inflight+len(lines[next]) <= window) {
				wbuf = append(wbuf, lines[next]...)
				inflight += len(lines[next])
				next++
			}
			if err := c.allowed(); err != nil {
				conn.Close()
				return err
			}
			idle()
			if _, err := conn.Write(wbuf); err != nil {
				conn.Close()
				return c.ioErr(ctx, strings.TrimSuffix(lines[i], "\n"), err, false)
			}
		}
		idle()
		body, err := readPromptReply(rd)
		if err != nil {
			conn.Close()
			return fmt.Errorf("reply %d of %d: %w", i+1, len(lines), c.ioErr(ctx, strings.TrimSuffix(lines[i], "\n"), err, true))
		}
		inflight -= len(lines[i])
		if err := fn(i, body); err != nil {
			conn.Close()
			return err
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closes != closes || c.conn != nil {
		conn.Close() // Close was called meanwhile
		return nil
	}
	c.conn, c.rd, c.lastUsed = conn, rd, time.Now()
	return nil
}

// openPrompt dials and switches the connection to prompt mode, in which
// HAProxy keeps it open and answers each command with its reply, an empty
// line and the prompt "> ".
func (c *Client) openPrompt(ctx context.Context) (net.Conn, *bufio.Reader, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, nil, withCmd("prompt", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	rd := bufio.NewReaderSize(conn, 32*1024)
	const cmd = "prompt\nset severity-output number\n"
	if _, err := io.WriteString(conn, cmd); err != nil {
		conn.Close()
		return nil, nil, c.ioErr(ctx, "prompt", err, false)
	}
	// The reply to "prompt" has no prompt before it; the next one does.
	first, err := readLine(rd, maxLine)
	if err == nil && first != "" {
		err = fmt.Errorf("%w: %.80q to prompt", ErrBadReply, first)
	}
	if err == nil {
		var body string
		body, err = readPromptReply(rd)
		if err == nil && body != "" {
			err = fmt.Errorf("%w: %.80q to set severity-output", ErrBadReply, body)
		}
	}
	if err != nil {
		conn.Close()
		return nil, nil, c.ioErr(ctx, "prompt", err, true)
	}
	if c.onConn != nil {
		c.onConn()
	}
	return conn, rd, nil
}

// readPromptReply reads one prompt-mode reply: "> ", then lines up to an
// empty line. It returns the lines joined, without the final empty line.
// A stream that ends first is io.EOF or io.ErrUnexpectedEOF; anything but
// a prompt, or a reply over maxLine bytes, is ErrBadReply.
func readPromptReply(rd *bufio.Reader) (string, error) {
	var p [2]byte
	if n, err := io.ReadFull(rd, p[:]); err != nil {
		if n > 0 && err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	if string(p[:]) != "> " {
		return "", fmt.Errorf("%w: expected prompt, got %q", ErrBadReply, p[:])
	}
	var body strings.Builder
	for {
		line, err := readLine(rd, maxLine)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return "", err
		}
		if line == "" {
			return strings.TrimSuffix(body.String(), "\n"), nil
		}
		if body.Len()+len(line) > maxLine {
			return "", fmt.Errorf("%w: reply over %d bytes", ErrBadReply, maxLine)
		}
		body.WriteString(line)
		body.WriteByte('\n')
	}
}

// replyError turns a single-command reply into its error: nil for the empty
// success reply, ErrNotFound for a missing key, ErrUnknownMap for a missing
// map, the message otherwise.
func replyError(op Op, mapPath, body string) error {
	if body == "" {
		return nil
	}
	return withCmd(op.Kind.String()+"_map", replyErrorText(op, mapPath, body))
}

func replyErrorText(op Op, mapPath, body string) error {
	msg := body
	if len(msg) > 4 && msg[0] == '[' && msg[2] == ']' && msg[3] == ':' {
		msg = strings.TrimSpace(msg[4:])
	}
	switch {
	case msg == "entry not found." || msg == "Key not found.":
		return fmt.Errorf("runtime %s map %s %s: %w", op.Kind, mapPath, op.Key, ErrNotFound)
	case strings.HasPrefix(msg, unknownMapReply):
		return fmt.Errorf("runtime %s map %s %s: %w", op.Kind, mapPath, op.Key, ErrUnknownMap)
	}
	return fmt.Errorf("runtime %s map %s %s: haproxy replied %.200q", op.Kind, mapPath, op.Key, body)
}

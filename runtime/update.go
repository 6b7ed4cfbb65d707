package runtime

import (
	"bufio"
	"context"
	"fmt"
	"io"
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

// Apply sends ops pipelined on the long-lived prompt-mode connection and
// returns one result per op, in order: nil, ErrNotFound (wrapped), or the
// error HAProxy replied. Every key and value is checked with CheckWord first;
// if any fails, nothing is sent.
//
// A non-nil error means the connection failed: results then holds only the
// replies read before the failure, and the ops after them may or may not have
// been applied, so the caller must treat the live map as unknown.
func (c *Client) Apply(ctx context.Context, mapPath string, ops []Op) (results []error, err error) {
	if err := checkPath(mapPath); err != nil {
		return nil, err
	}
	var buf strings.Builder
	for i, op := range ops {
		if err := CheckWord(op.Key); err != nil {
			return nil, fmt.Errorf("runtime op %d (%s) key: %w", i, op.Kind, err)
		}
		if op.Kind != Del {
			if err := CheckWord(op.Value); err != nil {
				return nil, fmt.Errorf("runtime op %d (%s %s) value: %w", i, op.Kind, op.Key, err)
			}
		}
		buf.WriteString(op.line(mapPath))
	}
	if len(ops) == 0 {
		return nil, nil
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil && time.Since(c.lastUsed) > idleRedial {
		c.dropLocked()
	}
	if c.conn == nil {
		if err := c.openPromptLocked(ctx); err != nil {
			return nil, err
		}
	}
	conn, rd := c.conn, c.rd
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	// set/del scan the whole map in HAProxy 2.6: allow for big maps.
	conn.SetDeadline(c.deadline(ctx, time.Duration(len(ops))*50*time.Millisecond))

	// A large batch is written while replies are read, so that it cannot
	// fill both socket buffers; a small one fits and is written at once.
	werr := make(chan error, 1)
	if buf.Len() <= 16*1024 {
		_, err := io.WriteString(conn, buf.String())
		werr <- err
	} else {
		go func() {
			_, err := io.WriteString(conn, buf.String())
			werr <- err
		}()
	}
	results = make([]error, 0, len(ops))
	for i := range ops {
		body, err := readPromptReply(rd)
		if err != nil {
			c.dropLocked()
			<-werr
			return results, fmt.Errorf("runtime %s on %s: reply %d of %d: %w", ops[i].Kind, mapPath, i+1, len(ops), err)
		}
		results = append(results, replyError(ops[i], mapPath, body))
	}
	if err := <-werr; err != nil {
		c.dropLocked()
		return results, fmt.Errorf("runtime write %d ops to %s: %w", len(ops), c.path, err)
	}
	c.lastUsed = time.Now()
	return results, nil
}

// openPromptLocked dials and switches the connection to prompt mode, in which
// HAProxy keeps it open and answers each command with its reply, an empty
// line and the prompt "> ".
func (c *Client) openPromptLocked(ctx context.Context) error {
	conn, err := c.dial(ctx)
	if err != nil {
		return err
	}
	conn.SetDeadline(c.deadline(ctx, 0))
	rd := bufio.NewReaderSize(conn, 32*1024)
	if _, err := io.WriteString(conn, "prompt\nset severity-output number\n"); err != nil {
		conn.Close()
		return fmt.Errorf("runtime prompt on %s: %w", c.path, err)
	}
	// The reply to "prompt" has no prompt before it; the next one does.
	first, err := rd.ReadString('\n')
	if err == nil && first != "\n" {
		err = fmt.Errorf("unexpected reply %q", first)
	}
	if err == nil {
		var body string
		body, err = readPromptReply(rd)
		if err == nil && body != "" {
			err = fmt.Errorf("set severity-output: %q", body)
		}
	}
	if err != nil {
		conn.Close()
		return fmt.Errorf("runtime prompt on %s: %w", c.path, err)
	}
	c.conn, c.rd, c.lastUsed = conn, rd, time.Now()
	return nil
}

// readPromptReply reads one prompt-mode reply: "> ", then lines up to an
// empty line. It returns the lines joined, without the final empty line.
func readPromptReply(rd *bufio.Reader) (string, error) {
	var p [2]byte
	if _, err := io.ReadFull(rd, p[:]); err != nil {
		return "", fmt.Errorf("%w: %v", ErrTruncated, err)
	}
	if string(p[:]) != "> " {
		return "", fmt.Errorf("runtime: expected prompt, got %q", p[:])
	}
	var body strings.Builder
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrTruncated, err)
		}
		if line == "\n" {
			return strings.TrimSuffix(body.String(), "\n"), nil
		}
		body.WriteString(line)
	}
}

// replyError turns a single-command reply into its error: nil for the empty
// success reply, ErrNotFound for a missing key, the message otherwise.
func replyError(op Op, mapPath, body string) error {
	if body == "" {
		return nil
	}
	msg := body
	if len(msg) > 4 && msg[0] == '[' && msg[2] == ']' && msg[3] == ':' {
		msg = strings.TrimSpace(msg[4:])
	}
	switch msg {
	case "entry not found.", "Key not found.":
		return fmt.Errorf("runtime %s map %s %s: %w", op.Kind, mapPath, op.Key, ErrNotFound)
	}
	return fmt.Errorf("runtime %s map %s %s: haproxy replied %.200q", op.Kind, mapPath, op.Key, body)
}

// Package runtime talks to one HAProxy process over its Runtime API (the stats
// socket at level admin) for the map commands shardmap needs.
//
// Single updates go pipelined over one long-lived prompt-mode connection of
// our own: client-native opens two or three connections per update. The
// atomic whole-map swap (prepare / add payload / commit) uses client-native's
// SingleRuntime, whose versioned calls are sound when the caller chunks and
// validates the payload itself. A full dump is our own streaming reader, which
// fails on a truncated dump where client-native returns the part it read.
//
// Every key and value is checked by CheckWord before it is written to the
// socket, whatever the caller validated before.
package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	native "github.com/haproxytech/client-native/v5/runtime"
	nativeopts "github.com/haproxytech/client-native/v5/runtime/options"
)

// Sentinel errors.
var (
	// ErrNotFound: HAProxy answered that the key is not in the map
	// ("entry not found." for set, "Key not found." for del).
	ErrNotFound = errors.New("key not in map")
	// ErrUnsafeWord: a key or value could change the meaning of a command line
	// or corrupt a map file, so it was not sent.
	ErrUnsafeWord = errors.New("unsafe word for the runtime API")
	// ErrTruncated: a reply ended before its terminating empty line.
	ErrTruncated = errors.New("truncated reply")
)

// MaxWord bounds a key or value; command lines stay far under HAProxy's
// 15,360-byte limit, past which it never replies.
const MaxWord = 1024

// payloadChunk bounds one versioned payload, well under tune.bufsize (16 KB),
// above which HAProxy drops a payload without a reply.
const payloadChunk = 8 * 1024

// CheckWord refuses a key or value that could change the meaning of a Runtime
// API command line or a map file: empty, over MaxWord bytes, any byte that is
// blank, a control character, non-ASCII, ';' or '\', a leading '#' (a comment,
// or an entry reference "#0x..."), or a trailing "<<" (payload mode).
func CheckWord(w string) error {
	switch {
	case w == "":
		return fmt.Errorf("%w: empty", ErrUnsafeWord)
	case len(w) > MaxWord:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrUnsafeWord, len(w), MaxWord)
	case w[0] == '#':
		return fmt.Errorf("%w: %.40q starts with '#'", ErrUnsafeWord, w)
	case strings.HasSuffix(w, "<<"):
		return fmt.Errorf("%w: %.40q ends in \"<<\"", ErrUnsafeWord, w)
	}
	for i := 0; i < len(w); i++ {
		if c := w[i]; c <= ' ' || c >= 0x7f || c == ';' || c == '\\' {
			return fmt.Errorf("%w: %.40q has %q at byte %d", ErrUnsafeWord, w, c, i)
		}
	}
	return nil
}

// Client is a Runtime API client for one HAProxy stats socket. It is safe for
// concurrent use; pipelined updates are serialised on one connection.
type Client struct {
	path    string
	timeout time.Duration
	native  *native.SingleRuntime

	mu       sync.Mutex // guards the prompt-mode connection
	conn     net.Conn
	rd       *bufio.Reader
	lastUsed time.Time
}

// New returns a client for the socket at path. It does not connect: HAProxy
// may not be up yet. timeout bounds each call that has no context deadline.
func New(path string, timeout time.Duration) (*Client, error) {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	nr := &native.SingleRuntime{}
	if err := nr.Init(path, 0, 0, nativeopts.RuntimeOptions{DoNotCheckRuntimeOnInit: true}); err != nil {
		return nil, fmt.Errorf("runtime %s: %w", path, err)
	}
	return &Client{path: path, timeout: timeout, native: nr}, nil
}

// Path returns the socket path.
func (c *Client) Path() string { return c.path }

// Close drops the long-lived connection, if any.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked()
	return nil
}

func (c *Client) dropLocked() {
	if c.conn != nil {
		c.conn.Close()
		c.conn, c.rd = nil, nil
	}
}

func (c *Client) deadline(ctx context.Context, extra time.Duration) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(c.timeout + extra)
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, fmt.Errorf("runtime dial %s: %w", c.path, err)
	}
	return conn, nil
}

// oneShot runs one command on a fresh non-interactive connection and returns
// the whole reply, checked to end with HAProxy's terminating empty line,
// without that line or the newline before it.
func (c *Client) oneShot(ctx context.Context, cmd string) (string, error) {
	var out strings.Builder
	err := c.stream(ctx, cmd, func(line string) error {
		out.WriteString(line)
		out.WriteByte('\n')
		return nil
	})
	return strings.TrimSuffix(out.String(), "\n"), err
}

// send dials a fresh connection, bounds it by ctx's deadline (or the client's
// timeout) and cancellation, and writes cmd. The caller reads the reply and
// then calls done.
func (c *Client) send(ctx context.Context, cmd string) (conn net.Conn, done func(), err error) {
	conn, err = c.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	done = func() { stop(); conn.Close() }
	conn.SetDeadline(c.deadline(ctx, 0))
	if _, err := conn.Write([]byte(cmd + "\n")); err != nil {
		done()
		return nil, nil, fmt.Errorf("runtime %q: write: %w", cmd, err)
	}
	return conn, done, nil
}

// stream runs one command on a fresh connection and passes each reply line
// (without its newline, without the final empty line) to fn. A reply that
// ends before the empty line, or a read that times out, is ErrTruncated:
// a partial reply is never taken for a whole one.
func (c *Client) stream(ctx context.Context, cmd string, fn func(line string) error) error {
	conn, done, err := c.send(ctx, cmd)
	if err != nil {
		return err
	}
	defer done()
	rd := bufio.NewReaderSize(conn, 64*1024)
	var pending *string // a line is passed on only once the next is read
	for {
		line, err := rd.ReadString('\n')
		if err == io.EOF && line == "" && pending != nil && *pending == "" {
			return nil // the reply ended with its empty line, then HAProxy closed
		}
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("runtime %q: %w", cmd, ctx.Err())
			}
			return fmt.Errorf("runtime %q: %w (%v)", cmd, ErrTruncated, err)
		}
		line = strings.TrimSuffix(line, "\n")
		if pending != nil {
			if err := fn(*pending); err != nil {
				return err
			}
		}
		pending = &line
	}
}

// Info is what identifies one running HAProxy process.
type Info struct {
	Pid       int64
	UptimeSec int64
	Version   string
}

// Started is the process's start time, from its uptime.
func (i Info) Started(now time.Time) time.Time {
	return now.Add(-time.Duration(i.UptimeSec) * time.Second)
}

// Info returns the process's identity from "show info" (client-native's
// GetInfo). Use it to tell a restarted HAProxy from the one seen before.
func (c *Client) Info(ctx context.Context) (Info, error) {
	type result struct {
		info Info
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		// client-native takes no context; its own 30 s timeout ends this.
		pi := c.native.GetInfo()
		switch {
		case pi.Error != "":
			ch <- result{err: fmt.Errorf("runtime show info: %s", pi.Error)}
		case pi.Info == nil || pi.Info.Pid == nil:
			ch <- result{err: fmt.Errorf("runtime show info on %s: no Pid in reply", c.path)}
		default:
			i := Info{Pid: *pi.Info.Pid, Version: pi.Info.Version}
			if pi.Info.Uptime != nil {
				i.UptimeSec = *pi.Info.Uptime
			}
			ch <- result{info: i}
		}
	}()
	select {
	case r := <-ch:
		return r.info, r.err
	case <-ctx.Done():
		return Info{}, fmt.Errorf("runtime show info: %w", ctx.Err())
	}
}

// Backends lists HAProxy's backends ("show backend").
func (c *Client) Backends(ctx context.Context) ([]string, error) {
	var out []string
	err := c.stream(ctx, "show backend", func(line string) error {
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
		return nil
	})
	return out, err
}

// Dump streams every entry of the live map (the current version) to fn,
// in HAProxy's order. Duplicated keys come once per entry. A cut dump is an
// error, never a short map.
func (c *Client) Dump(ctx context.Context, mapPath string, fn func(key, value string) error) error {
	if err := checkPath(mapPath); err != nil {
		return err
	}
	cmd := "show map " + mapPath
	return c.stream(ctx, cmd, func(line string) error {
		// "0xPTR key value"; an error reply has no 0x pointer.
		ptr, rest, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(ptr, "0x") {
			return fmt.Errorf("runtime %q: unexpected line %.80q", cmd, line)
		}
		key, value, _ := strings.Cut(rest, " ")
		return fn(key, value)
	})
}

// MapEntryCount returns HAProxy's entry_cnt for the map: the entries of all
// its versions, an uncommitted one included.
func (c *Client) MapEntryCount(ctx context.Context, mapPath string) (int, error) {
	out, err := c.oneShot(ctx, "show map")
	if err != nil {
		return 0, err
	}
	return parseEntryCount(out, mapPath)
}

func parseEntryCount(showMap, mapPath string) (int, error) {
	for _, line := range strings.Split(showMap, "\n") {
		if !strings.Contains(line, "("+mapPath+")") {
			continue
		}
		i := strings.LastIndex(line, "entry_cnt=")
		if i < 0 {
			return 0, fmt.Errorf("runtime show map: no entry_cnt for %s", mapPath)
		}
		n, err := strconv.Atoi(strings.Fields(line[i+len("entry_cnt="):] + " ")[0])
		if err != nil {
			return 0, fmt.Errorf("runtime show map: entry_cnt for %s: %w", mapPath, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("runtime show map: HAProxy has no map %s (it must be loaded by the config)", mapPath)
}

func checkPath(p string) error {
	if p == "" || strings.ContainsAny(p, " \t\r\n;\\") || strings.HasSuffix(p, "<<") || p[0] == '#' || p[0] == '@' {
		return fmt.Errorf("%w: map path %q", ErrUnsafeWord, p)
	}
	return nil
}

// Package runtime talks to one HAProxy process over its Runtime API (the stats
// socket at level admin) for the map commands shardmap needs.
//
// Every command goes through this package's own reader, which checks that a
// reply ended with HAProxy's terminating empty line (a cut reply is an
// error, never a short answer), bounds every line, and honours the caller's
// context and deadline. Single updates go pipelined over one long-lived
// prompt-mode connection, with at most 8 KB of unanswered commands in flight.
// The atomic whole-map swap (prepare / add payload / commit) sends each
// command, and each payload of at most 8 KB, on a fresh connection, and
// checks HAProxy's own count and version before and after the commit.
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
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Sentinel errors.
var (
	// ErrNotFound: HAProxy answered that the key is not in the map
	// ("entry not found." for set, "Key not found." for del).
	ErrNotFound = errors.New("key not in map")
	// ErrUnsafeWord: a key, value or map path could change the meaning of a
	// command line or corrupt a map file, so it was not sent.
	ErrUnsafeWord = errors.New("unsafe word for the runtime API")
	// ErrTruncated: a reply ended before its terminating empty line.
	ErrTruncated = errors.New("truncated reply")
	// ErrBadReply: HAProxy's reply is not what the command answers (garbage,
	// an over-long line, a non-numeric version or count).
	ErrBadReply = errors.New("unexpected reply from HAProxy")
	// ErrNoAnswer: the deadline passed before HAProxy answered in full.
	ErrNoAnswer = errors.New("HAProxy did not answer before the deadline: hung, or every stats socket connection slot is busy")
	// ErrNotSocket: the socket path exists but is not a Unix socket.
	ErrNotSocket = errors.New("not a socket")
	// ErrUnknownMap: HAProxy has no map with this path (maps are loaded by
	// the config; they cannot be created at runtime).
	ErrUnknownMap = errors.New("HAProxy has no such map")
	// ErrNotCommitted: after "commit map @N", HAProxy's current version of
	// the map is not N.
	ErrNotCommitted = errors.New("map version not committed")
	// ErrCountMismatch: HAProxy holds a different number of entries than
	// were sent, so the loaded map is not what was meant.
	ErrCountMismatch = errors.New("map entry count differs from what was sent")
)

// MaxWord bounds a key, value or map path; command lines stay far under
// HAProxy's 15,360-byte limit, past which it never replies.
const MaxWord = 1024

// payloadChunk bounds one versioned payload, well under tune.bufsize (16 KB),
// above which HAProxy drops a payload without a reply.
const payloadChunk = 8 * 1024

// maxLine bounds one reply line; a longer one is ErrBadReply. Map lines are
// under 2.1 KB (two words and a pointer), "show stat" lines a few KB.
const maxLine = 1 << 20

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

// Client is a Runtime API client for one HAProxy stats socket, Unix or TCP.
//
// All methods are safe for concurrent use. Reads (Info, Backends, Maps,
// MapEntryCount, Dump, Servers) and server commands each use a connection
// of their own and run in parallel. Map writes (Apply, Replace,
// ClearUncommitted) are serialised: one runs at a time, the others wait
// for it within their own context, because an "add map" sent while a
// Replace's version is pending is lost at its commit.
//
// Every call has a deadline: the context's, or, when the context has none,
// the client's timeout (plus an allowance per entry for Apply and Replace).
// A call that reaches it before HAProxy answered in full returns an error
// wrapping ErrNoAnswer.
type Client struct {
	path    string // the address as given, in errors
	network string // "unix" or "tcp"
	address string // what is dialled
	timeout time.Duration

	writes chan struct{} // a token held by the one map write running
	guard  func() error  // see SetWriteGuard; nil allows every write
	onConn func()        // see SetOnConnect; nil when unset

	mu       sync.Mutex // guards the fields below
	conn     net.Conn   // the long-lived prompt-mode connection Apply uses
	rd       *bufio.Reader
	lastUsed time.Time
	closes   int // Close calls so far: a batch in flight drops its connection if this moved
}

// New returns a client for the Runtime API at addr: a Unix socket path or
// a TCP address (see ParseAddress). It does not connect: HAProxy may not be
// up yet. timeout bounds each call whose context has no deadline (10 s when
// timeout <= 0).
func New(addr string, timeout time.Duration) (*Client, error) {
	network, address, err := ParseAddress(addr)
	if err != nil {
		if addr == "" {
			return nil, fmt.Errorf("runtime: empty socket path: %w", err)
		}
		// A relative Unix socket path is what earlier versions took.
		if !strings.ContainsAny(addr, ":@") {
			network, address = "unix", addr
		} else {
			return nil, fmt.Errorf("runtime: %w", err)
		}
	}
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &Client{path: addr, network: network, address: address, timeout: timeout, writes: make(chan struct{}, 1)}, nil
}

// SetWriteGuard makes every map write ask g first, right before each
// command that changes HAProxy's maps is sent (each pipelined window of
// Apply, each step of Replace and ClearUncommitted); an error from g stops
// the call with that error, wrapped. A syncer uses it as a fence: it writes
// only while it holds its lease, even if it was paused in the middle of a
// long swap. Set it before the first call; it is not safe to change while
// calls run.
func (c *Client) SetWriteGuard(g func() error) { c.guard = g }

// SetOnConnect makes the client call f each time it opens its long-lived
// prompt-mode connection (the first time, and each reconnect after Close,
// an idle period or a failure), after the connection is ready; f must be
// quick and safe for concurrent use (metrics count reconnects with it). Set
// it before the first call; it is not safe to change while calls run.
func (c *Client) SetOnConnect(f func()) { c.onConn = f }

// allowed asks the write guard, if any.
func (c *Client) allowed() error {
	if c.guard == nil {
		return nil
	}
	return c.guard()
}

// Close drops the long-lived connection that Apply keeps open; an Apply in
// flight finishes and then drops its connection too. Other calls open and
// close their own connections. The client stays usable: the next Apply dials
// again. Close always returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closes++
	if c.conn != nil {
		c.conn.Close()
		c.conn, c.rd = nil, nil
	}
	return nil
}

// bound returns ctx with a deadline: its own, or the client's timeout plus
// extra.
func (c *Client) bound(ctx context.Context, extra time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout+extra)
}

// lockWrites takes the map-write token, waiting at most until ctx ends.
func (c *Client) lockWrites(ctx context.Context) error {
	select {
	case c.writes <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("runtime %s: waiting for another map write: %w", c.path, ctxErr(ctx))
	}
}

func (c *Client) unlockWrites() { <-c.writes }

// ctxErr is ctx's error, with ErrNoAnswer added when its deadline passed.
func ctxErr(ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (%w)", ErrNoAnswer, err)
	}
	return err
}

// dial connects to the socket. A full listen backlog (EAGAIN) is retried
// until ctx ends. A path that is missing or not a socket is named.
func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		conn, err := d.DialContext(ctx, c.network, c.address)
		if err == nil {
			return conn, nil
		}
		switch {
		case ctx.Err() != nil:
			return nil, fmt.Errorf("runtime dial %s: %w", c.path, ctxErr(ctx))
		case errors.Is(err, syscall.EAGAIN):
			t := time.NewTimer(wait)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("runtime dial %s: listen backlog full: %w", c.path, ctxErr(ctx))
			}
		case c.network != "unix":
			return nil, fmt.Errorf("runtime dial %s: %w", c.path, err)
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("runtime: stats socket %s does not exist: %w", c.path, err)
		}
		if fi, serr := os.Stat(c.address); serr == nil && fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("runtime: stats socket %s is %w (mode %s)", c.path, ErrNotSocket, fi.Mode())
		}
		return nil, fmt.Errorf("runtime dial %s: %w", c.path, err)
	}
}

// ioErr classifies a failed read or write of cmd: ctx cancelled, the
// deadline passed (ErrNoAnswer, and ErrTruncated when part of the reply had
// come), a malformed reply, or a reply cut short (ErrTruncated).
func (c *Client) ioErr(ctx context.Context, cmd string, err error, partial bool) error {
	return withCmd(cmd, c.ioErrText(ctx, cmd, err, partial))
}

func (c *Client) ioErrText(ctx context.Context, cmd string, err error, partial bool) error {
	what := fmt.Sprintf("runtime %.60q on %s", cmd, c.path)
	switch {
	case errors.Is(err, ErrBadReply):
		return fmt.Errorf("%s: %w", what, err)
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("%s: %w", what, ctx.Err())
	case ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded):
		cause := ctx.Err()
		if cause == nil {
			cause = err
		}
		if partial {
			return fmt.Errorf("%s: %w: %w (%w)", what, ErrNoAnswer, ErrTruncated, cause)
		}
		return fmt.Errorf("%s: %w (%w)", what, ErrNoAnswer, cause)
	}
	return fmt.Errorf("%s: %w (%v)", what, ErrTruncated, err)
}

// send dials a fresh connection, bounds it by ctx's deadline and
// cancellation, and writes cmd plus a newline. The caller reads the reply
// and then calls done. ctx must have a deadline (see bound).
func (c *Client) send(ctx context.Context, cmd string) (conn net.Conn, done func(), err error) {
	conn, err = c.dial(ctx)
	if err != nil {
		return nil, nil, withCmd(cmd, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	done = func() { stop(); conn.Close() }
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	if _, err := conn.Write([]byte(cmd + "\n")); err != nil {
		done()
		return nil, nil, c.ioErr(ctx, cmd, err, false)
	}
	return conn, done, nil
}

// readLine reads one line of at most max bytes and returns it without its
// newline. io.EOF means the stream ended cleanly between lines;
// io.ErrUnexpectedEOF that it ended inside one.
func readLine(rd *bufio.Reader, max int) (string, error) {
	frag, err := rd.ReadSlice('\n')
	if err == nil {
		if len(frag) > max+1 {
			return "", fmt.Errorf("%w: line over %d bytes", ErrBadReply, max)
		}
		return string(frag[:len(frag)-1]), nil
	}
	buf := append([]byte(nil), frag...)
	for errors.Is(err, bufio.ErrBufferFull) {
		if len(buf) > max+1 {
			return "", fmt.Errorf("%w: line over %d bytes", ErrBadReply, max)
		}
		frag, err = rd.ReadSlice('\n')
		buf = append(buf, frag...)
	}
	switch {
	case len(buf) > max+1:
		return "", fmt.Errorf("%w: line over %d bytes", ErrBadReply, max)
	case err == nil:
		return string(buf[:len(buf)-1]), nil
	case err == io.EOF && len(buf) == 0:
		return "", io.EOF
	case err == io.EOF:
		return "", io.ErrUnexpectedEOF
	}
	return "", err
}

// stream runs one command on a fresh connection and passes each reply line
// (without its newline, without the final empty line) to fn. A reply that
// ends before the empty line, or a read that times out, is an error: a
// partial reply is never taken for a whole one. fn may have seen lines of a
// reply that then fails. ctx must have a deadline (see bound).
func (c *Client) stream(ctx context.Context, cmd string, fn func(line string) error) error {
	conn, done, err := c.send(ctx, cmd)
	if err != nil {
		return err
	}
	defer done()
	rd := bufio.NewReaderSize(conn, 64*1024)
	var pending string // a line is passed on only once the next is read
	have := false
	for {
		line, err := readLine(rd, maxLine)
		if err == io.EOF && have && pending == "" {
			return nil // the reply ended with its empty line, then HAProxy closed
		}
		if err != nil {
			return c.ioErr(ctx, cmd, err, have)
		}
		if have {
			if err := fn(pending); err != nil {
				return err
			}
		}
		pending, have = line, true
	}
}

// oneShot runs one command on a fresh non-interactive connection and returns
// the whole reply, checked to end with HAProxy's terminating empty line,
// without that line or the newline before it.
func (c *Client) oneShot(ctx context.Context, cmd string) (string, error) {
	ctx, cancel := c.bound(ctx, 0)
	defer cancel()
	var out strings.Builder
	err := c.stream(ctx, cmd, func(line string) error {
		if out.Len() > 0 {
			out.WriteByte('\n')
		}
		out.WriteString(line)
		return nil
	})
	return out.String(), err
}

// Info is what identifies one running HAProxy process.
type Info struct {
	Pid       int64
	UptimeSec int64
	Version   string
}

// Info returns the process's identity from "show info". Use it to tell a
// restarted HAProxy from the one seen before. A reply without a numeric Pid
// is ErrBadReply.
func (c *Client) Info(ctx context.Context) (Info, error) {
	ctx, cancel := c.bound(ctx, 0)
	defer cancel()
	var p infoParser
	if err := c.stream(ctx, "show info", p.line); err != nil {
		return Info{}, withCmd("show_info", err)
	}
	i, err := p.done()
	if err != nil {
		return Info{}, withCmd("show_info", fmt.Errorf("runtime show info on %s: %w", c.path, err))
	}
	return i, nil
}

type infoParser struct {
	info         Info
	pid, version bool
	err          error
}

func (p *infoParser) line(line string) error {
	if p.err != nil {
		return nil
	}
	name, value, ok := strings.Cut(line, ": ")
	if !ok {
		p.err = fmt.Errorf("%w: %.80q is not \"Name: value\"", ErrBadReply, line)
		return nil
	}
	var err error
	switch name {
	case "Pid":
		p.info.Pid, err = strconv.ParseInt(value, 10, 64)
		if err == nil && p.info.Pid <= 0 {
			err = errors.New("not positive")
		}
		p.pid = true
	case "Uptime_sec":
		p.info.UptimeSec, err = strconv.ParseInt(value, 10, 64)
	case "Version":
		p.info.Version, p.version = value, true
	}
	if err != nil {
		p.err = fmt.Errorf("%w: %s %.40q: %v", ErrBadReply, name, value, err)
	}
	return nil
}

func (p *infoParser) done() (Info, error) {
	switch {
	case p.err != nil:
		return Info{}, p.err
	case !p.pid:
		return Info{}, fmt.Errorf("%w: no Pid", ErrBadReply)
	}
	return p.info, nil
}

// parseInfo parses a whole "show info" reply body.
func parseInfo(reply string) (Info, error) {
	var p infoParser
	for _, l := range strings.Split(reply, "\n") {
		p.line(l)
	}
	return p.done()
}

// Backends lists HAProxy's backends ("show backend").
func (c *Client) Backends(ctx context.Context) ([]string, error) {
	out, err := c.oneShot(ctx, "show backend")
	if err != nil {
		return nil, err
	}
	lines := strings.Split(out, "\n")
	if lines[0] != "# name" {
		return nil, withCmd("show_backend", fmt.Errorf("runtime show backend on %s: %w: %.80q", c.path, ErrBadReply, lines[0]))
	}
	var list []string
	for _, l := range lines[1:] {
		if l == "" || strings.ContainsAny(l, " \t") {
			return nil, withCmd("show_backend", fmt.Errorf("runtime show backend on %s: %w: %.80q", c.path, ErrBadReply, l))
		}
		list = append(list, l)
	}
	return list, nil
}

const unknownMapReply = "Unknown map identifier."

// Dump streams every entry of the live map (the current version) to fn,
// in HAProxy's order. Duplicated keys come once per entry. A cut dump is an
// error, never a short map; fn may have seen part of it before the error.
func (c *Client) Dump(ctx context.Context, mapPath string, fn func(key, value string) error) error {
	if err := checkPath(mapPath); err != nil {
		return err
	}
	ctx, cancel := c.bound(ctx, 0)
	defer cancel()
	cmd := "show map " + mapPath
	first, unknown := true, false
	err := c.stream(ctx, cmd, func(line string) error {
		if first && strings.HasPrefix(line, unknownMapReply) {
			unknown = true
			return nil
		}
		first = false
		// "0xPTR key value"; an error reply has no 0x pointer.
		ptr, rest, ok := strings.Cut(line, " ")
		key, value, _ := strings.Cut(rest, " ")
		if !ok || !isPointer(ptr) || key == "" {
			return fmt.Errorf("runtime %q on %s: %w: %.80q", cmd, c.path, ErrBadReply, line)
		}
		return fn(key, value)
	})
	if err == nil && unknown {
		return withCmd("show_map", c.unknownMap(ctx, mapPath))
	}
	return withCmd("show_map", err)
}

func isPointer(s string) bool {
	if len(s) < 3 || s[:2] != "0x" {
		return false
	}
	for _, r := range s[2:] {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}

// MapStatus is one map's line of "show map" (HAProxy 2.4+).
type MapStatus struct {
	ID      string // HAProxy's "#id"; differs between start modes, use Path
	Path    string
	CurrVer uint32 // the live version
	NextVer uint32 // the last version prepared; above CurrVer while uncommitted versions may hold entries
	// EntryCount is HAProxy's entry_cnt: the entries of every version of
	// the map, uncommitted ones included.
	EntryCount int
}

// Maps lists HAProxy's maps ("show map").
func (c *Client) Maps(ctx context.Context) ([]MapStatus, error) {
	out, err := c.oneShot(ctx, "show map")
	if err != nil {
		return nil, err
	}
	list, err := parseMaps(out)
	if err != nil {
		return nil, withCmd("show_map", fmt.Errorf("runtime show map on %s: %w", c.path, err))
	}
	return list, nil
}

// parseMaps parses a "show map" reply body: a "# id (file) description"
// header, then one line per map ending in "curr_ver=N next_ver=N
// entry_cnt=N".
func parseMaps(reply string) ([]MapStatus, error) {
	lines := strings.Split(reply, "\n")
	if !strings.HasPrefix(lines[0], "# id (file)") {
		return nil, fmt.Errorf("%w: %.80q", ErrBadReply, lines[0])
	}
	var list []MapStatus
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 5 || len(f[1]) < 3 || f[1][0] != '(' || f[1][len(f[1])-1] != ')' {
			return nil, fmt.Errorf("%w: %.120q", ErrBadReply, l)
		}
		m := MapStatus{ID: f[0], Path: f[1][1 : len(f[1])-1]}
		var vals [3]uint64
		for i, name := range []string{"curr_ver=", "next_ver=", "entry_cnt="} {
			v, ok := strings.CutPrefix(f[len(f)-3+i], name)
			n, err := strconv.ParseUint(v, 10, 32)
			if !ok || err != nil {
				return nil, fmt.Errorf("%w: map %s: %q is not %sN", ErrBadReply, m.Path, f[len(f)-3+i], name)
			}
			vals[i] = n
		}
		m.CurrVer, m.NextVer, m.EntryCount = uint32(vals[0]), uint32(vals[1]), int(vals[2])
		list = append(list, m)
	}
	return list, nil
}

// mapStatus returns the status of one map, or ErrUnknownMap.
func (c *Client) mapStatus(ctx context.Context, mapPath string) (MapStatus, error) {
	list, err := c.Maps(ctx)
	if err != nil {
		return MapStatus{}, err
	}
	for _, m := range list {
		if m.Path == mapPath {
			return m, nil
		}
	}
	return MapStatus{}, withCmd("show_map", unknownMapErr(mapPath, list))
}

// MapEntryCount returns HAProxy's entry_cnt for the map: the entries of all
// its versions, an uncommitted one included. ErrUnknownMap if HAProxy has
// no such map.
func (c *Client) MapEntryCount(ctx context.Context, mapPath string) (int, error) {
	if err := checkPath(mapPath); err != nil {
		return 0, err
	}
	m, err := c.mapStatus(ctx, mapPath)
	return m.EntryCount, err
}

// unknownMap is ErrUnknownMap for mapPath, naming the maps HAProxy has.
func (c *Client) unknownMap(ctx context.Context, mapPath string) error {
	list, err := c.Maps(ctx)
	if err != nil {
		return fmt.Errorf("runtime %s: %w: %s (and listing its maps: %v)", c.path, ErrUnknownMap, mapPath, err)
	}
	return unknownMapErr(mapPath, list)
}

func unknownMapErr(mapPath string, list []MapStatus) error {
	names := make([]string, len(list))
	for i, m := range list {
		names[i] = m.Path
	}
	has := "none"
	if len(names) > 0 {
		has = strings.Join(names, ", ")
	}
	return fmt.Errorf("runtime: %w: %s (it has: %s; maps come from the config, they cannot be created at runtime)", ErrUnknownMap, mapPath, has)
}

// checkPath refuses a map path that could change the meaning of a command
// line: empty, over MaxWord bytes, a blank, control character, ';' or '\',
// a leading '#' or '@', or a trailing "<<".
func checkPath(p string) error {
	bad := p == "" || len(p) > MaxWord || strings.HasSuffix(p, "<<") || p[0] == '#' || p[0] == '@'
	for i := 0; !bad && i < len(p); i++ {
		bad = p[i] <= ' ' || p[i] == 0x7f || p[i] == ';' || p[i] == '\\'
	}
	if bad {
		return fmt.Errorf("%w: map path %.80q", ErrUnsafeWord, p)
	}
	return nil
}

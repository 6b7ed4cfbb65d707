package runtime

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Entry is one key/value pair of a map.
type Entry struct {
	Key   string
	Value string
}

// Entries is a map's content for ReplaceFrom: Len entries, At(i) the i-th
// key and value. ReplaceFrom reads each entry twice (a check, then the
// send), so At must give the same answer each time, and must be safe to call
// while the caller goes on with other work: a frozen snapshot, not a view of
// something that changes.
type Entries interface {
	Len() int
	At(i int) (key, value string)
}

// EntryList is a slice of entries as Entries.
type EntryList []Entry

func (l EntryList) Len() int                  { return len(l) }
func (l EntryList) At(i int) (string, string) { return l[i].Key, l[i].Value }

// perEntry is the time allowed per entry of a Replace whose context has no
// deadline, on top of the client's timeout: 1M entries load in ~1 s, far
// slower in a -race build on a busy machine.
const perEntry = 50 * time.Microsecond

// Replace swaps the whole content of the live map for entries in one atomic
// step. It prepares a new version, loads it in payloads of at most 8 KB (one
// fresh connection each), checks that HAProxy's entry count grew by exactly
// len(entries), commits, and then checks that the map's current version is
// the one it loaded (else ErrNotCommitted) and that its count is
// len(entries) (else ErrCountMismatch). Requests see the old map until the
// commit.
//
// nil means every reply arrived in full and both checks passed. On an error
// before the commit the new version is cleared and the old map stays as it
// was. If the commit's reply is lost, the map's version tells whether it
// took effect: if not, the version is cleared; if so, it stays live and the
// error says so; if the version cannot be read either, the error says the
// state is unknown. A committed version is never cleared (that would empty
// the live map). ErrUnknownMap if HAProxy has no such map.
//
// entries must not hold duplicate keys. Every key and value is checked with
// CheckWord before anything is sent. Replace holds the client's map-write
// lock (see Client).
func (c *Client) Replace(ctx context.Context, mapPath string, entries []Entry) error {
	return c.ReplaceFrom(ctx, mapPath, EntryList(entries))
}

// ReplaceFrom is Replace with the entries read from src, one payload at a
// time, so that the caller need not build a copy of a large map as a slice
// of strings: src is read once to check it and cut the payloads, and once
// more as each payload is sent. A nil src is an empty map.
func (c *Client) ReplaceFrom(ctx context.Context, mapPath string, src Entries) error {
	if err := checkPath(mapPath); err != nil {
		return err
	}
	if src == nil {
		src = EntryList(nil)
	}
	n := src.Len()
	pl, err := cutPayloads(src)
	if err != nil {
		return fmt.Errorf("runtime replace %s: %w", mapPath, err)
	}

	ctx, cancel := c.bound(ctx, time.Duration(n)*perEntry)
	defer cancel()
	if err := c.lockWrites(ctx); err != nil {
		return err
	}
	defer c.unlockWrites()

	before, err := c.mapStatus(ctx, mapPath)
	if err != nil {
		return fmt.Errorf("runtime replace %s: %w", mapPath, err)
	}
	if err := c.allowed(); err != nil {
		return fmt.Errorf("runtime replace %s: %w", mapPath, err)
	}
	version, err := c.prepare(ctx, mapPath)
	if err != nil {
		return fmt.Errorf("runtime replace %s: %w", mapPath, err)
	}
	fail := func(err error) error {
		// The version was never committed, so no request saw it; drop it,
		// even when ctx has ended.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
		defer cancel()
		if cerr := c.clearVersion(cctx, mapPath, version); cerr != nil {
			return fmt.Errorf("%w (and clear map @%d: %v)", err, version, cerr)
		}
		return err
	}
	prefix := fmt.Sprintf("add map @%d %s <<\n", version, mapPath)
	if err := c.sendPayloads(ctx, mapPath, pl, prefix); err != nil {
		return fail(fmt.Errorf("runtime replace %s: %w", mapPath, err))
	}
	// A payload HAProxy dropped has no reply (a timeout above), but check
	// what it actually holds before committing anyway.
	after, err := c.mapStatus(ctx, mapPath)
	if err != nil {
		return fail(fmt.Errorf("runtime replace %s: %w", mapPath, err))
	}
	if after.EntryCount-before.EntryCount != n {
		return fail(withCmd("add_map", fmt.Errorf("runtime replace %s: %w: version %d holds %d entries, sent %d: not committed",
			mapPath, ErrCountMismatch, version, after.EntryCount-before.EntryCount, n)))
	}
	if err := c.allowed(); err != nil {
		return fail(fmt.Errorf("runtime replace %s: before the commit: %w", mapPath, err))
	}
	commitErr := c.expectEmpty(ctx, fmt.Sprintf("commit map @%d %s", version, mapPath), mapPath)

	// Whether or not the commit's reply came, HAProxy's status says whether
	// it took effect.
	vctx, vcancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer vcancel()
	st, err := c.mapStatus(vctx, mapPath)
	switch {
	case err != nil && commitErr != nil:
		return fmt.Errorf("runtime replace %s: commit of version %d in an unknown state: %w (then reading show map: %v)", mapPath, version, commitErr, err)
	case err != nil:
		return fmt.Errorf("runtime replace %s: checking the commit of version %d: %w", mapPath, version, err)
	case st.CurrVer != version && commitErr != nil:
		return fail(fmt.Errorf("runtime replace %s: %w: %w", mapPath, ErrNotCommitted, commitErr))
	case st.CurrVer != version:
		return fail(withCmd("commit", fmt.Errorf("runtime replace %s: %w: commit of version %d answered, but curr_ver=%d", mapPath, ErrNotCommitted, version, st.CurrVer)))
	case commitErr != nil:
		// Live, but a step's reply was lost: report it rather than take
		// a cut reply for success. Clearing now would empty the live map.
		return fmt.Errorf("runtime replace %s: version %d is live (curr_ver=%d entry_cnt=%d), but the commit's reply was lost: %w",
			mapPath, version, st.CurrVer, st.EntryCount, commitErr)
	case st.EntryCount != n:
		return withCmd("commit", fmt.Errorf("runtime replace %s: %w: version %d committed, HAProxy holds %d entries (next_ver=%d), sent %d",
			mapPath, ErrCountMismatch, version, st.EntryCount, st.NextVer, n))
	}
	return nil
}

// ClearUncommitted drops every uncommitted version of the map, such as one
// left by a loader killed in the middle of a Replace: each version above
// curr_ver up to next_ver of "show map", one "clear map @V" each, pipelined.
// The live version is never touched. It returns how many entries that
// removed (HAProxy's entry_cnt before minus after; 0 when there were none).
// Call it before resuming after a crash: on HAProxy 3.2.0 a "set map" of a
// key present in an uncommitted version loops until the watchdog kills
// HAProxy. It holds the client's map-write lock (see Client); another
// process committing this map at the same time is not allowed for.
func (c *Client) ClearUncommitted(ctx context.Context, mapPath string) (cleared int, err error) {
	if err := checkPath(mapPath); err != nil {
		return 0, err
	}
	ctx, cancel := c.bound(ctx, 0)
	defer cancel()
	if err := c.lockWrites(ctx); err != nil {
		return 0, err
	}
	defer c.unlockWrites()
	before, err := c.mapStatus(ctx, mapPath)
	if err != nil {
		return 0, fmt.Errorf("runtime clear uncommitted %s: %w", mapPath, err)
	}
	span := before.NextVer - before.CurrVer // versions wrap around as uint32
	if span == 0 {
		return 0, nil
	}
	if span > maxClearSpan {
		return 0, withCmd("show_map", fmt.Errorf("runtime clear uncommitted %s: %w: curr_ver=%d next_ver=%d, over %d versions apart",
			mapPath, ErrBadReply, before.CurrVer, before.NextVer, maxClearSpan))
	}
	lines := make([]string, 0, span)
	for v := before.CurrVer + 1; v != before.NextVer+1; v++ {
		lines = append(lines, fmt.Sprintf("clear map @%d %s\n", v, mapPath))
	}
	err = c.pipeline(ctx, mapPath, lines, func(i int, body string) error {
		if body != "" {
			return withCmd("clear_map", fmt.Errorf("runtime %q: %w: %.200q", strings.TrimSuffix(lines[i], "\n"), ErrBadReply, body))
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("runtime clear uncommitted %s: %w", mapPath, err)
	}
	after, err := c.mapStatus(ctx, mapPath)
	if err != nil {
		return 0, fmt.Errorf("runtime clear uncommitted %s: %w", mapPath, err)
	}
	if after.CurrVer != before.CurrVer {
		return 0, withCmd("clear_map", fmt.Errorf("runtime clear uncommitted %s: curr_ver moved from %d to %d meanwhile: another writer", mapPath, before.CurrVer, after.CurrVer))
	}
	return before.EntryCount - after.EntryCount, nil
}

// maxClearSpan bounds how many versions ClearUncommitted clears in one call
// (~45 bytes each, pipelined at >200k/s).
const maxClearSpan = 1 << 20

// prepare runs "prepare map" and returns the new version, parsed strictly
// from "New version created: N".
func (c *Client) prepare(ctx context.Context, mapPath string) (uint32, error) {
	cmd := "prepare map " + mapPath
	out, err := c.oneShot(ctx, cmd)
	if err != nil {
		return 0, withCmd(cmd, err)
	}
	if strings.HasPrefix(out, unknownMapReply) {
		return 0, withCmd(cmd, c.unknownMap(ctx, mapPath))
	}
	v, ok := strings.CutPrefix(out, "New version created: ")
	n, err := strconv.ParseUint(v, 10, 32)
	if !ok || err != nil {
		return 0, withCmd(cmd, fmt.Errorf("runtime %q on %s: %w: %.200q", cmd, c.path, ErrBadReply, out))
	}
	return uint32(n), nil
}

// clearVersion drops one uncommitted version.
func (c *Client) clearVersion(ctx context.Context, mapPath string, version uint32) error {
	return c.expectEmpty(ctx, fmt.Sprintf("clear map @%d %s", version, mapPath), mapPath)
}

// expectEmpty runs cmd on a fresh connection and requires HAProxy's empty
// success reply.
func (c *Client) expectEmpty(ctx context.Context, cmd, mapPath string) error {
	out, err := c.oneShot(ctx, cmd)
	if err != nil {
		return withCmd(cmd, err)
	}
	if strings.HasPrefix(out, unknownMapReply) {
		return withCmd(cmd, c.unknownMap(ctx, mapPath))
	}
	if out != "" {
		first, _, _ := strings.Cut(cmd, "\n")
		return withCmd(cmd, fmt.Errorf("runtime %.60q on %s: haproxy replied %.200q: %w", first, c.path, out, ErrBadReply))
	}
	return nil
}

// payloadConns is how many payloads are in flight at once, each on a
// connection of its own. One at a time, each payload waits a round trip
// that is longer than HAProxy's work on it as soon as the sender or HAProxy
// shares a busy core (1M entries: 1.1 s on an idle machine, 7-8 s in the
// bench's rig, where the syncer shares a core with Redis and the loader).
// Four stay well under HAProxy's default stats maxconn (10), next to the
// syncer's two prompt-mode connections.
const payloadConns = 4

// sendPayloads sends every payload as prefix+text, on up to payloadConns
// connections at once; HAProxy may apply them in any order. The write
// guard is asked right before each payload is sent. It returns the first
// failure; the payloads not yet sent are then not sent.
func (c *Client) sendPayloads(ctx context.Context, mapPath string, pl *payloads, prefix string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type job struct {
		i   int
		cmd string
	}
	n := pl.count()
	jobs := make(chan job)
	errs := make(chan error, payloadConns)
	var wg sync.WaitGroup
	for range min(payloadConns, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				err := c.allowed()
				if err != nil {
					err = fmt.Errorf("before payload %d/%d: %w", j.i+1, n, err)
				} else if err = c.expectEmpty(ctx, j.cmd, mapPath); err != nil {
					err = fmt.Errorf("payload %d/%d: %w", j.i+1, n, err)
				}
				if err != nil {
					errs <- err // one per worker at most: errs has room
					cancel()
					return
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case jobs <- job{i, prefix + pl.text(i)}:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(errs)
	if err, ok := <-errs; ok {
		return err
	}
	return ctxErr(ctx) // nil unless ctx ended while feeding
}

// payloads cuts a map's entries into payloads of at most payloadChunk
// bytes: entries starts[i] to starts[i+1] make payload i, built only when it
// is sent (at 1M entries the whole text would be ~20 MB held at once).
type payloads struct {
	src    Entries
	starts []int
	b      strings.Builder
}

// cutPayloads checks every key and value of src with CheckWord and cuts the
// payloads.
func cutPayloads(src Entries) (*payloads, error) {
	p := &payloads{src: src, starts: []int{0}}
	n, size := src.Len(), 0
	for i := range n {
		k, v := src.At(i)
		if err := CheckWord(k); err != nil {
			return nil, fmt.Errorf("entry %d key: %w", i, err)
		}
		if err := CheckWord(v); err != nil {
			return nil, fmt.Errorf("entry %d (%s) value: %w", i, k, err)
		}
		sz := len(k) + len(v) + 2
		if size > 0 && size+sz > payloadChunk {
			p.starts = append(p.starts, i)
			size = 0
		}
		size += sz
	}
	if size > 0 {
		p.starts = append(p.starts, n)
	}
	return p, nil
}

func (p *payloads) count() int { return len(p.starts) - 1 }

// text is payload i: "key value\n" lines.
func (p *payloads) text(i int) string {
	p.b.Reset()
	for j := p.starts[i]; j < p.starts[i+1]; j++ {
		k, v := p.src.At(j)
		p.b.WriteString(k)
		p.b.WriteByte(' ')
		p.b.WriteString(v)
		p.b.WriteByte('\n')
	}
	return p.b.String()
}

// AddFrom adds src's entries to the live version of the map, in payloads of
// at most 8 KB (one fresh connection each, "add map <map> <<"): the way to
// bring many new keys live at once, about as fast as a Replace loads them
// and with no walk of the map's entry list (a "set map" on HAProxy 2.6
// walks it). Each entry is live from its payload's reply on, so a batch is
// not atomic, and the payloads go on several connections at once: entries
// become live in no particular order. A nil src adds nothing.
//
// An add never replaces: src's keys must be absent from the map and appear
// once in src (else the map holds the key twice, and HAProxy routes by the
// first). No version of the map may be pending meanwhile: HAProxy drops the
// live version's adds when another version is committed.
//
// nil means every payload was answered with success and HAProxy's entry
// count grew by exactly src.Len(). An error after the first payload
// leaves some of the entries live (ErrCountMismatch if the replies said
// success but the count disagrees): the caller must treat the map as in
// doubt. Every key and value is checked with CheckWord before anything is
// sent. ErrUnknownMap if HAProxy has no such map. AddFrom holds the
// client's map-write lock (see Client).
func (c *Client) AddFrom(ctx context.Context, mapPath string, src Entries) error {
	if err := checkPath(mapPath); err != nil {
		return err
	}
	if src == nil {
		return nil
	}
	n := src.Len()
	if n == 0 {
		return nil
	}
	pl, err := cutPayloads(src)
	if err != nil {
		return fmt.Errorf("runtime add %s: %w", mapPath, err)
	}
	ctx, cancel := c.bound(ctx, time.Duration(n)*perEntry)
	defer cancel()
	if err := c.lockWrites(ctx); err != nil {
		return err
	}
	defer c.unlockWrites()
	before, err := c.mapStatus(ctx, mapPath)
	if err != nil {
		return fmt.Errorf("runtime add %s: %w", mapPath, err)
	}
	if err := c.sendPayloads(ctx, mapPath, pl, "add map "+mapPath+" <<\n"); err != nil {
		return fmt.Errorf("runtime add %s: %w", mapPath, err)
	}
	after, err := c.mapStatus(ctx, mapPath)
	if err != nil {
		return fmt.Errorf("runtime add %s: %w", mapPath, err)
	}
	if after.EntryCount-before.EntryCount != n {
		return withCmd("add_map", fmt.Errorf("runtime add %s: %w: the map grew by %d entries, sent %d",
			mapPath, ErrCountMismatch, after.EntryCount-before.EntryCount, n))
	}
	return nil
}

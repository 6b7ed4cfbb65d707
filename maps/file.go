package maps

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/shardmap/shardmap/internal/atomicfile"
)

// headerPrefix starts the comment line in which shardmap records which
// change-log entry a map file reflects. HAProxy reads '#' in column 0 as a
// comment, so the header never becomes a map entry.
const headerPrefix = "# shardmap log-id="

// maxFileErrors caps how many bad lines one parse reports.
const maxFileErrors = 20

// MapFile is the content of an HAProxy map file written by shardmap: the
// change-log ID it reflects (empty when unknown) and its entries.
type MapFile struct {
	LogID   string
	Entries []Assignment
}

// ParseMapFile reads a map file in HAProxy's format: one "user shard" pair per
// line, blank lines and lines starting with '#' ignored. Every entry is
// validated; a bad line, or a user listed twice, is an error naming the line
// number. Up to 20 problems are reported together, and when there is any the
// returned entries must not be used.
func ParseMapFile(r io.Reader) (MapFile, error) {
	var (
		mf    MapFile
		errs  []error
		lines []int32 // the line of each entry, for the duplicate check
		sc    = bufio.NewScanner(r)
		line  int
		extra int
	)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	report := func(err error) {
		if len(errs) < maxFileErrors {
			errs = append(errs, err)
		} else {
			extra++
		}
	}
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.HasPrefix(text, headerPrefix) {
			if f := strings.Fields(strings.TrimPrefix(text, headerPrefix)); len(f) > 0 && f[0] != "none" {
				mf.LogID = f[0]
			}
			continue
		}
		if strings.HasPrefix(text, "#") || strings.TrimSpace(text) == "" {
			continue
		}
		if i := strings.IndexFunc(text, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }); i >= 0 {
			// A CR or other control byte inside a line would reach HAProxy's
			// map raw. (A CR right before the newline is a CRLF ending and
			// was already dropped by the scanner, as HAProxy drops it.)
			report(fmt.Errorf("%w: line %d: control byte %q at column %d", ErrInvalid, line, text[i], i+1))
			continue
		}
		user, shard, n := twoFields(text)
		if n != 2 {
			report(fmt.Errorf("%w: line %d: %d fields, want 2 (\"user shard\")", ErrInvalid, line, len(strings.Fields(text))))
			continue
		}
		a := Assignment{User: user, Shard: shard}
		if err := a.Validate(); err != nil {
			report(fmt.Errorf("line %d: %w", line, err))
			continue
		}
		mf.Entries = append(mf.Entries, a)
		lines = append(lines, int32(min(line, 1<<31-1)))
	}
	if err := sc.Err(); err != nil {
		return mf, fmt.Errorf("read map file after line %d: %w", line, err)
	}
	for _, d := range duplicates(mf.Entries, lines) {
		report(fmt.Errorf("%w: line %d: user %q already assigned on line %d", ErrInvalid, d.line, d.user, d.first))
	}
	if extra > 0 {
		errs = append(errs, fmt.Errorf("%w: and %d more bad lines", ErrInvalid, extra))
	}
	return mf, errors.Join(errs...)
}

// twoFields splits text on runs of spaces and tabs; n is the number of
// fields, counted up to 3. (strings.Fields allocates a slice per line: a
// third of the parse of a 1M-line file.)
func twoFields(text string) (a, b string, n int) {
	var f [2]string
	for i := 0; i < len(text); {
		for i < len(text) && (text[i] == ' ' || text[i] == '\t') {
			i++
		}
		if i == len(text) {
			break
		}
		j := i
		for j < len(text) && text[j] != ' ' && text[j] != '\t' {
			j++
		}
		if n == 2 {
			return "", "", 3
		}
		f[n] = text[i:j]
		n++
		i = j
	}
	return f[0], f[1], n
}

type duplicate struct {
	user        string
	first, line int32
}

// duplicates lists the entries whose user came on an earlier line, in line
// order. A file in user order (as shardmap writes them) is checked by
// comparing neighbours; any other with a map.
func duplicates(es []Assignment, lines []int32) []duplicate {
	var out []duplicate
	sorted := true
	for i := 1; i < len(es) && sorted; i++ {
		sorted = es[i-1].User <= es[i].User
	}
	if sorted {
		for i := 1; i < len(es); i++ {
			if es[i].User == es[i-1].User {
				first := i - 1
				for first > 0 && es[first-1].User == es[i].User {
					first--
				}
				out = append(out, duplicate{es[i].User, lines[first], lines[i]})
			}
		}
		return out
	}
	seen := make(map[string]int32, len(es))
	for i, a := range es {
		if first, dup := seen[a.User]; dup {
			out = append(out, duplicate{a.User, first, lines[i]})
			continue
		}
		seen[a.User] = lines[i]
	}
	return out
}

// CountMapFile counts the entry lines of the map file at path (lines that
// are neither blank nor comments), reading it as a stream; 0 and no error
// when there is no file.
func CountMapFile(path string) (int, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" && t[0] != '#' {
			n++
		}
	}
	return n, sc.Err()
}

// ReadMapFile parses the map file at path.
func ReadMapFile(path string) (MapFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return MapFile{}, err
	}
	defer f.Close()
	mf, err := ParseMapFile(f)
	if err != nil {
		return mf, fmt.Errorf("parse %s: %w", path, err)
	}
	return mf, nil
}

// Encode renders the map file: the header, then the entries sorted by user so
// that the same content always gives the same bytes. Entries are validated
// again here; Encode refuses to render one that could corrupt the file.
func (mf MapFile) Encode() ([]byte, error) {
	entries := slices.Clone(mf.Entries)
	slices.SortFunc(entries, func(a, b Assignment) int { return strings.Compare(a.User, b.User) })
	size := 128
	for _, a := range entries {
		size += len(a.User) + len(a.Shard) + 2
	}
	var b bytes.Buffer
	b.Grow(size)
	fmt.Fprintf(&b, "%s%s entries=%d\n", headerPrefix, orNone(mf.LogID), len(entries))
	b.WriteString(writtenBy)
	for _, a := range entries {
		if err := a.Validate(); err != nil {
			return nil, fmt.Errorf("encode map file: %w", err)
		}
		b.WriteString(a.User)
		b.WriteByte(' ')
		b.WriteString(a.Shard)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

func orNone(id string) string {
	if id == "" {
		return "none"
	}
	return id
}

// WriteMapFile encodes mf and writes it to path atomically (see
// atomicfile.Write). It reports whether the file changed; identical bytes are
// not rewritten. An existing file keeps its mode and owner, which HAProxy's
// user may depend on; newMode is the mode of a file that does not exist yet.
func WriteMapFile(path string, mf MapFile, newMode os.FileMode) (changed bool, err error) {
	data, err := mf.Encode()
	if err != nil {
		return false, err
	}
	// Read the old file only when it may be equal: at 1M entries it is
	// ~20 MB more held during the write.
	if fi, err := os.Stat(path); err == nil && fi.Size() == int64(len(data)) {
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
			return false, nil
		}
	}
	if err := atomicfile.Write(path, data, newMode); err != nil {
		return false, err
	}
	return true, nil
}

// DeltaPath is the delta map that goes with the map at base, for HAProxy
// versions whose set and del walk the whole map (before 2.9): base's path
// with ".delta" before its extension, "users.map" -> "users.delta.map". The
// renderer and the syncer agree on it through this function.
func DeltaPath(base string) string {
	dir, name := filepath.Split(base)
	if ext := filepath.Ext(name); ext != "" && ext != name {
		return dir + strings.TrimSuffix(name, ext) + ".delta" + ext
	}
	return base + ".delta"
}

// MapEntries is a map file's entries for WriteMapFileFrom, sorted by user
// (bytewise, as strings.Compare): Len of them, At(i) the i-th. At must give
// the same answer each time it is called for an i.
type MapEntries interface {
	Len() int
	At(i int) (user, shard string)
}

// WriteMapFileFrom writes the map file of logID and entries to path as
// WriteMapFile does (the same bytes as Encode, atomically, identical bytes
// not rewritten, the mode and owner of an existing file kept), but
// streaming: neither the file's text nor the old file is held in memory.
// entries must be sorted by user with no user twice, and each must pass
// Validate: otherwise the error wraps ErrInvalid and path is left as it was.
func WriteMapFileFrom(path, logID string, entries MapEntries, newMode os.FileMode) (changed bool, err error) {
	n := entries.Len()
	header := fmt.Sprintf("%s%s entries=%d\n%s", headerPrefix, orNone(logID), n, writtenBy)
	size := int64(len(header))
	prev := ""
	for i := range n {
		u, sh := entries.At(i)
		if err := (Assignment{User: u, Shard: sh}).Validate(); err != nil {
			return false, fmt.Errorf("write map file %s: entry %d: %w", path, i, err)
		}
		if i > 0 && u <= prev {
			return false, fmt.Errorf("write map file %s: %w: entry %d (%q) not after entry %d (%q): want sorted users, none twice", path, ErrInvalid, i, u, i-1, prev)
		}
		prev = u
		size += int64(len(u) + len(sh) + 2)
	}
	encode := func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 64<<10)
		bw.WriteString(header)
		for i := range n {
			u, sh := entries.At(i)
			bw.WriteString(u)
			bw.WriteByte(' ')
			bw.WriteString(sh)
			bw.WriteByte('\n')
		}
		return bw.Flush()
	}
	if fi, err := os.Stat(path); err == nil && fi.Size() == size {
		if same, err := sameAs(path, encode); err == nil && same {
			return false, nil
		}
	}
	if err := atomicfile.WriteFrom(path, encode, newMode); err != nil {
		return false, fmt.Errorf("write map file: %w", err)
	}
	return true, nil
}

// writtenBy is the map file's second line.
const writtenBy = "# Written by shardmap from Redis; edits here are overwritten. Use mapctl.\n"

// errDiffers ends a comparison at the first byte that differs.
var errDiffers = errors.New("differs")

// sameAs reports whether the file at path holds exactly what encode writes,
// reading both as streams.
func sameAs(path string, encode func(io.Writer) error) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	c := &comparer{r: bufio.NewReaderSize(f, 64<<10)}
	if err := encode(c); err != nil {
		if errors.Is(err, errDiffers) {
			return false, nil
		}
		return false, err
	}
	_, err = c.r.ReadByte() // the old file must end here too
	return err == io.EOF, nil
}

// comparer is a writer that checks what is written against r.
type comparer struct {
	r   *bufio.Reader
	buf []byte
}

func (c *comparer) Write(p []byte) (int, error) {
	if cap(c.buf) < len(p) {
		c.buf = make([]byte, len(p))
	}
	b := c.buf[:len(p)]
	if _, err := io.ReadFull(c.r, b); err != nil || !bytes.Equal(b, p) {
		return 0, errDiffers
	}
	return len(p), nil
}

package haproxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/shardmap/shardmap/internal/atomicfile"
	"github.com/shardmap/shardmap/maps"
)

// Spread assigns n logical shards to shards, evenly and in the order given:
// shards[0] holds logical shards 0.., shards[1] the next block, and so on,
// each a contiguous block, block sizes differing by at most one. The result
// has n entries (logical shard -> shard name). It depends only on its
// arguments: n < 1 or no shards gives nil.
func Spread(n int, shards []string) []string {
	if n < 1 || len(shards) == 0 {
		return nil
	}
	out := make([]string, n)
	k := len(shards)
	for i := range out {
		out[i] = shards[i*k/n] // i*k < 2^16 * #shards: no overflow
	}
	return out
}

// LogicalMapFile is the logical map of routing: ids for t: the layout's
// logical shards spread over t's shards (sorted by name) with Spread, one
// "logical shard" line each, after a comment header. The same topology
// gives the same bytes. It is the map at creation only: afterwards logical
// shards move live ("set map"), so write it with CreateLogicalMap, which
// never replaces an existing file.
func LogicalMapFile(t *Topology) []byte {
	l := t.IDLayout()
	names := t.ShardNames()
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Logical shard -> shard for routing: ids, written once by shardmap:\n")
	fmt.Fprintf(&b, "# %d logical shards spread evenly over %s.\n", l.LogicalShards(), strings.Join(names, ", "))
	fmt.Fprintf(&b, "# Move one live with: set map %s LOGICAL SHARD (and keep this file in step).\n", t.EffectiveLogicalMap())
	for i, sh := range Spread(l.LogicalShards(), names) {
		b.WriteString(strconv.Itoa(i))
		b.WriteByte(' ')
		b.WriteString(sh)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// CreateLogicalMap writes LogicalMapFile(t) to t.EffectiveLogicalMap()
// (atomically, mode 0644) unless that file exists already, which it leaves
// untouched: logical shards may have moved since it was created. It reports
// whether it wrote the file. Only for routing: ids (else an ErrTopology error).
func CreateLogicalMap(t *Topology) (created bool, err error) {
	if t.EffectiveRouting() != RoutingIDs {
		return false, bad("no logical map with routing: %s", t.EffectiveRouting())
	}
	path := t.EffectiveLogicalMap()
	if _, err := os.Stat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("logical map: %w", err)
	}
	if err := atomicfile.Write(path, LogicalMapFile(t), 0o644); err != nil {
		return false, fmt.Errorf("write logical map %s: %w", path, err)
	}
	return true, nil
}

// CreateDeltaMap writes an empty delta map for a topology with delta_map
// when the file does not exist (HAProxy refuses a config whose map file is
// missing). An existing one is kept: the syncer reconciles what HAProxy
// loads from it.
func CreateDeltaMap(t *Topology) (created bool, err error) {
	if !t.DeltaMap {
		return false, nil
	}
	path := maps.DeltaPath(t.Map)
	if _, err := os.Stat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("delta map: %w", err)
	}
	if err := atomicfile.Write(path, nil, 0o644); err != nil {
		return false, fmt.Errorf("write delta map %s: %w", path, err)
	}
	return true, nil
}

// ErrLogicalMap is wrapped by ReadLogicalMap's errors about the content.
var ErrLogicalMap = errors.New("invalid logical map")

// ReadLogicalMap reads a logical map file: "LOGICAL SHARD" lines, blank
// lines and '#' comments. Each logical shard must be a canonical decimal in
// 0..logicalShards-1 and appear at most once, each shard a valid shard name;
// errors name the file, the line and the rule (ErrLogicalMap). Logical shards
// the file does not list are absent from the result (HAProxy sends them to
// the default shard).
func ReadLogicalMap(path string, logicalShards int) (map[int]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("logical map: %w", err)
	}
	out := map[int]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 64*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s:%d: %w: want \"LOGICAL SHARD\", got %q", path, n, ErrLogicalMap, line)
		}
		l, err := strconv.Atoi(f[0])
		if err != nil || l < 0 || l >= logicalShards || strconv.Itoa(l) != f[0] {
			return nil, fmt.Errorf("%s:%d: %w: logical shard %q, want 0..%d without leading zeros", path, n, ErrLogicalMap, f[0], logicalShards-1)
		}
		if err := maps.ValidateShard(f[1]); err != nil {
			return nil, fmt.Errorf("%s:%d: %w: %v", path, n, ErrLogicalMap, err)
		}
		if prev, dup := out[l]; dup {
			return nil, fmt.Errorf("%s:%d: %w: logical shard %d listed twice (%s and %s)", path, n, ErrLogicalMap, l, prev, f[1])
		}
		out[l] = f[1]
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrLogicalMap, err)
	}
	return out, nil
}

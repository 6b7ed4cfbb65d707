package maps

import (
	"bytes"
	"strings"
	"testing"
)

// Whatever the parser accepts re-encodes and re-parses to the same entries,
// and the encoded file holds only "user shard" lines and comments.
func FuzzParseMapFile(f *testing.F) {
	for _, seed := range []string{
		"alice shard1\nbob shard2\n",
		"# shardmap log-id=1-0 entries=1\nalice shard1\n",
		"a\tb\r\n\n#c\n",
		"a b c\n",
		"a shard1\na shard2\n",
		"x\x00 y\n",
		"k<< v\n",
		"#0x55 s\n",
		strings.Repeat("u", 300) + " s\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		mf, err := ParseMapFile(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, e := range mf.Entries {
			if err := e.Validate(); err != nil {
				t.Fatalf("parser accepted invalid entry %q: %v", e, err)
			}
		}
		enc, err := mf.Encode()
		if err != nil {
			t.Fatalf("encode of parsed entries: %v", err)
		}
		for i, line := range strings.Split(strings.TrimSuffix(string(enc), "\n"), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			if f := strings.Fields(line); len(f) != 2 || f[0]+" "+f[1] != line {
				t.Fatalf("encoded line %d %q is not \"user shard\"", i+1, line)
			}
		}
		again, err := ParseMapFile(bytes.NewReader(enc))
		if err != nil || len(again.Entries) != len(mf.Entries) {
			t.Fatalf("re-parse: %d entries, %v; want %d", len(again.Entries), err, len(mf.Entries))
		}
		seen := map[string]string{}
		for _, e := range mf.Entries {
			seen[e.User] = e.Shard
		}
		for _, e := range again.Entries {
			if seen[e.User] != e.Shard {
				t.Fatalf("round trip changed %s: %q -> %q", e.User, seen[e.User], e.Shard)
			}
		}
	})
}

// A user that passes validation is one word of printable ASCII that cannot
// start a comment, an entry reference, a new command or a payload.
func FuzzValidateUser(f *testing.F) {
	for _, seed := range []string{"alice", "a b", "a;b", "a\nb", "#0x1", "x<<", "x<", "\x7f", "é", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, u string) {
		if ValidateUser(u) != nil {
			return
		}
		if len(u) == 0 || len(u) > MaxUserLen || u[0] == '#' || strings.HasSuffix(u, "<<") ||
			strings.ContainsAny(u, " \t\r\n;\\\",") || strings.IndexFunc(u, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
			t.Fatalf("ValidateUser accepted %q", u)
		}
		if strings.Fields(u)[0] != u {
			t.Fatalf("%q is not one map-file field", u)
		}
	})
}

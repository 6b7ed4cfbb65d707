package maps

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestMapFileRoundTrip(t *testing.T) {
	in := MapFile{LogID: "1700000000000-3", Entries: []Assignment{{"zed", "shard2"}, {"alice", "shard1"}, {"bob", "shard0"}}}
	data, err := in.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "# shardmap log-id=1700000000000-3 entries=3\n") {
		t.Fatalf("header: %q", data)
	}
	out, err := ParseMapFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if out.LogID != in.LogID || len(out.Entries) != 3 {
		t.Fatalf("round trip: %+v", out)
	}
	want := []string{"alice", "bob", "zed"}
	for i, e := range out.Entries {
		if e.User != want[i] {
			t.Errorf("entry %d = %v, want user %s (sorted)", i, e, want[i])
		}
	}
	again, _ := out.Encode()
	if !bytes.Equal(again, data) {
		t.Errorf("encode not deterministic:\n%s\n%s", data, again)
	}
}

func TestParseMapFileErrorsNameLines(t *testing.T) {
	src := "# comment\n\nalice shard1\nbob\ncarol shard1 extra\nalice shard2\nd;e shard1\nfrank bad/shard\n   \n"
	_, err := ParseMapFile(strings.NewReader(src))
	if err == nil || !errors.Is(err, ErrInvalid) {
		t.Fatalf("want ErrInvalid, got %v", err)
	}
	for _, want := range []string{"line 4: 1 fields", "line 5: 3 fields", `line 6: user "alice" already assigned on line 3`, "line 7:", "line 8:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestParseMapFileTabsCRLF(t *testing.T) {
	mf, err := ParseMapFile(strings.NewReader("a\tshard1\nb  shard2\n"))
	if err != nil || len(mf.Entries) != 2 || mf.LogID != "" || mf.Entries[0].Shard != "shard1" {
		t.Fatalf("tabs and spaces: %+v %v", mf, err)
	}
	// A CRLF ending is dropped, as HAProxy drops it; a CR inside a line is refused.
	mf, err = ParseMapFile(strings.NewReader("a shard1\r\nb shard2\r\n"))
	if err != nil || len(mf.Entries) != 2 || mf.Entries[1].Shard != "shard2" {
		t.Fatalf("CRLF: %+v %v", mf, err)
	}
	_, err = ParseMapFile(strings.NewReader("a shard1\nb sh\rard2\n"))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "line 2: control byte '\\r'") {
		t.Fatalf("CR inside a line: want ErrInvalid naming line 2, got %v", err)
	}
}

func TestWriteMapFileSkipsUnchanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.map")
	mf := MapFile{LogID: "1-0", Entries: []Assignment{{"a", "s"}}}
	if changed, err := WriteMapFile(path, mf, 0o640); err != nil || !changed {
		t.Fatalf("first write: changed=%v err=%v", changed, err)
	}
	if changed, err := WriteMapFile(path, mf, 0o640); err != nil || changed {
		t.Fatalf("second write: changed=%v err=%v, want unchanged", changed, err)
	}
}

func TestWriteMapFileRefusesBadEntry(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.map")
	_, err := WriteMapFile(path, MapFile{Entries: []Assignment{{"a\nb", "s"}}}, 0o640)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("want ErrInvalid, got %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("file written despite bad entry: %v", err)
	}
}

// The map file is HAProxy's: a rewrite keeps the mode and owner the operator
// gave it (e.g. root:haproxy 0640), and a new file gets the mode asked for.
func TestWriteMapFileKeepsModeAndOwner(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.map")
	if _, err := WriteMapFile(path, MapFile{LogID: "1-0", Entries: []Assignment{{"a", "s"}}}, 0o640); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("new file: %v %v, want mode 640", fi.Mode(), err)
	}
	os.Chmod(path, 0o600)
	wantUID, wantGID := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		wantUID, wantGID = 4242, 4343
		if err := os.Chown(path, wantUID, wantGID); err != nil {
			t.Fatal(err)
		}
	}
	if changed, err := WriteMapFile(path, MapFile{LogID: "2-0", Entries: []Assignment{{"a", "t"}}}, 0o644); err != nil || !changed {
		t.Fatalf("rewrite: changed=%v err=%v", changed, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o after rewrite, want the existing 600", fi.Mode().Perm())
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != wantUID || int(st.Gid) != wantGID {
		t.Errorf("owner %d:%d after rewrite, want %d:%d", st.Uid, st.Gid, wantUID, wantGID)
	}
}

func TestDeltaPath(t *testing.T) {
	for in, want := range map[string]string{
		"/etc/haproxy/users.map": "/etc/haproxy/users.delta.map",
		"/etc/haproxy/users":     "/etc/haproxy/users.delta",
		"users.map":              "users.delta.map",
		"/a.b/.map":              "/a.b/.map.delta",
	} {
		if got := DeltaPath(in); got != want {
			t.Errorf("DeltaPath(%q) = %q, want %q", in, got, want)
		}
	}
}

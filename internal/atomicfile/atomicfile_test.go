package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func owner(t *testing.T, path string) (uid, gid uint32) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}

func TestWriteNewFileGetsMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.map")
	old := syscall.Umask(0o077) // mode is not subject to the umask
	defer syscall.Umask(old)
	if err := Write(path, []byte("a b\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if got := mode(t, path); got != 0o640 {
		t.Fatalf("new file mode %o, want 640", got)
	}
	if got, _ := os.ReadFile(path); string(got) != "a b\n" {
		t.Fatalf("content %q", got)
	}
}

func TestWriteKeepsMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.map")
	if err := os.WriteFile(path, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o600)
	if err := Write(path, []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := mode(t, path); got != 0o600 {
		t.Fatalf("mode %o after rewrite, want the existing 600", got)
	}
	if got, _ := os.ReadFile(path); string(got) != "new\n" {
		t.Fatalf("content %q", got)
	}
}

// The existing file's uid and gid survive a rewrite by another user (the
// tests run as root, so the chown to another owner is allowed).
func TestWriteKeepsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown a file to another user")
	}
	path := filepath.Join(t.TempDir(), "users.map")
	if err := os.WriteFile(path, []byte("old\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 4242, 4343); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if uid, gid := owner(t, path); uid != 4242 || gid != 4343 {
		t.Fatalf("owner %d:%d after rewrite, want 4242:4343", uid, gid)
	}
	if got := mode(t, path); got != 0o640 {
		t.Fatalf("mode %o, want 640", got)
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.map")
	files := map[string]bool{ // name -> removed
		"users.map":                 false,
		".users.map.tmp-123456":     true,
		".users.map.tmp-9":          true,
		".users.map.tmp-":           false, // no random part: not ours
		".users.map.tmpx":           false,
		"users.map.tmp-1":           false,
		".other.map.tmp-1":          false,
		"other.map":                 false,
		".users.map.bak":            false,
		".users.map.tmp-1.keep.txt": true, // has our prefix; CreateTemp owns that namespace
	}
	for name := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(dir, ".users.map.tmp-dir"), 0o755) // not a regular file: left alone

	removed, err := RemoveStale(path)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for name, gone := range files {
		if gone {
			want = append(want, filepath.Join(dir, name))
		}
	}
	slices.Sort(want)
	slices.Sort(removed)
	if !slices.Equal(removed, want) {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	for name, gone := range files {
		_, err := os.Stat(filepath.Join(dir, name))
		if exists := err == nil; exists == gone {
			t.Errorf("%s: exists=%v, want removed=%v", name, exists, gone)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ".users.map.tmp-dir")); err != nil {
		t.Errorf("directory with the prefix was touched: %v", err)
	}
	if again, err := RemoveStale(path); err != nil || len(again) != 0 {
		t.Fatalf("second run removed %v, %v", again, err)
	}
}

// A crash after the new content is written and before the rename must leave
// the old file whole, and the temp file it leaves is what RemoveStale finds.
func TestWriteCrashBeforeRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.map")
	before := []byte("alice shard1\n")
	if err := Write(path, before, 0o644); err != nil {
		t.Fatal(err)
	}
	testHookBeforeRename = func() { panic("crash") }
	defer func() { testHookBeforeRename = nil }()
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("hook did not run")
			}
		}()
		Write(path, bytes.Repeat([]byte("bob shard2\n"), 100_000), 0o644)
	}()
	testHookBeforeRename = nil

	after, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("old file changed by a crashed write: err=%v, %d bytes", err, len(after))
	}
	removed, err := RemoveStale(path)
	if err != nil || len(removed) != 1 || !strings.HasPrefix(filepath.Base(removed[0]), ".users.map.tmp-") {
		t.Fatalf("RemoveStale after the crash: %v %v", removed, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "users.map" {
		t.Fatalf("dir after RemoveStale: %v", ents)
	}
}

// A failed write removes its temp file and leaves the target alone.
func TestWriteErrorRemovesTemp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.map")
	if err := os.Mkdir(path, 0o755); err != nil { // rename of a file over a directory fails
		t.Fatal(err)
	}
	if err := Write(path, []byte("x"), 0o644); err == nil {
		t.Fatal("write over a directory succeeded")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temp file left after a failed write: %v", ents)
	}
}

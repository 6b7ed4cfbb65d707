package maps

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

type assignmentList []Assignment

func (l assignmentList) Len() int                  { return len(l) }
func (l assignmentList) At(i int) (string, string) { return l[i].User, l[i].Shard }

// WriteMapFileFrom writes the bytes Encode gives, skips identical content,
// and refuses unsorted or invalid entries leaving the file as it was.
func TestWriteMapFileFrom(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.map")
	var es assignmentList
	for i := range 5000 {
		es = append(es, Assignment{User: fmt.Sprintf("user%06d", i), Shard: fmt.Sprintf("shard%d", i%3)})
	}
	want, err := MapFile{LogID: "5-1", Entries: es}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	changed, err := WriteMapFileFrom(path, "5-1", es, 0o640)
	if err != nil || !changed {
		t.Fatalf("first write: changed %v, %v", changed, err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, want) {
		t.Fatalf("streamed file differs from Encode's bytes (%d vs %d bytes)", len(got), len(want))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640", fi.Mode().Perm())
	}
	before, _ := os.Stat(path)
	if changed, err := WriteMapFileFrom(path, "5-1", es, 0o600); err != nil || changed {
		t.Fatalf("identical write: changed %v, %v", changed, err)
	}
	if after, _ := os.Stat(path); !os.SameFile(before, after) {
		t.Fatal("identical content was rewritten")
	}
	// Same size, one byte different: rewritten.
	es2 := append(assignmentList(nil), es...)
	es2[4999].Shard = "shard9"
	if changed, err := WriteMapFileFrom(path, "5-1", es2, 0o600); err != nil || !changed {
		t.Fatalf("changed write: changed %v, %v", changed, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Fatalf("rewrite changed the mode to %v", fi.Mode().Perm())
	}
	good, _ := os.ReadFile(path)
	for name, bad := range map[string]assignmentList{
		"unsorted":  {{User: "b", Shard: "s"}, {User: "a", Shard: "s"}},
		"duplicate": {{User: "a", Shard: "s"}, {User: "a", Shard: "t"}},
		"invalid":   {{User: "a", Shard: "s"}, {User: "b c", Shard: "s"}},
	} {
		if _, err := WriteMapFileFrom(path, "6-1", bad, 0o600); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%s: err %v, want ErrInvalid", name, err)
		}
		if now, _ := os.ReadFile(path); !bytes.Equal(now, good) {
			t.Fatalf("%s: the file changed", name)
		}
	}
	// Empty.
	if _, err := WriteMapFileFrom(path, "", assignmentList(nil), 0o600); err != nil {
		t.Fatal(err)
	}
	want, _ = MapFile{}.Encode()
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Fatalf("empty file %q, want %q", got, want)
	}
}

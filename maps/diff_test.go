package maps

import "testing"

func TestDiff(t *testing.T) {
	truth := map[string]string{"a": "s1", "b": "s1", "c": "s1"}
	copy := map[string]string{"a": "s1", "b": "s2", "x": "s1"}
	d := Diff(truth, copy)
	if d != (Drift{Missing: 1, Extra: 1, Changed: 1}) || d.Total() != 3 {
		t.Fatalf("Diff = %+v", d)
	}
	if s := d.String(); s != "DRIFT: 1 missing, 1 extra, 1 with another shard" {
		t.Fatalf("String = %q", s)
	}
	if s := Diff(truth, truth).String(); s != "in sync" {
		t.Fatalf("same maps: %q", s)
	}
}

package main

import (
	"reflect"
	"testing"
)

func TestLogicalRanges(t *testing.T) {
	m := map[int]string{}
	for l := 0; l < 8; l++ {
		m[l] = "s0"
	}
	m[3] = "s1"
	m[10] = "s0" // after a gap: a run of its own
	want := []logicalRange{{0, 2, "s0"}, {3, 3, "s1"}, {4, 7, "s0"}, {10, 10, "s0"}}
	if got := logicalRanges(m); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := logicalRanges(nil); got == nil || len(got) != 0 {
		t.Errorf("empty: %#v, want [] (JSON [])", got)
	}
}

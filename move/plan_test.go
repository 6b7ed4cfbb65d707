package move

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/shardmap/shardmap/maps"
)

func TestReadPlan(t *testing.T) {
	plan, err := ReadPlan(strings.NewReader("# moves\n\nalice shard1\n  logical:7 \t shard2  \n"), "plan.txt")
	want := []PlanLine{{Line: 3, Kind: KindUser, Subject: "alice", To: "shard1"}, {Line: 4, Kind: KindLogical, Subject: "7", To: "shard2"}}
	if err != nil || !reflect.DeepEqual(plan, want) {
		t.Fatalf("plan %+v %v, want %+v", plan, err, want)
	}
	for _, c := range []struct {
		text string
		line int
		want string
	}{
		{"alice\n", 1, "want USER SHARD"},
		{"alice shard1 extra\n", 1, "want USER SHARD"},
		{"alice bad/shard\n", 1, "shard"},
		{"#x\nal\"ice shard1\n", 2, "user"},
		{"alice shard1\n\nalice shard2\n", 3, "moved on line 1 already"},
		{"logical:07 shard1\n", 1, "without leading zeros"},
		{"logical:x shard1\n", 1, "without leading zeros"},
		{"alice " + maps.HoldShard + "\n", 1, "never a destination"},
	} {
		_, err := ReadPlan(strings.NewReader(c.text), "plan.txt")
		var pe *PlanError
		if !errors.As(err, &pe) || !errors.Is(err, maps.ErrInvalid) || pe.File != "plan.txt" || pe.Line != c.line ||
			!strings.Contains(pe.Rule, c.want) || !strings.HasPrefix(err.Error(), "plan.txt:") {
			t.Errorf("%q: %v (%+v), want a PlanError at plan.txt:%d with rule %q", c.text, err, pe, c.line, c.want)
		}
	}
	if _, err := ReadPlan(iotest.ErrReader(errors.New("disk gone")), "plan.txt"); err == nil || !strings.Contains(err.Error(), "read plan.txt: disk gone") {
		t.Errorf("read error: %v", err)
	}
}

// What WritePlan writes, ReadPlan reads back as the same moves; the header
// is comments.
func TestPlanRoundTrip(t *testing.T) {
	in := []PlanLine{
		{Kind: KindUser, Subject: "alice", To: "shard1"},
		{Kind: KindLogical, Subject: "7", To: "shard2"},
		{Kind: KindUser, Subject: "42", To: "shard0"},
	}
	var b strings.Builder
	if err := WritePlan(&b, "by users: 3 moves\n\nshard0: 10 -> 9\n", in); err != nil {
		t.Fatal(err)
	}
	if want := "# by users: 3 moves\n# shard0: 10 -> 9\nalice shard1\nlogical:7 shard2\n42 shard0\n"; b.String() != want {
		t.Fatalf("wrote %q, want %q", b.String(), want)
	}
	out, err := ReadPlan(strings.NewReader(b.String()), "plan.txt")
	if err != nil {
		t.Fatal(err)
	}
	for i := range out {
		if out[i].Line != i+3 {
			t.Errorf("line %d read at %d", i, out[i].Line)
		}
		out[i].Line = 0
	}
	if !reflect.DeepEqual(out, in) {
		t.Errorf("read back %+v, want %+v", out, in)
	}
	if err := WritePlan(&b, "", []PlanLine{{Kind: "shard", Subject: "x", To: "y"}}); !errors.Is(err, maps.ErrInvalid) {
		t.Errorf("bad kind: %v", err)
	}
}

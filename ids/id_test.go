package ids

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsInstagram(t *testing.T) {
	l := Default
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	if l.LogicalShards() != 8192 || l.MaxSequence() != 1023 || l.SequenceDivisor() != 1024 || l.ShardMask() != 8191 {
		t.Fatalf("default layout: %d shards, max seq %d, div %d, mask %d", l.LogicalShards(), l.MaxSequence(), l.SequenceDivisor(), l.ShardMask())
	}
	if l.MaxMillis() != 1<<40-1 {
		t.Fatalf("MaxMillis %d, want 2^40-1 (the top time bit is the sign bit)", l.MaxMillis())
	}
}

func TestLayoutValidation(t *testing.T) {
	bad := map[string]Layout{
		"sum 62":        {TimeBits: 39, ShardBits: 13, SequenceBits: 10},
		"sum 65":        {TimeBits: 42, ShardBits: 13, SequenceBits: 10},
		"shard too big": {TimeBits: 31, ShardBits: 23, SequenceBits: 10},
		"time small":    {TimeBits: 10, ShardBits: 16, SequenceBits: 22},
		"epoch sub-ms":  {Epoch: DefaultEpoch.Add(time.Microsecond)},
		"epoch 1969":    {Epoch: time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC)},
		"negative":      {SequenceBits: -1},
	}
	for name, l := range bad {
		if err := l.Validate(); !errors.Is(err, ErrLayout) {
			t.Errorf("%s: Validate = %v, want ErrLayout", name, err)
		}
	}
	for _, l := range []Layout{{}, {TimeBits: 40}, {TimeBits: 49, ShardBits: 13, SequenceBits: 2}} {
		if err := l.Validate(); err != nil {
			t.Errorf("%+v refused: %v", l, err)
		}
	}
}

func TestComposeRoundTrip(t *testing.T) {
	for _, l := range []Layout{Default, {TimeBits: 40}, {TimeBits: 49, ShardBits: 13, SequenceBits: 2}} {
		l = l.WithDefaults()
		for _, p := range []Parts{
			{},
			{Millis: 1, Logical: 1, Sequence: 1},
			{Millis: l.MaxMillis(), Logical: l.LogicalShards() - 1, Sequence: l.MaxSequence()},
			{Millis: 123456789, Logical: 4242 % l.LogicalShards(), Sequence: 3},
		} {
			id, err := l.Compose(p)
			if err != nil {
				t.Fatalf("%+v Compose(%+v): %v", l, p, err)
			}
			if id < 0 {
				t.Fatalf("%+v Compose(%+v) = %d, negative", l, p, id)
			}
			_, got, err := l.Parse(strconv.FormatInt(id, 10))
			if err != nil || got != p {
				t.Fatalf("%+v: Parse(Compose(%+v)=%d) = %+v, %v", l, p, id, got, err)
			}
			if l.Logical(id) != p.Logical {
				t.Fatalf("Logical(%d) = %d, want %d", id, l.Logical(id), p.Logical)
			}
			// What HAProxy computes: div then and.
			if int(id/l.SequenceDivisor()&l.ShardMask()) != p.Logical {
				t.Fatalf("div/and of %d gives %d, want %d", id, id/l.SequenceDivisor()&l.ShardMask(), p.Logical)
			}
		}
	}
	// The largest ID of the default layout is the largest int64.
	id, _ := Default.Compose(Parts{Millis: Default.MaxMillis(), Logical: 8191, Sequence: 1023})
	if id != math.MaxInt64 {
		t.Fatalf("largest ID %d, want %d", id, int64(math.MaxInt64))
	}
}

func TestComposeRefuses(t *testing.T) {
	l := Default
	for _, p := range []Parts{
		{Millis: -1}, {Millis: l.MaxMillis() + 1}, {Logical: -1}, {Logical: 8192}, {Sequence: -1}, {Sequence: 1024},
	} {
		if _, err := l.Compose(p); !errors.Is(err, ErrRange) {
			t.Errorf("Compose(%+v) = %v, want ErrRange", p, err)
		}
	}
	if _, err := l.ComposeTime(DefaultEpoch.Add(-time.Millisecond), 0, 0); !errors.Is(err, ErrBeforeEpoch) {
		t.Errorf("before epoch: %v", err)
	}
	if _, err := l.ComposeTime(DefaultEpoch.Add(time.Duration(l.MaxMillis()+1)*time.Millisecond), 0, 0); !errors.Is(err, ErrAfterEnd) {
		t.Errorf("after end: %v", err)
	}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	id, err := l.ComposeTime(at, 7, 9)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := l.Split(id); !p.Time(l).Equal(at) || p.Logical != 7 || p.Sequence != 9 {
		t.Fatalf("ComposeTime round trip: %+v at %s", p, p.Time(l))
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]error{
		"":                     ErrNotNumber,
		"abc":                  ErrNotNumber,
		"-5":                   ErrNotNumber,
		"+5":                   ErrNotNumber,
		" 5":                   ErrNotNumber,
		"5\n":                  ErrNotNumber,
		"1e9":                  ErrNotNumber,
		"0123":                 ErrNotCanonical,
		"00":                   ErrNotCanonical,
		"9223372036854775808":  ErrOverflow,
		"99999999999999999999": ErrOverflow,
	}
	for in, want := range cases {
		_, _, err := Parse(in)
		if !errors.Is(err, want) {
			t.Errorf("Parse(%q) = %v, want %v", in, err, want)
			continue
		}
		var e *Error
		if !errors.As(err, &e) || !strings.Contains(err.Error(), strconv.Quote(in)) {
			t.Errorf("Parse(%q): error %q does not name the input", in, err)
		}
	}
	for _, in := range []string{"0", "1", "9223372036854775807"} {
		if _, _, err := Parse(in); err != nil {
			t.Errorf("Parse(%q): %v", in, err)
		}
	}
}

// Parse never panics; what it accepts is the canonical form of a positive
// int64 whose parts compose back to it.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"0", "123", "0123", "-1", "9223372036854775807", "9223372036854775808", "", "x", "12345678901234567890"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, p, err := Parse(s)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse(%q): error %v is not an *Error", s, err)
			}
			return
		}
		if strconv.FormatInt(id, 10) != s || id < 0 {
			t.Fatalf("Parse(%q) accepted a non-canonical form (%d)", s, id)
		}
		back, err := Default.Compose(p)
		if err != nil || back != id {
			t.Fatalf("Compose(Parse(%q)) = %d, %v", s, back, err)
		}
	})
}

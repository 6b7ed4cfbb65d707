package ids

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Parts are what an ID carries.
type Parts struct {
	Millis   int64 // milliseconds since the layout's epoch
	Logical  int   // logical shard
	Sequence int   // sequence within (Logical, Millis)
}

// Time is when the ID was made: the epoch plus Millis, in UTC.
func (p Parts) Time(l Layout) time.Time {
	return l.WithDefaults().Epoch.Add(time.Duration(p.Millis) * time.Millisecond).UTC()
}

// Errors of Compose and Parse, each wrapped with the input and the rule.
var (
	ErrNotNumber    = errors.New("not a decimal number")                    // empty, or a byte other than 0-9 (a sign, a blank)
	ErrNotCanonical = errors.New("leading zero")                            // "0123": an ID is written in exactly one way
	ErrOverflow     = errors.New("larger than the largest ID (2^63-1)")     // more than fits a positive int64
	ErrRange        = errors.New("part out of range for the layout")        // Compose: a part too large or negative
	ErrBeforeEpoch  = errors.New("time before the layout's epoch")          // ComposeTime: a time before Epoch
	ErrAfterEnd     = errors.New("time after the last the layout can hold") // ComposeTime: a time after MaxMillis
)

// Error is a Parse or Compose failure: the input and the rule it broke
// (one of the Err values above, for errors.Is).
type Error struct {
	Input string
	Rule  error
	Note  string // detail, may be empty
}

func (e *Error) Error() string {
	s := fmt.Sprintf("ID %q: %v", e.Input, e.Rule)
	if e.Note != "" {
		s += " (" + e.Note + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Rule }

// Compose builds the ID of parts. It fails with ErrRange if Millis is
// negative or beyond MaxMillis, Logical is not in 0..LogicalShards-1 or
// Sequence not in 0..MaxSequence. The result is always positive or zero.
func (l Layout) Compose(p Parts) (int64, error) {
	if err := l.Validate(); err != nil {
		return 0, err
	}
	l = l.WithDefaults()
	input := fmt.Sprintf("%+v", p)
	switch {
	case p.Millis < 0 || p.Millis > l.MaxMillis():
		return 0, &Error{Input: input, Rule: ErrRange, Note: fmt.Sprintf("millis %d, want 0..%d", p.Millis, l.MaxMillis())}
	case p.Logical < 0 || p.Logical >= l.LogicalShards():
		return 0, &Error{Input: input, Rule: ErrRange, Note: fmt.Sprintf("logical shard %d, want 0..%d", p.Logical, l.LogicalShards()-1)}
	case p.Sequence < 0 || p.Sequence > l.MaxSequence():
		return 0, &Error{Input: input, Rule: ErrRange, Note: fmt.Sprintf("sequence %d, want 0..%d", p.Sequence, l.MaxSequence())}
	}
	return p.Millis<<(l.ShardBits+l.SequenceBits) | int64(p.Logical)<<l.SequenceBits | int64(p.Sequence), nil
}

// ComposeTime is Compose with the time as a time.Time (truncated to the
// millisecond): ErrBeforeEpoch before the epoch, ErrAfterEnd after MaxMillis.
func (l Layout) ComposeTime(t time.Time, logical, sequence int) (int64, error) {
	l = l.WithDefaults()
	ms := t.UnixMilli() - l.Epoch.UnixMilli()
	if ms < 0 {
		return 0, &Error{Input: t.UTC().Format(time.RFC3339Nano), Rule: ErrBeforeEpoch, Note: "epoch " + l.Epoch.UTC().Format(time.RFC3339Nano)}
	}
	if ms > l.MaxMillis() {
		return 0, &Error{Input: t.UTC().Format(time.RFC3339Nano), Rule: ErrAfterEnd, Note: "last " + l.Epoch.Add(time.Duration(l.MaxMillis())*time.Millisecond).UTC().Format(time.RFC3339Nano)}
	}
	return l.Compose(Parts{Millis: ms, Logical: logical, Sequence: sequence})
}

// Split returns the parts of id. A negative id has no parts (ErrRange).
func (l Layout) Split(id int64) (Parts, error) {
	if id < 0 {
		return Parts{}, &Error{Input: strconv.FormatInt(id, 10), Rule: ErrRange, Note: "IDs are positive"}
	}
	l = l.WithDefaults()
	return Parts{
		Millis:   id >> (l.ShardBits + l.SequenceBits),
		Logical:  int(id>>l.SequenceBits) & (1<<l.ShardBits - 1),
		Sequence: int(id) & (1<<l.SequenceBits - 1),
	}, nil
}

// Logical is the logical shard of id (what HAProxy computes with
// div(SequenceDivisor),and(ShardMask)). Meaningful for id >= 0.
func (l Layout) Logical(id int64) int {
	l = l.WithDefaults()
	return int(id>>l.SequenceBits) & (1<<l.ShardBits - 1)
}

// ParseNumber reads an ID's canonical decimal form: 1 to 19 digits, no sign,
// no blanks, no leading zero (except "0" itself), at most 2^63-1. The error
// is an *Error naming the input and the rule (ErrNotNumber, ErrNotCanonical,
// ErrOverflow).
func ParseNumber(s string) (int64, error) {
	quoted := s
	if len(quoted) > 40 {
		quoted = quoted[:40] + "..."
	}
	if s == "" {
		return 0, &Error{Input: quoted, Rule: ErrNotNumber, Note: "empty"}
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, &Error{Input: quoted, Rule: ErrNotNumber, Note: fmt.Sprintf("byte %q at %d: want only digits 0-9", s[i], i)}
		}
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, &Error{Input: quoted, Rule: ErrNotCanonical, Note: "write it without leading zeros"}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil { // only digits: the one way left to fail is the range
		return 0, &Error{Input: quoted, Rule: ErrOverflow}
	}
	return n, nil
}

// Parse reads an ID (ParseNumber) and splits it with l. Every positive int64
// is an ID of a valid layout, so the only errors are ParseNumber's.
func (l Layout) Parse(s string) (int64, Parts, error) {
	id, err := ParseNumber(s)
	if err != nil {
		return 0, Parts{}, err
	}
	p, err := l.Split(id)
	return id, p, err
}

// Parse is Default.Parse.
func Parse(s string) (int64, Parts, error) { return Default.Parse(s) }

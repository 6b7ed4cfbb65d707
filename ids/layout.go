// Package ids makes and reads Instagram-style IDs: 64-bit integers that carry
// the time they were made, the logical shard their object lives on, and a
// per-shard sequence number, so that HAProxy can find an object's shard with
// arithmetic on its ID (div, and, then a map lookup) instead of a per-object
// map entry. docs/IDS.md describes the layout, the generator script and the
// routing rule.
//
// An ID is, from the most significant bit down:
//
//	time (ms since the layout's epoch) | logical shard | sequence
//
// Instagram's widths, the default, are 41 | 13 | 10 bits: 8192 logical
// shards, 1024 IDs per logical shard per millisecond.
package ids

import (
	"errors"
	"fmt"
	"time"
)

// Layout says how an ID's bits are split. The zero value of a field means the
// Default's value (so a YAML block may set only some fields). Every process
// that makes or reads IDs of one system must use the same layout, and it must
// never change once IDs exist: the epoch and the widths are part of every ID.
//
// The widths sum to 63 or 64, and IDs are always positive int64 (the form
// every language and HAProxy's integer converters handle):
//   - 63: the top bit of the int64 is never used; every time value fits.
//   - 64: the top time bit is the int64 sign bit, so it must stay 0: the time
//     part is limited to 2^(TimeBits-1)-1 ms after the epoch (with 41 bits,
//     about 34.8 years), after which Compose and the generator refuse.
type Layout struct {
	Epoch        time.Time `yaml:"epoch,omitempty" json:"epoch"`                 // time 0; whole milliseconds, UTC
	TimeBits     int       `yaml:"time_bits,omitempty" json:"time_bits"`         // ms since Epoch
	ShardBits    int       `yaml:"shard_bits,omitempty" json:"shard_bits"`       // logical shard: 0 .. 2^ShardBits-1
	SequenceBits int       `yaml:"sequence_bits,omitempty" json:"sequence_bits"` // per logical shard and ms
}

// DefaultEpoch is the default layout's time 0: 2025-01-01T00:00:00Z. With 41
// time bits and positive IDs, IDs can be made until 2059-11.
var DefaultEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Default is Instagram's layout: 41 bits of milliseconds since DefaultEpoch,
// 13 bits of logical shard (8192), 10 bits of sequence (1024 per ms).
var Default = Layout{Epoch: DefaultEpoch, TimeBits: 41, ShardBits: 13, SequenceBits: 10}

// Limits on the widths, beyond the sum: at least 2^20 ms (17 minutes) of
// time, and a logical map of at most 2^16 entries (HAProxy loads it at start).
const (
	minTimeBits  = 20
	maxShardBits = 16
	maxSeqBits   = 22
)

// ErrLayout is wrapped by every Layout validation error.
var ErrLayout = errors.New("invalid ID layout")

// WithDefaults returns l with each zero field taken from Default.
func (l Layout) WithDefaults() Layout {
	if l.Epoch.IsZero() {
		l.Epoch = Default.Epoch
	}
	if l.TimeBits == 0 {
		l.TimeBits = Default.TimeBits
	}
	if l.ShardBits == 0 {
		l.ShardBits = Default.ShardBits
	}
	if l.SequenceBits == 0 {
		l.SequenceBits = Default.SequenceBits
	}
	return l
}

// Validate checks l after WithDefaults: widths summing to 63 or 64, time at
// least 20 bits, shard 1..16 bits, sequence 1..22 bits, an epoch in whole
// milliseconds not before 1970.
func (l Layout) Validate() error {
	l = l.WithDefaults()
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrLayout, fmt.Sprintf(format, a...))
	}
	if l.TimeBits < minTimeBits || l.ShardBits < 1 || l.ShardBits > maxShardBits || l.SequenceBits < 1 || l.SequenceBits > maxSeqBits {
		return bad("widths time %d, shard %d, sequence %d: want time >= %d, shard 1..%d, sequence 1..%d bits",
			l.TimeBits, l.ShardBits, l.SequenceBits, minTimeBits, maxShardBits, maxSeqBits)
	}
	if sum := l.TimeBits + l.ShardBits + l.SequenceBits; sum != 63 && sum != 64 {
		return bad("widths time %d + shard %d + sequence %d = %d bits: want 63 or 64 (IDs are positive int64)",
			l.TimeBits, l.ShardBits, l.SequenceBits, sum)
	}
	if l.Epoch.UnixMilli() < 0 || !l.Epoch.Equal(time.UnixMilli(l.Epoch.UnixMilli())) {
		return bad("epoch %s: want whole milliseconds, not before 1970", l.Epoch.Format(time.RFC3339Nano))
	}
	return nil
}

// LogicalShards is the number of logical shards, 2^ShardBits (8192 by default).
func (l Layout) LogicalShards() int { return 1 << l.WithDefaults().ShardBits }

// MaxSequence is the highest sequence number, 2^SequenceBits-1 (1023).
func (l Layout) MaxSequence() int { return 1<<l.WithDefaults().SequenceBits - 1 }

// MaxMillis is the last millisecond after the epoch an ID can carry (see
// Layout on the sign bit).
func (l Layout) MaxMillis() int64 {
	l = l.WithDefaults()
	tb := l.TimeBits
	if l.TimeBits+l.ShardBits+l.SequenceBits == 64 {
		tb-- // the top time bit is the sign bit
	}
	return 1<<tb - 1
}

// SequenceDivisor is what an ID is divided by to drop the sequence: 2^SequenceBits
// (1024). HAProxy's rule uses it as div(SequenceDivisor).
func (l Layout) SequenceDivisor() int64 { return 1 << l.WithDefaults().SequenceBits }

// ShardMask keeps the logical shard of an ID divided by SequenceDivisor:
// 2^ShardBits-1 (8191). HAProxy's rule uses it as and(ShardMask).
func (l Layout) ShardMask() int64 { return 1<<l.WithDefaults().ShardBits - 1 }

// EpochMillis is the epoch in Unix milliseconds, as the generator script takes it.
func (l Layout) EpochMillis() int64 { return l.WithDefaults().Epoch.UnixMilli() }

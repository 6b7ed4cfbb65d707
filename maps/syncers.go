package maps

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

// SyncerState is what a syncer reports about itself in Redis: one JSON value
// per syncer name in the registry hash. Fields added later are optional, so
// that older JSON still parses.
type SyncerState struct {
	Name    string    `json:"-"`
	Applied string    `json:"applied"` // last change-log ID in the live map
	Seen    time.Time `json:"seen"`    // heartbeat, by the syncer's clock
	Map     string    `json:"map"`
	Entries int       `json:"entries"` // entries in the live map
	Ready   bool      `json:"ready"`
	Problem string    `json:"problem,omitempty"`
	// Instance is random per syncer process: a restart under the same name
	// shows as a new instance.
	Instance string `json:"instance,omitempty"`
	// Standby is a syncer waiting for a lease, not applying changes: waits
	// and the behind check ignore it.
	Standby bool `json:"standby,omitempty"`
	// Targets are the HAProxy processes the syncer drives, each with its
	// own position. Applied, Ready and Standby above sum them up: the
	// lowest position of the active targets, all ready, all standby; so a
	// reader that looks only at those waits for every target. Empty from
	// syncers older than targets.
	Targets []TargetState `json:"targets,omitempty"`
}

// TargetState is one HAProxy process a syncer drives, as it reports it.
type TargetState struct {
	Address string    `json:"address"` // its Runtime API address
	Applied string    `json:"applied"` // last change-log ID in its live map
	Entries int       `json:"entries"`
	Pending int       `json:"pending"` // changes the syncer read and has not applied to it yet (-1: a full sync is due)
	Ready   bool      `json:"ready"`
	Standby bool      `json:"standby,omitempty"` // another syncer holds its lease
	Problem string    `json:"problem,omitempty"`
	Contact time.Time `json:"contact,omitzero"` // last answer from it, by the syncer's clock
}

// LiveWithin is how recent a heartbeat must be for a syncer to count as
// live: five heartbeats at the syncer's default of one second.
const LiveWithin = 5 * time.Second

// Live reports whether the syncer sent a heartbeat within maxAge of now.
func (st SyncerState) Live(now time.Time, maxAge time.Duration) bool {
	return now.Sub(st.Seen) <= maxAge
}

// ReportSyncer records a syncer's state under its name.
func (s *Store) ReportSyncer(ctx context.Context, st SyncerState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := s.rdb.HSet(ctx, s.SyncersKey(), st.Name, b).Err(); err != nil {
		return fmt.Errorf("redis report syncer %s: %w", st.Name, err)
	}
	return nil
}

// Syncers returns every syncer that ever reported (and was not pruned),
// sorted by name. A value that does not parse is returned with a zero Seen
// and its Problem saying so.
func (s *Store) Syncers(ctx context.Context) ([]SyncerState, error) {
	all, err := s.rdb.HGetAll(ctx, s.SyncersKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("redis read syncers: %w", err)
	}
	out := make([]SyncerState, 0, len(all))
	for name, v := range all {
		out = append(out, parseSyncer(name, v))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func parseSyncer(name, v string) SyncerState {
	var st SyncerState
	if err := json.Unmarshal([]byte(v), &st); err != nil {
		st = SyncerState{Problem: "unreadable state: " + err.Error()}
	}
	st.Name = name
	return st
}

// pruneScript deletes the syncer ARGV[1] only if its value is still ARGV[2]:
// a syncer that reported since it was read is kept.
var pruneScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
`)

// PruneSyncers deletes from the registry every syncer whose last heartbeat
// is older than olderThan at now (or whose state does not parse), and
// returns their names, sorted. olderThan below LiveWithin is refused (an
// ErrInvalid): a live syncer is never deleted. Each deletion is
// compare-and-delete, so a syncer that reports while this runs stays.
func (s *Store) PruneSyncers(ctx context.Context, now time.Time, olderThan time.Duration) ([]string, error) {
	if olderThan < LiveWithin {
		return nil, fmt.Errorf("%w: prune older than %s: below %s a live syncer could be deleted", ErrInvalid, olderThan, LiveWithin)
	}
	all, err := s.rdb.HGetAll(ctx, s.SyncersKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("redis read syncers: %w", err)
	}
	var pruned []string
	for name, v := range all {
		st := parseSyncer(name, v)
		if st.Live(now, olderThan) {
			continue
		}
		n, err := pruneScript.Run(ctx, s.rdb, []string{s.SyncersKey()}, name, v).Int()
		if err != nil {
			return pruned, fmt.Errorf("redis prune syncer %s: %w", name, err)
		}
		if n == 1 {
			pruned = append(pruned, name)
		}
	}
	sort.Strings(pruned)
	return pruned, nil
}

// Lag is how far a reader at some change-log ID is behind the log.
type Lag struct {
	Behind bool          // the log has changes after the ID
	Oldest string        // ID of the first of them
	Age    time.Duration // Redis's clock now minus Oldest's time (>= 0)
}

// LagAfter returns how far a reader that has applied id (ZeroID or "" for
// none) is behind the log. The age is measured on Redis's clock (TIME)
// against the millisecond part of the oldest missing entry's ID, so the
// clock of the caller does not matter. An id that is not a stream ID is an
// ErrInvalid.
func (s *Store) LagAfter(ctx context.Context, id string) (Lag, error) {
	if id == "" {
		id = ZeroID
	}
	if _, _, ok := ParseID(id); !ok {
		return Lag{}, fmt.Errorf("%w: change-log id %q: want MS-SEQ", ErrInvalid, id)
	}
	msgs, err := s.rdb.XRangeN(ctx, s.LogKey(), "("+id, "+", 1).Result()
	if err != nil {
		return Lag{}, fmt.Errorf("redis read %s after %s: %w", s.LogKey(), id, err)
	}
	if len(msgs) == 0 {
		return Lag{}, nil
	}
	now, err := s.Now(ctx)
	if err != nil {
		return Lag{}, err
	}
	oms, _, _ := ParseID(msgs[0].ID)
	lag := Lag{Behind: true, Oldest: msgs[0].ID}
	if at := time.UnixMilli(int64(min(oms, uint64(1)<<62))); now.After(at) {
		lag.Age = now.Sub(at)
	}
	return lag, nil
}

// Now returns Redis's clock (TIME), the clock of the change-log IDs.
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	node, err := s.tagNode(ctx) // on a Cluster, the clock of the log's node
	if err != nil {
		return time.Time{}, err
	}
	t, err := node.Time(ctx).Result()
	if err != nil {
		return time.Time{}, fmt.Errorf("redis time: %w", err)
	}
	return t, nil
}

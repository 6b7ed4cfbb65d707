package maps

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// NotAppliedError is WaitApplied's answer when the wait ended before every
// live, active syncer target had the change.
type NotAppliedError struct {
	ID       string        // the change-log ID waited for
	Waited   time.Duration // the bound given to WaitApplied
	NoSyncer bool          // no active syncer reported within LiveWithin
	// Lagging describes each live target that lacks the change: its
	// syncer (and address when the syncer drives several), its position and
	// the problem it reports. Empty when NoSyncer.
	Lagging []string
	// Err is why the wait ended: context.DeadlineExceeded when the bound
	// ran out, or the caller's context error.
	Err error
}

func (e *NotAppliedError) Error() string {
	if e.NoSyncer {
		return fmt.Sprintf("change %s is stored in Redis, but no syncer reported in the last %s, so no HAProxy is known to have it", e.ID, LiveWithin)
	}
	return fmt.Sprintf("change %s is stored in Redis, but after %s these syncers have not applied it: %s",
		e.ID, e.Waited, strings.Join(e.Lagging, "; "))
}

// Unwrap returns why the wait ended (a context error).
func (e *NotAppliedError) Unwrap() error { return e.Err }

// WaitApplied returns nil when every live (heartbeat within LiveWithin),
// active (not standby) syncer that reports in this store has the change-log
// ID id, or a later one, applied on every active target it drives; at least
// one such syncer must be live. It polls the registry every 10ms for up to
// within (and no longer than ctx allows). When the wait ends first it
// returns a *NotAppliedError naming each lagging target; an error reading
// Redis is returned as is, wrapped. Each map's syncers report in the map's
// own store, so a wait on the logical map's store never waits on the moved
// map's syncers.
func (s *Store) WaitApplied(ctx context.Context, id string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var last *NotAppliedError // what the last poll saw
	for {
		all, err := s.Syncers(ctx)
		if err != nil {
			if last != nil && ctx.Err() != nil {
				// The bound ran out during a read: answer with what the
				// last poll saw rather than the read's deadline error.
				last.Err = ctx.Err()
				return last
			}
			return err
		}
		live, lagging := lagging(all, id, time.Now())
		if live > 0 && len(lagging) == 0 {
			return nil
		}
		last = &NotAppliedError{ID: id, Waited: within, NoSyncer: live == 0, Lagging: lagging}
		select {
		case <-ctx.Done():
			// Right after Redis comes back, heartbeats are stale for a moment:
			// no live syncer is only an answer once the whole wait has passed.
			last.Err = ctx.Err()
			return last
		case <-tick.C:
		}
	}
}

// lagging counts the live active syncers in all and describes each of their
// active targets that has not applied id.
func lagging(all []SyncerState, id string, now time.Time) (live int, out []string) {
	for _, st := range all {
		if st.Standby || !st.Live(now, LiveWithin) {
			continue
		}
		live++
		// Every active target of the syncer must have it; a syncer that
		// reports no targets sums them up in its own fields.
		targets := st.Targets
		if len(targets) == 0 {
			targets = []TargetState{{Applied: st.Applied, Ready: st.Ready, Problem: st.Problem}}
		}
		for _, tg := range targets {
			if tg.Standby || CompareIDs(tg.Applied, id) >= 0 {
				continue
			}
			problem := ""
			if tg.Problem != "" {
				problem = ", problem: " + tg.Problem
			} else if !tg.Ready {
				problem = ", not ready"
			}
			name := st.Name
			if tg.Address != "" && len(st.Targets) > 1 {
				name += " target " + tg.Address
			}
			applied := tg.Applied
			if applied == "" {
				applied = "nothing"
			}
			out = append(out, fmt.Sprintf("%s (at %s%s)", name, applied, problem))
		}
	}
	return live, out
}

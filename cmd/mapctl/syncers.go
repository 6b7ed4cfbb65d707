package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/maps"
)

// Defaults of status's and syncers' bounds.
const (
	defaultMaxLag    = 5 * time.Second
	defaultRetention = 24 * time.Hour
)

// syncerView is one syncer as status and syncers judge it.
type syncerView struct {
	maps.SyncerState
	Short   string   // one word: ready, catching-up, standby, not-ready, behind, gone, unreadable
	State   string   // the same in a sentence
	Lag     maps.Lag // how far its applied ID is behind the log
	Age     time.Duration
	Problem string // why it counts as a problem; "" when it does not
	// TargetLags are how far each target's applied ID is behind the log.
	TargetLags []maps.Lag
}

// viewSyncers judges every syncer seen within retention against the log's
// last ID: gone (no heartbeat within maps.LiveWithin), not ready, or behind
// (its oldest missing change is older than maxLag on Redis's clock) is a
// problem; a standby syncer is none of these. It also returns how many
// syncers were left out for being gone longer than retention.
func (a *app) viewSyncers(ctx context.Context, lastID string, maxLag, retention time.Duration) ([]syncerView, int, error) {
	return a.viewSyncersIn(ctx, a.store, lastID, maxLag, retention)
}

// viewSyncersIn is viewSyncers for the syncers that report in store,
// judged against store's log (whose last ID is lastID).
func (a *app) viewSyncersIn(ctx context.Context, store *maps.Store, lastID string, maxLag, retention time.Duration) ([]syncerView, int, error) {
	all, err := store.Syncers(ctx)
	if err != nil {
		return nil, 0, err
	}
	now := time.Now()
	var out []syncerView
	hidden := 0
	for _, st := range all {
		v := syncerView{SyncerState: st, Age: max(0, now.Sub(st.Seen))}
		if !st.Live(now, retention) {
			hidden++
			continue
		}
		var lagErr error
		if !st.Standby && maps.CompareIDs(st.Applied, lastID) < 0 { // a standby applies nothing: no lag
			v.Lag, lagErr = store.LagAfter(ctx, st.Applied)
		}
		for _, tg := range st.Targets {
			var l maps.Lag
			if !tg.Standby && maps.CompareIDs(tg.Applied, lastID) < 0 {
				l, _ = store.LagAfter(ctx, tg.Applied) // unreadable: shown as not behind; the syncer's own lag says it
			}
			v.TargetLags = append(v.TargetLags, l)
		}
		behind := v.Lag.Behind && v.Lag.Age > maxLag
		switch {
		case !st.Live(now, maps.LiveWithin):
			v.Short = "gone"
			v.State = fmt.Sprintf("gone (last seen %s ago)", v.Age.Round(time.Second))
			v.Problem = "gone"
		case st.Standby:
			v.Short = "standby"
			v.State = "standby"
		case !st.Ready:
			v.Short = "not-ready"
			v.State = "NOT READY: " + st.Problem
			v.Problem = "not ready"
		case lagErr != nil:
			v.Short = "unreadable"
			v.State = fmt.Sprintf("ready, but its applied id is unreadable: %v", lagErr)
			v.Problem = "unreadable applied id"
		case behind:
			v.Short = "behind"
			v.State = fmt.Sprintf("BEHIND: oldest missing change %s is %s old (bound %s)", v.Lag.Oldest, v.Lag.Age.Round(time.Millisecond), maxLag)
			v.Problem = "behind"
		case v.Lag.Behind:
			v.Short = "catching-up"
			v.State = fmt.Sprintf("ready, catching up (%s)", v.Lag.Age.Round(time.Millisecond))
		default:
			v.Short = "ready"
			v.State = "ready"
		}
		out = append(out, v)
	}
	return out, hidden, nil
}

// syncerJSON is one syncer in syncers' and status's JSON.
type syncerJSON struct {
	Name            string    `json:"name"`
	State           string    `json:"state"`  // ready, catching-up, standby, not-ready, behind, gone, unreadable
	Detail          string    `json:"detail"` // the state in a sentence
	Map             string    `json:"map"`
	Instance        string    `json:"instance"`
	Ready           bool      `json:"ready"`
	Standby         bool      `json:"standby"`
	Entries         int       `json:"entries"`
	Applied         string    `json:"applied"`        // last change-log ID in its live map ("" for none)
	Behind          bool      `json:"behind"`         // the log has changes after applied
	OldestMissing   string    `json:"oldest_missing"` // the first of them ("" when not behind)
	LagMS           int64     `json:"lag_ms"`         // age of oldest_missing on Redis's clock (0 when not behind)
	LastSeen        time.Time `json:"last_seen"`      // its last heartbeat, by its clock
	LastSeenAgoMS   int64     `json:"last_seen_ago_ms"`
	ReportedProblem string    `json:"reported_problem"` // what the syncer itself reports
	Problem         string    `json:"problem"`          // why mapctl counts it as a problem ("" when it does not)
	// Targets are the HAProxy processes it drives, as it reports them.
	Targets []targetJSON `json:"targets"`
}

// targetJSON is one HAProxy process a syncer drives.
type targetJSON struct {
	Address       string    `json:"address"`
	Ready         bool      `json:"ready"`
	Standby       bool      `json:"standby"`
	Applied       string    `json:"applied"`
	Entries       int       `json:"entries"`
	Pending       int       `json:"pending"` // changes its syncer read and has not applied to it (-1: a full sync is due)
	LagMS         int64     `json:"lag_ms"`  // age of its oldest missing change on Redis's clock (0 when not behind)
	Problem       string    `json:"problem"`
	LastContact   time.Time `json:"last_contact"`
	LastContactMS int64     `json:"last_contact_ago_ms"` // -1 when never
}

func (v syncerView) json() syncerJSON {
	return syncerJSON{
		Name: v.Name, State: v.Short, Detail: v.State, Map: v.Map, Instance: v.Instance,
		Ready: v.Ready, Standby: v.Standby, Entries: v.Entries, Applied: v.Applied,
		Behind: v.Lag.Behind, OldestMissing: v.Lag.Oldest, LagMS: v.Lag.Age.Milliseconds(),
		LastSeen: v.Seen, LastSeenAgoMS: v.Age.Milliseconds(),
		ReportedProblem: v.SyncerState.Problem, Problem: v.Problem, Targets: targetsJSON(v.Targets, v.TargetLags),
	}
}

func targetsJSON(ts []maps.TargetState, lags []maps.Lag) []targetJSON {
	out := make([]targetJSON, 0, len(ts))
	for i, t := range ts {
		var lag time.Duration
		if i < len(lags) {
			lag = lags[i].Age
		}
		ago := int64(-1)
		if !t.Contact.IsZero() {
			ago = max(0, time.Since(t.Contact).Milliseconds())
		}
		out = append(out, targetJSON{Address: t.Address, Ready: t.Ready, Standby: t.Standby, Applied: t.Applied,
			Entries: t.Entries, Pending: t.Pending, LagMS: lag.Milliseconds(), Problem: t.Problem, LastContact: t.Contact, LastContactMS: ago})
	}
	return out
}

// targetLines describes each target in a line, for syncers with more than one.
func targetLines(v syncerView) []string {
	if len(v.Targets) < 2 {
		return nil
	}
	var out []string
	for i, t := range v.Targets {
		state := "ready"
		switch {
		case t.Standby:
			state = "standby"
		case !t.Ready:
			state = "NOT READY: " + t.Problem
		}
		contact := "never"
		if !t.Contact.IsZero() {
			contact = time.Since(t.Contact).Round(time.Millisecond).String() + " ago"
		}
		lag := "in sync"
		if i < len(v.TargetLags) && v.TargetLags[i].Behind {
			lag = fmt.Sprintf("%d changes (%s) behind", t.Pending, v.TargetLags[i].Age.Round(time.Millisecond))
			if t.Pending < 0 {
				lag = fmt.Sprintf("a full sync due (%s behind)", v.TargetLags[i].Age.Round(time.Millisecond))
			}
		}
		out = append(out, fmt.Sprintf("  target %s: %s, %d entries, applied %s, %s, last contact %s", t.Address, state, t.Entries, orNone(t.Applied), lag, contact))
	}
	return out
}

// syncersJSON is syncers' JSON document.
type syncersJSON struct {
	Syncers []syncerJSON `json:"syncers"`
	Hidden  int          `json:"hidden"` // gone for longer than --retention, not listed
}

// activeLive reports whether any syncer in vs is live and not standby.
func activeLive(vs []syncerView) bool {
	for _, v := range vs {
		if !v.Standby && v.Live(time.Now(), maps.LiveWithin) {
			return true
		}
	}
	return false
}

func (a *app) syncersCmd() *cobra.Command {
	var maxLag, retention time.Duration
	var out *output
	c := &cobra.Command{
		Use:   "syncers",
		Short: "List the syncers that reported to Redis: name, state, applied, lag, last seen, problem",
		Long: `syncers lists every syncer that reported to Redis within --retention: its name,
state (ready, catching-up, standby, not-ready, behind, gone, unreadable), the
last change it applied, how far behind the log it is, when it last reported,
and the problem it reports. In routing: ids the logical map's syncers
(NAME:logical) are listed too, judged against the logical map's log. With
-o json: {"syncers": [...], "hidden": N}.`,
		Example: `  mapctl syncers
  mapctl syncers --max-lag 2s -o json
  mapctl syncers prune --older-than 1h`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			lastID, err := a.store.LastLogID(ctx)
			if err != nil {
				return err
			}
			vs, hidden, err := a.viewSyncers(ctx, lastID, maxLag, retention)
			if err != nil {
				return err
			}
			lastLogical, err := a.logical.LastLogID(ctx)
			if err != nil {
				return err
			}
			lvs, lhidden, err := a.viewSyncersIn(ctx, a.logical, lastLogical, maxLag, retention)
			if err != nil {
				return err
			}
			vs, hidden = append(vs, lvs...), hidden+lhidden
			if hidden > 0 {
				defer fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: %d syncers gone for over %s not listed; mapctl syncers prune deletes them\n", hidden, retention)
			}
			if *out == outJSON {
				doc := syncersJSON{Syncers: make([]syncerJSON, len(vs)), Hidden: hidden}
				for i, v := range vs {
					doc.Syncers[i] = v.json()
				}
				return writeJSON(cmd.OutOrStdout(), doc)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSTATE\tAPPLIED\tLAG\tLAST SEEN\tPROBLEM")
			for _, v := range vs {
				lag := "-"
				if v.Lag.Behind {
					lag = v.Lag.Age.Round(time.Millisecond).String()
				}
				problem := v.SyncerState.Problem
				if problem == "" {
					problem = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s ago\t%s\n", v.Name, v.Short, orNone(v.Applied), lag, v.Age.Round(time.Second), problem)
			}
			return w.Flush()
		},
	}
	c.Flags().DurationVar(&maxLag, "max-lag", defaultMaxLag, "a syncer whose oldest missing change is older than this is behind")
	c.Flags().DurationVar(&retention, "retention", defaultRetention, "syncers gone for longer are not listed")
	out = outputFlag(c)
	c.AddCommand(a.pruneCmd())
	return c
}

func (a *app) pruneCmd() *cobra.Command {
	var olderThan time.Duration
	c := &cobra.Command{
		Use:   "prune",
		Short: "Delete from Redis the syncers gone for longer than --older-than (never a live one)",
		Long: `prune deletes the registry entries of syncers with no heartbeat for longer
than --older-than (at least ` + maps.LiveWithin.String() + `, the live window, so a live syncer
is never deleted). A syncer that reports again while prune runs is kept, and
one that comes back later registers itself again.`,
		Example: `  mapctl syncers prune
  mapctl syncers prune --older-than 24h`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if olderThan < maps.LiveWithin {
				return usagef("--older-than %s: must be at least %s, the window in which a syncer counts as live", olderThan, maps.LiveWithin)
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			pruned, err := a.store.PruneSyncers(ctx, time.Now(), olderThan)
			if err != nil {
				return err
			}
			if len(pruned) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: no syncer gone for over %s\n", olderThan)
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: pruned %d syncers: %s\n", len(pruned), strings.Join(pruned, ", "))
			return nil
		},
	}
	c.Flags().DurationVar(&olderThan, "older-than", maps.LiveWithin, "delete syncers with no heartbeat for longer than this")
	return c
}

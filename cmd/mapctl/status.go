package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/move"
	"github.com/shardmap/shardmap/runtime"
)

// statusOpts are status's flags.
type statusOpts struct {
	socket, mapPath   string
	maxLag, retention time.Duration
}

func (a *app) statusCmd() *cobra.Command {
	var o statusOpts
	var out *output
	c := &cobra.Command{
		Use:   "status",
		Short: "Counts in Redis, the live map and the map file, drift between them, and each syncer's state",
		Long: `status prints the assignments in Redis, every syncer's reported state, and,
with --socket and --map, the live map and the map file compared with Redis.

It exits 1 when it finds a problem: no live active syncer; a syncer that is
not ready, gone (no heartbeat for 5s), or behind (its oldest missing change is
older than --max-lag by Redis's clock; a live syncer catching up within the
bound is fine); drift in the live map; or drift in the map file. The file may
lag by the syncer's flush delay: status replays the change log after the
file's "# shardmap log-id" onto the file, and a file that then equals Redis
is only "behind", a problem when its oldest missing change is older than
--max-lag. Syncers gone for longer than --retention are not shown (mapctl
syncers prune deletes them); standby syncers are shown and never a problem.

Unfinished moves (mapctl move) are shown when there are any: how many, and
each failed one with its step and error; they are not problems.

With -o json it prints one JSON object: "redis", "syncers" (as mapctl
syncers -o json), "syncers_hidden", "active_live", "file" and "live" (null
when not compared), "moves" ({"in_progress", "failed": [IDs], "error"}), and
"problems", the count it exits 1 on.`,
		Example: `  mapctl status
  mapctl status --socket /run/haproxy/admin.sock --map /etc/haproxy/users.map
  mapctl status -o json | jq .problems`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			return a.status(ctx, cmd.OutOrStdout(), o, *out)
		},
	}
	out = outputFlag(c)
	c.Flags().StringVar(&o.socket, "socket", cli.Env(cli.EnvSocket, ""), "HAProxy stats socket, to compare the live map (env "+cli.EnvSocket+")")
	c.Flags().StringVar(&o.mapPath, "map", cli.Env(cli.EnvMap, ""), "map path as in haproxy.cfg, to compare the live map and the file (env "+cli.EnvMap+")")
	c.Flags().DurationVar(&o.maxLag, "max-lag", defaultMaxLag, "how old a change a syncer or the map file may still lack")
	c.Flags().DurationVar(&o.retention, "retention", defaultRetention, "syncers gone for longer are not shown")
	return c
}

// statusReport is what status found; -o json prints it as is.
type statusReport struct {
	Redis         redisJSON    `json:"redis"`
	Syncers       []syncerJSON `json:"syncers"`
	SyncersHidden int          `json:"syncers_hidden"` // gone for longer than --retention, not shown
	ActiveLive    bool         `json:"active_live"`    // some active syncer reported within the live window
	File          *fileJSON    `json:"file"`           // null without --map
	Live          *liveJSON    `json:"live"`           // null without --socket and --map
	Moves         movesJSON    `json:"moves"`          // unfinished moves (mapctl moves)
	Problems      int          `json:"problems"`       // status exits 1 when > 0

	lines []string // the table, in order
}

type redisJSON struct {
	Assignments    int    `json:"assignments"`
	InvalidSkipped int    `json:"invalid_skipped"`
	LogID          string `json:"log_id"`
	Exact          bool   `json:"exact"`          // false: Redis changed during every read, figures may be off
	UnknownShards  int    `json:"unknown_shards"` // assignments to shards HAProxy has no backend for
}

// movesJSON counts the moves not finished; a failed one stays until resumed
// or aborted (its user may be frozen on the holding backend).
type movesJSON struct {
	InProgress int      `json:"in_progress"` // running or failed
	Failed     []string `json:"failed"`      // IDs of the failed ones
	Error      string   `json:"error"`       // the moves could not be read ("" when they were)
}

type fileJSON struct {
	Path    string `json:"path"`
	Entries int    `json:"entries"`
	LogID   string `json:"log_id"`
	Detail  string `json:"detail"` // in sync, behind, DRIFT, or why it could not be read
	Error   string `json:"error"`  // the file could not be read ("" when it was)
	Problem bool   `json:"problem"`
}

type liveJSON struct {
	Socket     string `json:"socket"`
	Map        string `json:"map"`
	Entries    int    `json:"entries"`
	Duplicates int    `json:"duplicates"`
	Missing    int    `json:"missing"`
	Extra      int    `json:"extra"`
	Changed    int    `json:"changed"`
	Error      string `json:"error"` // HAProxy could not be read ("" when it was)
	Problem    bool   `json:"problem"`
}

func (a *app) status(ctx context.Context, w io.Writer, o statusOpts, out output) error {
	r, err := a.statusReport(ctx, o)
	if err != nil {
		return err
	}
	if out == outJSON {
		if err := writeJSON(w, r); err != nil {
			return err
		}
	} else {
		for _, l := range r.lines {
			fmt.Fprintln(w, l)
		}
	}
	if r.Problems > 0 {
		return fmt.Errorf("status: %d problems found", r.Problems)
	}
	return nil
}

func (a *app) statusReport(ctx context.Context, o statusOpts) (*statusReport, error) {
	r := &statusReport{Syncers: []syncerJSON{}}
	say := func(format string, args ...any) { r.lines = append(r.lines, fmt.Sprintf(format, args...)) }
	// The file is read before Redis: the snapshot is then at least as new as
	// the file, and replaying the log from the file's ID reaches it.
	var mf maps.MapFile
	var mfErr error
	if o.mapPath != "" {
		mf, mfErr = maps.ReadMapFile(o.mapPath)
	}
	snap, exact, err := a.store.StableSnapshot(ctx, nil, 5)
	if err != nil {
		return nil, err
	}
	lastID := snap.LogID
	busy := ""
	if !exact {
		busy = " (Redis changed during every read; figures may be off by the changes in flight)"
	}
	r.Redis = redisJSON{Assignments: len(snap.Entries), InvalidSkipped: snap.Skipped, LogID: lastID, Exact: exact}
	say("redis:  %d assignments, %d invalid skipped, change log at %s%s", len(snap.Entries), snap.Skipped, lastID, busy)
	if n, line := a.unknownShards(ctx, snap.Entries); n > 0 {
		r.Redis.UnknownShards = n
		say("%s", line)
		r.Problems++
	}
	views, hidden, err := a.viewSyncers(ctx, lastID, o.maxLag, o.retention)
	if err != nil {
		return nil, err
	}
	for _, v := range views {
		if v.Problem != "" {
			r.Problems++
		}
		r.Syncers = append(r.Syncers, v.json())
		say("syncer %s: %s, %d entries, applied %s", v.Name, v.State, v.Entries, orNone(v.Applied))
		for _, l := range targetLines(v) {
			say("%s", l)
		}
	}
	r.SyncersHidden = hidden
	if hidden > 0 {
		say("syncers: %d gone for over %s not shown (mapctl syncers prune deletes them)", hidden, o.retention)
	}
	r.Moves = a.movesStatus(ctx, say)
	r.ActiveLive = activeLive(views)
	if !r.ActiveLive {
		say("syncers: NONE LIVE: no active syncer reported in the last %s, so changes reach no HAProxy", maps.LiveWithin)
		r.Problems++
	}
	if o.mapPath != "" {
		r.File = &fileJSON{Path: o.mapPath}
		if mfErr != nil {
			r.File.Error, r.File.Detail, r.File.Problem = mfErr.Error(), mfErr.Error(), true
			say("file:   %s: %v", o.mapPath, mfErr)
			r.Problems++
		} else {
			line, bad, err := a.fileStatus(ctx, mf, snap, o.maxLag)
			if err != nil {
				return nil, err
			}
			if bad {
				r.Problems++
			}
			r.File.Entries, r.File.LogID, r.File.Detail, r.File.Problem = len(mf.Entries), mf.LogID, line, bad
			say("file:   %d entries at %s, log id %s: %s", len(mf.Entries), o.mapPath, mf.LogID, line)
		}
	}
	if o.socket != "" && o.mapPath != "" {
		rt, err := runtime.New(o.socket, 10*time.Second)
		if err != nil {
			return nil, err
		}
		defer rt.Close()
		live := map[string]string{}
		dups := 0
		err = rt.Dump(ctx, o.mapPath, func(k, v string) error {
			if _, ok := live[k]; ok {
				dups++ // HAProxy serves the first one
				return nil
			}
			live[k] = v
			return nil
		})
		r.Live = &liveJSON{Socket: o.socket, Map: o.mapPath}
		if err != nil {
			r.Live.Error, r.Live.Problem = err.Error(), true
			say("live:   %s on %s: %v", o.mapPath, o.socket, err)
			r.Problems++
		} else {
			d := maps.Diff(snap.Entries, live)
			if d.Total() > 0 || dups > 0 {
				r.Live.Problem = true
				r.Problems++
			}
			r.Live.Entries, r.Live.Duplicates = len(live), dups
			r.Live.Missing, r.Live.Extra, r.Live.Changed = d.Missing, d.Extra, d.Changed
			say("live:   %d entries (%d duplicate keys) in %s: %s", len(live), dups, o.socket, d)
		}
	}
	return r, nil
}

// movesStatus counts the unfinished moves and names the failed ones; it
// says nothing when there are none.
func (a *app) movesStatus(ctx context.Context, say func(string, ...any)) movesJSON {
	r := movesJSON{Failed: []string{}}
	list, err := a.mover(io.Discard, nil).List(ctx, false)
	if err != nil {
		r.Error = err.Error()
		say("moves:  %v", err)
		return r
	}
	r.InProgress = len(list)
	var lines []string
	for _, mv := range list {
		if mv.State == move.StateFailed {
			r.Failed = append(r.Failed, mv.ID)
			lines = append(lines, fmt.Sprintf("move %s: %s %s -> %s FAILED at %s: %s (mapctl move --resume or --abort)", mv.ID, subjectName(mv), mv.From, mv.To, mv.Step, mv.Error))
		}
	}
	if r.InProgress > 0 {
		say("moves:  %d in progress, %d failed", r.InProgress, len(r.Failed))
		for _, l := range lines {
			say("%s", l)
		}
	}
	return r
}

// fileStatus compares the map file with Redis, telling lag from drift: the
// changes logged after the file's log ID, replayed onto the file, must give
// exactly Redis. It returns the verdict and whether it is a problem.
func (a *app) fileStatus(ctx context.Context, mf maps.MapFile, snap maps.Snapshot, maxLag time.Duration) (string, bool, error) {
	file := make(map[string]string, len(mf.Entries))
	for _, e := range mf.Entries {
		file[e.User] = e.Shard
	}
	direct := func(why string) (string, bool, error) {
		d := maps.Diff(snap.Entries, file)
		return d.String() + " (" + why + ")", d.Total() > 0, nil
	}
	if mf.LogID == "" {
		return direct("no log-id header: compared directly")
	}
	if _, _, ok := maps.ParseID(mf.LogID); !ok {
		return direct("unreadable log-id header: compared directly")
	}
	has, err := a.store.LogHas(ctx, mf.LogID)
	if err != nil {
		return "", false, err
	}
	if !has {
		return direct(fmt.Sprintf("the change log no longer holds %s: compared directly", mf.LogID))
	}
	n, err := a.replay(ctx, file, mf.LogID, snap.LogID)
	if err != nil {
		return "", false, err
	}
	d := maps.Diff(snap.Entries, file)
	if d.Total() > 0 {
		if n > 0 {
			return fmt.Sprintf("%s (after replaying the %d changes logged since the file's log id)", d, n), true, nil
		}
		return d.String(), true, nil
	}
	if n == 0 {
		return d.String(), false, nil
	}
	lag, err := a.store.LagAfter(ctx, mf.LogID)
	if err != nil {
		return "", false, err
	}
	line := fmt.Sprintf("behind by %d changes (%s)", n, lag.Age.Round(time.Millisecond))
	if lag.Age > maxLag {
		return fmt.Sprintf("BEHIND by %d changes, the oldest %s old (bound %s)", n, lag.Age.Round(time.Millisecond), maxLag), true, nil
	}
	return line, false, nil
}

// replay applies to m the change-log entries after from up to and including
// upto, and returns how many entries it read.
func (a *app) replay(ctx context.Context, m map[string]string, from, upto string) (int, error) {
	n := 0
	for after := from; maps.CompareIDs(after, upto) < 0; {
		changes, _, err := a.store.ReadLog(ctx, after, 10000, -1)
		if err != nil {
			return n, err
		}
		if len(changes) == 0 {
			return n, nil
		}
		for _, c := range changes {
			if maps.CompareIDs(c.ID, upto) > 0 {
				return n, nil
			}
			n++
			switch c.Op {
			case maps.OpSet:
				m[c.User] = c.Shard
			case maps.OpDel:
				delete(m, c.User)
			}
		}
		after = changes[len(changes)-1].ID
	}
	return n, nil
}

// unknownShards counts and names assignments to shards that are not known
// HAProxy backends (written with --force, or straight into Redis): HAProxy
// routes those users to the default shard, whatever Redis says. 0 and ""
// when there are none, or when no shard is known yet (no syncer ever
// published any).
func (a *app) unknownShards(ctx context.Context, entries map[string]string) (int, string) {
	known, err := a.store.KnownShards(ctx)
	if err != nil || len(known) == 0 {
		return 0, ""
	}
	isKnown := make(map[string]bool, len(known))
	for _, k := range known {
		isKnown[k] = true
	}
	n, example := 0, ""
	for u, sh := range entries {
		if !isKnown[sh] {
			n++
			if example == "" || u < example {
				example = u
			}
		}
	}
	if n == 0 {
		return 0, ""
	}
	return n, fmt.Sprintf("redis:  UNKNOWN SHARDS: %d assignments name a shard HAProxy has no backend for, so those users go to the default shard (e.g. %s -> %s)",
		n, example, entries[example])
}

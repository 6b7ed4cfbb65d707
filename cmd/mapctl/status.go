package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
)

// statusOpts are status's flags.
type statusOpts struct {
	socket, mapPath   string
	maxLag, retention time.Duration
}

func (a *app) statusCmd() *cobra.Command {
	var o statusOpts
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
syncers prune deletes them); standby syncers are shown and never a problem.`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			return a.status(ctx, cmd.OutOrStdout(), o)
		},
	}
	c.Flags().StringVar(&o.socket, "socket", cli.Env(cli.EnvSocket, ""), "HAProxy stats socket, to compare the live map (env "+cli.EnvSocket+")")
	c.Flags().StringVar(&o.mapPath, "map", cli.Env(cli.EnvMap, ""), "map path as in haproxy.cfg, to compare the live map and the file (env "+cli.EnvMap+")")
	c.Flags().DurationVar(&o.maxLag, "max-lag", defaultMaxLag, "how old a change a syncer or the map file may still lack")
	c.Flags().DurationVar(&o.retention, "retention", defaultRetention, "syncers gone for longer are not shown")
	return c
}

func (a *app) status(ctx context.Context, w io.Writer, o statusOpts) error {
	// The file is read before Redis: the snapshot is then at least as new as
	// the file, and replaying the log from the file's ID reaches it.
	var mf maps.MapFile
	var mfErr error
	if o.mapPath != "" {
		mf, mfErr = maps.ReadMapFile(o.mapPath)
	}
	snap, exact, err := a.store.StableSnapshot(ctx, nil, 5)
	if err != nil {
		return err
	}
	lastID := snap.LogID
	unhealthy := 0
	busy := ""
	if !exact {
		busy = " (Redis changed during every read; figures may be off by the changes in flight)"
	}
	fmt.Fprintf(w, "redis:  %d assignments, %d invalid skipped, change log at %s%s\n", len(snap.Entries), snap.Skipped, lastID, busy)
	if line := a.unknownShards(ctx, snap.Entries); line != "" {
		fmt.Fprintln(w, line)
		unhealthy++
	}
	views, hidden, err := a.viewSyncers(ctx, lastID, o.maxLag, o.retention)
	if err != nil {
		return err
	}
	for _, v := range views {
		if v.Problem != "" {
			unhealthy++
		}
		fmt.Fprintf(w, "syncer %s: %s, %d entries, applied %s\n", v.Name, v.State, v.Entries, orNone(v.Applied))
	}
	if hidden > 0 {
		fmt.Fprintf(w, "syncers: %d gone for over %s not shown (mapctl syncers prune deletes them)\n", hidden, o.retention)
	}
	if !activeLive(views) {
		fmt.Fprintf(w, "syncers: NONE LIVE: no active syncer reported in the last %s, so changes reach no HAProxy\n", maps.LiveWithin)
		unhealthy++
	}
	if o.mapPath != "" {
		if mfErr != nil {
			fmt.Fprintf(w, "file:   %s: %v\n", o.mapPath, mfErr)
			unhealthy++
		} else {
			line, bad, err := a.fileStatus(ctx, mf, snap, o.maxLag)
			if err != nil {
				return err
			}
			if bad {
				unhealthy++
			}
			fmt.Fprintf(w, "file:   %d entries at %s, log id %s: %s\n", len(mf.Entries), o.mapPath, mf.LogID, line)
		}
	}
	if o.socket != "" && o.mapPath != "" {
		rt, err := runtime.New(o.socket, 10*time.Second)
		if err != nil {
			return err
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
		if err != nil {
			fmt.Fprintf(w, "live:   %s on %s: %v\n", o.mapPath, o.socket, err)
			unhealthy++
		} else {
			d := maps.Diff(snap.Entries, live)
			if d.Total() > 0 || dups > 0 {
				unhealthy++
			}
			fmt.Fprintf(w, "live:   %d entries (%d duplicate keys) in %s: %s\n", len(live), dups, o.socket, d)
		}
	}
	if unhealthy > 0 {
		return fmt.Errorf("status: %d problems found", unhealthy)
	}
	return nil
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

// unknownShards names assignments to shards that are not known HAProxy
// backends (written with --force, or straight into Redis): HAProxy routes
// those users to the default shard, whatever Redis says. "" when there are
// none, or when no shard is known yet (no syncer ever published any).
func (a *app) unknownShards(ctx context.Context, entries map[string]string) string {
	known, err := a.store.KnownShards(ctx)
	if err != nil || len(known) == 0 {
		return ""
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
		return ""
	}
	return fmt.Sprintf("redis:  UNKNOWN SHARDS: %d assignments name a shard HAProxy has no backend for, so those users go to the default shard (e.g. %s -> %s)",
		n, example, entries[example])
}

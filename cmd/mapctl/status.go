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

func (a *app) statusCmd() *cobra.Command {
	var socket, mapPath string
	c := &cobra.Command{
		Use:   "status",
		Short: "Counts in Redis, the live map and the map file, drift between them, and each syncer's state",
		Long: `status prints the assignments in Redis, every syncer's reported state, and,
with --socket and --map, the live map and the map file compared with Redis.
It exits 1 when it finds drift or a syncer that is not ready.`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			return a.status(ctx, cmd.OutOrStdout(), socket, mapPath)
		},
	}
	c.Flags().StringVar(&socket, "socket", cli.Env(cli.EnvSocket, ""), "HAProxy stats socket, to compare the live map (env "+cli.EnvSocket+")")
	c.Flags().StringVar(&mapPath, "map", cli.Env(cli.EnvMap, ""), "map path as in haproxy.cfg, to compare the live map and the file (env "+cli.EnvMap+")")
	return c
}

func (a *app) status(ctx context.Context, w io.Writer, socket, mapPath string) error {
	lastID, err := a.store.LastLogID(ctx)
	if err != nil {
		return err
	}
	snap, err := a.store.Snapshot(ctx, nil)
	if err != nil {
		return err
	}
	unhealthy := 0
	fmt.Fprintf(w, "redis:  %d assignments, %d invalid skipped, change log at %s\n", len(snap.Entries), snap.Skipped, lastID)
	syncers, err := a.store.Syncers(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, st := range syncers {
		state := "ready"
		switch {
		case !st.Live(now, 5*time.Second):
			state = fmt.Sprintf("gone (last seen %s ago)", now.Sub(st.Seen).Round(time.Second))
		case !st.Ready:
			state = "NOT READY: " + st.Problem
			unhealthy++
		}
		behind := ""
		if maps.CompareIDs(st.Applied, lastID) < 0 {
			behind = " (behind)"
		}
		fmt.Fprintf(w, "syncer %s: %s, %d entries, applied %s%s\n", st.Name, state, st.Entries, st.Applied, behind)
	}
	if mapPath != "" {
		mf, err := maps.ReadMapFile(mapPath)
		if err != nil {
			fmt.Fprintf(w, "file:   %s: %v\n", mapPath, err)
			unhealthy++
		} else {
			file := map[string]string{}
			for _, e := range mf.Entries {
				file[e.User] = e.Shard
			}
			d := maps.Diff(snap.Entries, file)
			if d.Total() > 0 {
				unhealthy++
			}
			fmt.Fprintf(w, "file:   %d entries at %s, log id %s: %s\n", len(file), mapPath, mf.LogID, d)
		}
	}
	if socket != "" && mapPath != "" {
		rt, err := runtime.New(socket, 10*time.Second)
		if err != nil {
			return err
		}
		live := map[string]string{}
		dups := 0
		err = rt.Dump(ctx, mapPath, func(k, v string) error {
			if _, ok := live[k]; ok {
				dups++ // HAProxy serves the first one
				return nil
			}
			live[k] = v
			return nil
		})
		if err != nil {
			fmt.Fprintf(w, "live:   %s on %s: %v\n", mapPath, socket, err)
			unhealthy++
		} else {
			d := maps.Diff(snap.Entries, live)
			if d.Total() > 0 || dups > 0 {
				unhealthy++
			}
			fmt.Fprintf(w, "live:   %d entries (%d duplicate keys) in %s: %s\n", len(live), dups, socket, d)
		}
	}
	if unhealthy > 0 {
		return fmt.Errorf("status: %d problems found", unhealthy)
	}
	return nil
}

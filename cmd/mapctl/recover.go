package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func (a *app) restoreCmd() *cobra.Command {
	var from string
	var wait, overwrite bool
	c := &cobra.Command{
		Use:   "restore --from FILE",
		Short: "Seed Redis back from a map file (users.map): after Redis lost its data, before any reconcile",
		Example: `  mapctl restore --from /etc/haproxy/users.map --wait
  mapctl restore --from /etc/haproxy/users.map --overwrite`,
		Long: `restore assigns, in Redis, every user of the map file (the one the syncer
persists) that Redis has no shard for, so that a syncer that refused to empty
the live map can reconcile again. Users Redis already has are left alone:
an assignment made after Redis lost its data is newer than the file. restore
says how many it skipped and names the first few whose shard differs; with
--overwrite it assigns the file's shard to every user instead. Users only in
Redis are kept. Every line is checked before anything is written; each batch
of 500 is written whole, with its change-log entries, or not at all.`,
		Args: args(0, "only --from"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" {
				return usagef("restore needs --from FILE (the map file, e.g. /etc/haproxy/users.map)")
			}
			mf, _, err := readMapFile(cmd, from)
			if err != nil {
				return fmt.Errorf("restore from %s: nothing written: %w", from, err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), max(a.timeout, 10*time.Minute))
			defer cancel()
			stderr := cmd.ErrOrStderr()
			var id string
			if overwrite {
				id, err = a.store.Import(ctx, mf.Entries, 500, nil)
				if err != nil {
					return fmt.Errorf("restore from %s: %w", from, err)
				}
				fmt.Fprintf(stderr, "mapctl: restored %d assignments from %s (written at log id %s), overwriting Redis\n", len(mf.Entries), from, mf.LogID)
			} else {
				res, err := a.store.Fill(ctx, mf.Entries, 500, nil)
				if err != nil {
					return fmt.Errorf("restore from %s: %w", from, err)
				}
				id = res.LogID
				fmt.Fprintf(stderr, "mapctl: restored %d assignments missing from Redis from %s (written at log id %s); %d already there with the same shard\n",
					res.Written, from, mf.LogID, res.Same)
				if n := len(res.Conflicts); n > 0 {
					var first []string
					for _, c := range res.Conflicts[:min(n, 5)] {
						first = append(first, fmt.Sprintf("%s (redis %s, file %s)", c.User, c.Redis, c.Want))
					}
					more := ""
					if n > 5 {
						more = fmt.Sprintf(" and %d more", n-5)
					}
					fmt.Fprintf(stderr, "mapctl: skipped %d users that Redis assigns another shard (Redis kept): %s%s; --overwrite replaces them with the file's\n",
						n, strings.Join(first, ", "), more)
				}
			}
			if wait {
				return a.waitApplied(ctx, id)
			}
			a.warnNoSyncer(ctx, cmd)
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "map file to restore from")
	c.Flags().BoolVar(&wait, "wait", false, "return only when every live syncer has applied it")
	c.Flags().BoolVar(&overwrite, "overwrite", false, "assign the file's shard even to users Redis already assigns another")
	return c
}

func (a *app) reconcileCmd() *cobra.Command {
	var force bool
	var ttl time.Duration
	c := &cobra.Command{
		Use:   "reconcile --force",
		Short: "Let syncers make the live map equal to Redis even if that deletes most of it",
		Example: `  mapctl reconcile --force
  mapctl reconcile --force --ttl 10m`,
		Long: `A syncer refuses a reconcile that would delete more than a set share of the live
map (--max-delete-share, default 10%): that is what Redis coming back empty looks
like. When a human has decided Redis is right, reconcile --force lets the next
such reconcile go ahead (once, within --ttl).`,
		Args: args(0, "only --force"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !force {
				return usagef("reconcile deletes from the live map whatever Redis lacks; say --force to confirm")
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			if err := a.store.AllowForcedReconcile(ctx, ttl); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: the next refused reconcile (within %s) will go ahead\n", ttl)
			return nil
		},
	}
	c.Flags().BoolVar(&force, "force", false, "confirm")
	c.Flags().DurationVar(&ttl, "ttl", 5*time.Minute, "how long the permission lasts")
	return c
}

package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func (a *app) restoreCmd() *cobra.Command {
	var from string
	var wait bool
	c := &cobra.Command{
		Use:   "restore --from FILE",
		Short: "Seed Redis back from a map file (users.map): after Redis lost its data, before any reconcile",
		Long: `restore assigns every user in the map file (the one the syncer persists) in Redis,
so that a syncer that refused to empty the live map can reconcile again. Users
only in Redis are kept. Every line is checked before anything is written.`,
		Args: args(0, "only --from"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" {
				return usagef("restore needs --from FILE (the map file, e.g. /etc/haproxy/users.map)")
			}
			mf, _, err := readMapFile(cmd, from)
			if err != nil {
				return fmt.Errorf("restore from %s: nothing written: %w", from, err)
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			id, err := a.store.Import(ctx, mf.Entries, 500, nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: restored %d assignments from %s (written at log id %s)\n", len(mf.Entries), from, mf.LogID)
			if wait {
				return a.waitApplied(ctx, id)
			}
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "map file to restore from")
	c.Flags().BoolVar(&wait, "wait", false, "return only when every live syncer has applied it")
	return c
}

func (a *app) reconcileCmd() *cobra.Command {
	var force bool
	var ttl time.Duration
	c := &cobra.Command{
		Use:   "reconcile --force",
		Short: "Let syncers make the live map equal to Redis even if that deletes most of it",
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

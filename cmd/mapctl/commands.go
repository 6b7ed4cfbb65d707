package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/maps"
)

// app holds the global flags and the connections they open.
type app struct {
	redis   *cli.RedisFlags
	prefix  string
	timeout time.Duration
	rdb     redis.UniversalClient
	store   *maps.Store
	logical *maps.Store // routing: ids' logical map (maps.LogicalPrefix)
}

// newRoot builds the command tree; the caller closes the app after Execute.
func newRoot() (*cobra.Command, *app) {
	a := &app{}
	root := &cobra.Command{
		Use:   "mapctl",
		Short: "Read and change shardmap's user -> shard assignments",
		Example: `  mapctl set alice shard1 --wait
  mapctl get alice -o json
  mapctl --redis redis://:PASSWORD@10.0.0.7:6379/0 status --socket /run/haproxy/admin.sock --map /etc/haproxy/users.map
  source <(mapctl completion bash)`,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if cli.Housekeeping(cmd) { // version, help, completion: no Redis
				return nil
			}
			if strings.HasSuffix(a.prefix, maps.LogicalSuffix) {
				// The logical map's keys: only mapctl logical changes them,
				// so that no entry is ever deleted.
				return usagef("--prefix %q names the logical map's keys (it ends in %q); use mapctl logical, with the store's own prefix", a.prefix, maps.LogicalSuffix)
			}
			var err error
			if a.rdb, a.store, err = a.redis.Store(true, a.prefix); err != nil {
				return err
			}
			a.logical = maps.NewStore(a.rdb, maps.LogicalPrefix(a.prefix)).WithReplicaWait(a.redis.WaitReplicas, a.redis.WaitTimeout)
			return nil
		},
	}
	pf := root.PersistentFlags()
	a.redis = cli.AddRedisFlags(pf)
	a.redis.AddWaitFlags(pf)
	pf.StringVar(&a.prefix, "prefix", cli.Env(cli.EnvPrefix, maps.DefaultPrefix), "Redis key prefix (env "+cli.EnvPrefix+")")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "how long a command, or --wait, may take")
	root.AddCommand(a.setCmd(), a.getCmd(), a.delCmd(), a.listCmd(), a.importCmd(), a.exportCmd(), a.statusCmd(), a.configCmd(), a.shardCmd(), a.restoreCmd(), a.reconcileCmd(), a.syncersCmd(), a.idCmd(), a.logicalCmd(), a.moveCmd(), a.movesCmd())
	cli.Conventions(root)
	return root, a
}

// close releases the Redis connection, if the command opened one.
func (a *app) close() {
	if a.rdb != nil {
		a.rdb.Close()
		a.rdb = nil
	}
}

// args wraps cobra's argument checks so that a wrong count exits 2.
func args(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, as []string) error {
		if len(as) != n {
			return usagef("%s takes %s (%d arguments), got %d", cmd.Name(), names, n, len(as))
		}
		return nil
	}
}

func (a *app) ctx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), a.timeout)
}

func (a *app) setCmd() *cobra.Command {
	var wait, force bool
	c := &cobra.Command{
		Use:   "set USER SHARD",
		Short: "Assign USER to SHARD (an HAProxy backend); in routing: ids, move the ID USER to SHARD",
		Long: `set assigns USER to SHARD. In routing: ids (the logical map is in Redis, see
mapctl logical), USER must be an ID (docs/IDS.md) and set moves it out of its
logical shard to SHARD; mapctl del ID moves it back.`,
		Example: `  mapctl set alice shard1
  mapctl set alice shard1 --wait --timeout 5s
  mapctl set bob shard9 --force`,
		Args: args(2, "USER SHARD"),
		RunE: func(cmd *cobra.Command, as []string) error {
			asg := maps.Assignment{User: as[0], Shard: as[1]}
			if err := asg.Validate(); err != nil {
				return err
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			if err := a.checkKey(ctx, as[0]); err != nil {
				return err
			}
			if !force {
				if err := a.checkShards(ctx, []string{asg.Shard}); err != nil {
					return err
				}
			}
			id, err := a.store.Set(ctx, asg)
			if err != nil {
				return err
			}
			if wait {
				return a.waitApplied(ctx, id)
			}
			a.warnNoSyncer(ctx, cmd)
			return nil
		},
	}
	c.Flags().BoolVar(&wait, "wait", false, "return only when every live syncer has the change in HAProxy")
	c.Flags().BoolVar(&force, "force", false, "assign even if SHARD is not a backend HAProxy is known to have")
	return c
}

// checkShards refuses shards that are not known HAProxy backends.
func (a *app) checkShards(ctx context.Context, shards []string) error {
	for _, sh := range shards {
		ok, err := a.store.KnownShard(ctx, sh)
		if err != nil {
			return err
		}
		if !ok {
			known, err := a.store.KnownShards(ctx)
			if err != nil {
				return err
			}
			list := strings.Join(known, ", ")
			if list == "" {
				list = "none yet: start a syncer, which publishes HAProxy's backends"
			}
			return usagef("shard %q is not a backend HAProxy is known to have (known: %s); use --force to assign it anyway", sh, list)
		}
	}
	return nil
}

// warnNoSyncer prints a one-line warning when no active syncer sent a
// heartbeat lately: the change is stored but reaches no HAProxy for now. It
// never fails the command (a failure to look is not reported either).
func (a *app) warnNoSyncer(ctx context.Context, cmd *cobra.Command) {
	a.warnNoSyncerIn(ctx, cmd, a.store)
}

// warnNoSyncerIn is warnNoSyncer for the syncers that report in store.
func (a *app) warnNoSyncerIn(ctx context.Context, cmd *cobra.Command, store *maps.Store) {
	all, err := store.Syncers(ctx)
	if err != nil {
		return
	}
	now := time.Now()
	for _, st := range all {
		if !st.Standby && st.Live(now, maps.LiveWithin) {
			return
		}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: warning: stored in Redis; no syncer reported in the last %s, so no HAProxy will get it until one runs\n", maps.LiveWithin)
}

// waitApplied returns when every live, active (not standby) syncer reports
// the change-log ID id (or a later one) as applied to its HAProxy. At the
// timeout its error (a *maps.NotAppliedError) names each syncer that lacks
// it, where it is and the problem it reports.
func (a *app) waitApplied(ctx context.Context, id string) error {
	return a.store.WaitApplied(ctx, id, a.timeout)
}

func orNone(id string) string {
	if id == "" {
		return "nothing"
	}
	return id
}

func (a *app) getCmd() *cobra.Command {
	var out *output
	c := &cobra.Command{
		Use:   "get USER",
		Short: "Print USER's shard (exit 1 when USER has none)",
		Long: `get prints USER's shard. With -o json it prints {"user": USER, "shard": SHARD}.
A USER with no shard prints nothing on stdout, an error on stderr, and exits 1.`,
		Example: `  mapctl get alice
  mapctl get alice -o json`,
		Args: args(1, "USER"),
		RunE: func(cmd *cobra.Command, as []string) error {
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			shard, ok, err := a.store.Get(ctx, as[0])
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("user %q has no shard (HAProxy sends it to the default)", as[0])
			}
			if *out == outJSON {
				return writeJSON(cmd.OutOrStdout(), assignmentJSON{User: as[0], Shard: shard})
			}
			fmt.Fprintln(cmd.OutOrStdout(), shard)
			return nil
		},
	}
	out = outputFlag(c)
	return c
}

func (a *app) delCmd() *cobra.Command {
	var wait bool
	c := &cobra.Command{
		Use:   "del USER",
		Short: "Remove USER's assignment (HAProxy then sends it to the default shard; in routing: ids, an ID back to its logical shard's)",
		Example: `  mapctl del alice
  mapctl del alice --wait`,
		Args: args(1, "USER"),
		RunE: func(cmd *cobra.Command, as []string) error {
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			if err := a.checkKey(ctx, as[0]); err != nil {
				return err
			}
			id, found, err := a.store.Del(ctx, as[0])
			if err != nil {
				return err
			}
			if !found {
				fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: user %q had no shard; nothing to delete\n", as[0])
			}
			if wait {
				return a.waitApplied(ctx, id)
			}
			if found {
				a.warnNoSyncer(ctx, cmd)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&wait, "wait", false, "return only when every live syncer has the change in HAProxy")
	return c
}

// sorted returns every valid assignment sorted by user, and how many invalid
// ones were skipped.
func (a *app) sorted(ctx context.Context, shard string) ([]maps.Assignment, int, error) {
	var out []maps.Assignment
	seen := map[string]bool{}
	skipped, err := a.store.Scan(ctx, func(as maps.Assignment) error {
		if (shard == "" || as.Shard == shard) && !seen[as.User] {
			seen[as.User] = true
			out = append(out, as)
		}
		return nil
	}, nil)
	sort.Slice(out, func(i, j int) bool { return out[i].User < out[j].User })
	return out, skipped, err
}

func (a *app) listCmd() *cobra.Command {
	var shard string
	var out *output
	c := &cobra.Command{
		Use:   "list",
		Short: `List assignments as "user shard" lines, sorted by user`,
		Long: `list prints every assignment as a "user shard" line, sorted by user; with -o json,
one JSON array of {"user", "shard"} objects in the same order ([] when none).`,
		Example: `  mapctl list
  mapctl list --shard shard2
  mapctl list -o json | jq -r '.[] | select(.shard == "shard1") | .user'`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			all, skipped, err := a.sorted(ctx, shard)
			if err != nil {
				return err
			}
			if skipped > 0 {
				defer fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: skipped %d invalid entries in Redis\n", skipped)
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			if *out == outJSON {
				list := make([]assignmentJSON, len(all))
				for i, as := range all {
					list[i] = assignmentJSON{User: as.User, Shard: as.Shard}
				}
				if err := writeJSON(w, list); err != nil {
					return err
				}
				return w.Flush()
			}
			for _, as := range all {
				fmt.Fprintln(w, as.User, as.Shard)
			}
			return w.Flush()
		},
	}
	c.Flags().StringVar(&shard, "shard", "", "only this shard's users")
	out = outputFlag(c)
	return c
}

func (a *app) exportCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "export",
		Short:   "Write every assignment to stdout in HAProxy map-file format",
		Example: `  mapctl export > users.map.bak`,
		Args:    args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			id, err := a.store.LastLogID(ctx)
			if err != nil {
				return err
			}
			all, skipped, err := a.sorted(ctx, "")
			if err != nil {
				return err
			}
			data, err := maps.MapFile{LogID: id, Entries: all}.Encode()
			if err != nil {
				return err
			}
			if skipped > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: skipped %d invalid entries in Redis\n", skipped)
			}
			_, err = cmd.OutOrStdout().Write(data)
			return err
		},
	}
}

// readMapFile opens path ("-": standard input) and parses it as a map file.
// It returns the name to show for it; a file that cannot be opened is a
// usage error.
func readMapFile(cmd *cobra.Command, path string) (maps.MapFile, string, error) {
	if path == "-" {
		mf, err := maps.ParseMapFile(cmd.InOrStdin())
		return mf, "stdin", err
	}
	f, err := os.Open(path)
	if err != nil {
		return maps.MapFile{}, path, usageError{Err: err}
	}
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		f.Close()
		return maps.MapFile{}, path, usagef("%s is a directory, not a map file", path)
	}
	defer f.Close()
	mf, err := maps.ParseMapFile(f)
	return mf, path, err
}

func (a *app) importCmd() *cobra.Command {
	var force, wait bool
	var batch int
	c := &cobra.Command{
		Use:   "import FILE|-",
		Short: "Assign every user in a map file (\"user shard\" lines); all lines are checked before any is written",
		Example: `  mapctl import users.map --wait
  printf 'alice shard1\nbob shard2\n' | mapctl import -`,
		Args: args(1, "FILE or -"),
		RunE: func(cmd *cobra.Command, as []string) error {
			mf, name, err := readMapFile(cmd, as[0])
			if err != nil {
				return fmt.Errorf("import %s: nothing written: %w", name, err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), max(a.timeout, 10*time.Minute))
			defer cancel()
			if !force {
				shards := map[string]bool{}
				var list []string
				for _, e := range mf.Entries {
					if !shards[e.Shard] {
						shards[e.Shard] = true
						list = append(list, e.Shard)
					}
				}
				if err := a.checkShards(ctx, list); err != nil {
					return fmt.Errorf("import %s: nothing written: %w", name, err)
				}
			}
			progress := func(int) {}
			if f, ok := cmd.ErrOrStderr().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				bar := progressbar.NewOptions(len(mf.Entries), progressbar.OptionSetWriter(f),
					progressbar.OptionSetDescription("import"), progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond))
				progress = func(done int) { bar.Set(done) }
				defer fmt.Fprintln(f)
			}
			id, err := a.store.Import(ctx, mf.Entries, batch, progress)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: imported %d assignments from %s\n", len(mf.Entries), name)
			if wait {
				return a.waitApplied(ctx, id)
			}
			a.warnNoSyncer(ctx, cmd)
			return nil
		},
	}
	c.Flags().BoolVar(&force, "force", false, "import even if a shard is not a backend HAProxy is known to have")
	c.Flags().BoolVar(&wait, "wait", false, "return only when every live syncer has the changes in HAProxy")
	c.Flags().IntVar(&batch, "batch", 500, "assignments per atomic Redis script call")
	return c
}

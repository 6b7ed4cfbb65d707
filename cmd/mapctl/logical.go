package main

import (
	"bufio"
	"context"
	"fmt"
	"sort"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/ids"
	"github.com/shardmap/shardmap/maps"
)

// routing: ids in Redis. The logical map (logical shard -> shard) is an
// assignments set of its own under maps.LogicalPrefix, kept in HAProxy by
// the syncer's second syncer; the moved map (ID -> shard) is the ordinary
// store. Redis is in ids mode when the logical map has entries: mapctl
// logical init (or a syncer in ids mode, from the logical map file) puts
// them there, and no command deletes them.

// idsMode reports whether Redis holds a logical map (routing: ids).
func (a *app) idsMode(ctx context.Context) (bool, error) {
	n, err := a.logical.Count(ctx)
	if err != nil {
		return false, fmt.Errorf("logical map: %w", err)
	}
	return n > 0, nil
}

// checkKey refuses a key of the moved map that is not an ID, in ids mode.
func (a *app) checkKey(ctx context.Context, key string) error {
	on, err := a.idsMode(ctx)
	if err != nil || !on {
		return err
	}
	if _, err := ids.ParseNumber(key); err != nil {
		return usageError{Err: fmt.Errorf("routing: ids (a logical map is in Redis), so this takes an ID (docs/IDS.md): %w", err)}
	}
	return nil
}

// logicalShard reads s as a logical shard of the logical map in Redis:
// canonical decimal, 0..n-1 where n is the count of logical shards there.
func (a *app) logicalShard(ctx context.Context, s string) (int, error) {
	n, err := a.logical.Count(ctx)
	if err != nil {
		return 0, fmt.Errorf("logical map: %w", err)
	}
	if n == 0 {
		return 0, usagef("no logical map in Redis (prefix %s): run mapctl logical init --topology FILE, or start a syncer in routing: ids", maps.LogicalPrefix(a.prefix))
	}
	l, err := strconv.Atoi(s)
	if err != nil || l < 0 || int64(l) >= n || strconv.Itoa(l) != s {
		return 0, usagef("logical shard %q: want a number 0..%d without leading zeros", s, n-1)
	}
	return l, nil
}

func (a *app) logicalCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "logical",
		Short: "The logical map of routing: ids (logical shard -> shard) in Redis; the syncer keeps HAProxy's in step",
		Example: `  mapctl logical init --topology /etc/shardmap/topology.yaml
  mapctl logical set 42 shard3 --wait
  mapctl logical list`,
	}
	c.AddCommand(a.logicalInitCmd(), a.logicalSetCmd(), a.logicalListCmd(), a.logicalDelCmd())
	return c
}

func (a *app) logicalInitCmd() *cobra.Command {
	var topo string
	var wait bool
	c := &cobra.Command{
		Use:   "init",
		Short: "Put the topology's spread of logical shards in Redis, only where Redis has none",
		Long: `init writes the logical map of a routing: ids topology to Redis: its logical
shards spread evenly over its shards in name order (as config render writes
the logical map file). It only adds logical shards Redis does not have: one
that is there (it may have moved) is kept. Running it again changes nothing.`,
		Example: `  mapctl logical init --topology /etc/shardmap/topology.yaml --wait`,
		Args:    args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := loadTopology(topo)
			if err != nil {
				return err
			}
			if t.EffectiveRouting() != haproxy.RoutingIDs {
				return usagef("--topology %s: routing is %s, not ids", topo, t.EffectiveRouting())
			}
			spread := haproxy.Spread(t.IDLayout().LogicalShards(), t.ShardNames())
			entries := make([]maps.Assignment, len(spread))
			for l, sh := range spread {
				entries[l] = maps.Assignment{User: strconv.Itoa(l), Shard: sh}
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			res, err := a.logical.Fill(ctx, entries, 1000, nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: logical map: %d logical shards written, %d already there (kept)\n", res.Written, res.Same+len(res.Conflicts))
			if wait && res.Written > 0 {
				return a.logical.WaitApplied(ctx, res.LogID, a.timeout)
			}
			return nil
		},
	}
	c.Flags().StringVar(&topo, "topology", "", "topology file (YAML) with routing: ids")
	c.Flags().BoolVar(&wait, "wait", false, "return only when every live logical map syncer has the changes in HAProxy")
	return c
}

func (a *app) logicalSetCmd() *cobra.Command {
	var wait, force bool
	c := &cobra.Command{
		Use:   "set LOGICAL SHARD",
		Short: "Move logical shard LOGICAL (every ID on it that was not moved on its own) to SHARD",
		Example: `  mapctl logical set 42 shard3
  mapctl logical set 42 shard3 --wait --timeout 5s`,
		Args: args(2, "LOGICAL SHARD"),
		RunE: func(cmd *cobra.Command, as []string) error {
			if err := maps.ValidateShard(as[1]); err != nil {
				return err
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			l, err := a.logicalShard(ctx, as[0])
			if err != nil {
				return err
			}
			if !force {
				if err := a.checkShards(ctx, []string{as[1]}); err != nil {
					return err
				}
			}
			id, err := a.logical.Set(ctx, maps.Assignment{User: strconv.Itoa(l), Shard: as[1]})
			if err != nil {
				return err
			}
			if wait {
				return a.logical.WaitApplied(ctx, id, a.timeout)
			}
			a.warnNoSyncerIn(ctx, cmd, a.logical)
			return nil
		},
	}
	c.Flags().BoolVar(&wait, "wait", false, "return only when every live logical map syncer has the change in HAProxy")
	c.Flags().BoolVar(&force, "force", false, "move it even if SHARD is not a backend HAProxy is known to have")
	return c
}

// logicalDelCmd exists to say why there is no such thing.
func (a *app) logicalDelCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "del LOGICAL",
		Short:   "Refused: every logical shard always has a shard (move it with logical set)",
		Example: `  mapctl logical set 42 shard0   # instead of deleting logical shard 42`,
		Args:    args(1, "LOGICAL"),
		RunE: func(cmd *cobra.Command, as []string) error {
			return usagef("logical shard %q cannot be deleted: every logical shard always has a shard (move it with mapctl logical set %s SHARD)", as[0], as[0])
		},
	}
}

// logicalRange is a run of consecutive logical shards on one shard, in
// logical list's output.
type logicalRange struct {
	From  int    `json:"from"`
	To    int    `json:"to"`
	Shard string `json:"shard"`
}

// logicalRanges compacts m (logical shard -> shard) into runs of
// consecutive logical shards with the same shard, in logical shard order.
// A gap starts a new run.
func logicalRanges(m map[int]string) []logicalRange {
	keys := make([]int, 0, len(m))
	for l := range m {
		keys = append(keys, l)
	}
	sort.Ints(keys)
	out := []logicalRange{}
	for _, l := range keys {
		if n := len(out); n > 0 && out[n-1].To == l-1 && out[n-1].Shard == m[l] {
			out[n-1].To = l
			continue
		}
		out = append(out, logicalRange{From: l, To: l, Shard: m[l]})
	}
	return out
}

// logicalMap reads the logical map in Redis; entries whose key is not a
// logical shard number are counted as skipped.
func (a *app) logicalMap(ctx context.Context) (map[int]string, int, error) {
	m := map[int]string{}
	notNumber := 0
	skipped, err := a.logical.Scan(ctx, func(as maps.Assignment) error {
		l, err := strconv.Atoi(as.User)
		if err != nil || l < 0 || strconv.Itoa(l) != as.User {
			notNumber++
			return nil
		}
		m[l] = as.Shard
		return nil
	}, nil)
	return m, skipped + notNumber, err
}

func (a *app) logicalListCmd() *cobra.Command {
	var out *output
	c := &cobra.Command{
		Use:   "list",
		Short: `List the logical map in Redis as "FROM-TO SHARD" lines (runs of logical shards on one shard)`,
		Long: `list prints the logical map in Redis, consecutive logical shards on the same
shard as one line: "0-2047 shard0", or "42 shard3" for a single one. With
-o json, one JSON array of {"from", "to", "shard"} objects in the same order.`,
		Example: `  mapctl logical list
  mapctl logical list -o json`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			m, skipped, err := a.logicalMap(ctx)
			if err != nil {
				return err
			}
			if len(m) == 0 {
				return usagef("no logical map in Redis (prefix %s): run mapctl logical init --topology FILE, or start a syncer in routing: ids", maps.LogicalPrefix(a.prefix))
			}
			if skipped > 0 {
				defer fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: skipped %d invalid entries in Redis\n", skipped)
			}
			ranges := logicalRanges(m)
			if *out == outJSON {
				return writeJSON(cmd.OutOrStdout(), ranges)
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			for _, r := range ranges {
				if r.From == r.To {
					fmt.Fprintln(w, r.From, r.Shard)
				} else {
					fmt.Fprintf(w, "%d-%d %s\n", r.From, r.To, r.Shard)
				}
			}
			return w.Flush()
		},
	}
	out = outputFlag(c)
	return c
}

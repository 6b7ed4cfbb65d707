package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/ids"
	"github.com/shardmap/shardmap/maps"
)

func (a *app) idCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "id",
		Short: "Make and read IDs that carry their logical shard (routing: ids; docs/IDS.md)",
		Example: `  mapctl id new --logical 42
  mapctl id parse 1234567890123456789 --logical-map /etc/haproxy/logical.map`,
	}
	c.AddCommand(a.idNewCmd(), a.idParseCmd())
	return c
}

// idLayout is the ID layout of the topology file at path, or ids.Default
// when path is empty.
func idLayout(path string) (ids.Layout, *haproxy.Topology, error) {
	if path == "" {
		return ids.Default, nil, nil
	}
	t, err := loadTopology(path)
	if err != nil {
		return ids.Layout{}, nil, err
	}
	if t.EffectiveRouting() != haproxy.RoutingIDs {
		return ids.Layout{}, nil, usagef("--topology %s: routing is %s, not ids", path, t.EffectiveRouting())
	}
	return t.IDLayout(), t, nil
}

// idJSON is an ID in id new's and id parse's JSON. The ID is a string: a
// JSON number above 2^53 loses digits in many languages.
type idJSON struct {
	ID         string `json:"id"`
	Time       string `json:"time"`
	Millis     int64  `json:"millis"`
	Logical    int    `json:"logical"`
	Sequence   int    `json:"sequence"`
	Shard      string `json:"shard,omitempty"`
	LogicalMap string `json:"logical_map,omitempty"`
	// RoutedBy says where Shard comes from: "moved map" (the ID's own
	// entry in Redis), "logical map" (its logical shard's entry in Redis)
	// or "file" (LogicalMap).
	RoutedBy string `json:"routed_by,omitempty"`
}

const idTime = "2006-01-02T15:04:05.000Z07:00"

func describeID(l ids.Layout, id int64) (idJSON, error) {
	p, err := l.Split(id)
	if err != nil {
		return idJSON{}, err
	}
	return idJSON{ID: strconv.FormatInt(id, 10), Time: p.Time(l).Format(idTime), Millis: p.Millis, Logical: p.Logical, Sequence: p.Sequence}, nil
}

func (a *app) idNewCmd() *cobra.Command {
	var (
		logical  int
		topology string
		out      *output
	)
	c := &cobra.Command{
		Use:   "new",
		Short: "Make a new ID on a logical shard (random when --logical is not given)",
		Long: `new makes an ID with the generator script in Redis (unique across every process
using the same Redis and key prefix) and prints it. With -o json it prints
{"id" (a string), "time", "millis", "logical", "sequence"}.`,
		Example: `  mapctl id new
  mapctl id new --logical 42
  mapctl id new --logical 42 -o json --topology /etc/shardmap/topology.yaml`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, _, err := idLayout(topology)
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("logical") {
				logical = rand.IntN(l.LogicalShards())
			} else if logical < 0 || logical >= l.LogicalShards() {
				return usagef("--logical %d: want a logical shard, 0..%d", logical, l.LogicalShards()-1)
			}
			gen, err := ids.NewGenerator(a.rdb, a.prefix, l)
			if err != nil {
				return usageError{Err: err}
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			id, err := gen.New(ctx, logical)
			if err != nil {
				return err
			}
			if *out == outJSON {
				d, err := describeID(l, id)
				if err != nil {
					return err
				}
				return writeJSON(cmd.OutOrStdout(), d)
			}
			fmt.Fprintln(cmd.OutOrStdout(), id)
			return nil
		},
	}
	c.Flags().IntVar(&logical, "logical", 0, "logical shard (default: a random one)")
	c.Flags().StringVar(&topology, "topology", "", "take the ID layout from this topology file (default: Instagram's, docs/IDS.md)")
	out = outputFlag(c)
	return c
}

func (a *app) idParseCmd() *cobra.Command {
	var (
		logicalMap string
		topology   string
		out        *output
	)
	c := &cobra.Command{
		Use:   "parse ID",
		Short: "Print an ID's time, logical shard and sequence, and where it routes now",
		Long: `parse prints what ID carries: when it was made, its logical shard and its
sequence number, and where it routes now: its own entry in the moved map in
Redis if it was moved, else its logical shard's entry in the logical map in
Redis. With --logical-map FILE it reads the logical shard's shard from FILE
instead (no Redis; moved IDs are not looked up); with --topology (the ID
layout), from the topology's logical map file when Redis has no logical map.
When Redis cannot be reached, the route is left out with a warning. A string
that is not an ID exits 2, naming the rule it breaks. With -o json it prints
{"id" (a string), "time", "millis", "logical", "sequence", and when known
"shard", "routed_by" ("moved map", "logical map" or "file") and with a file
"logical_map"}.`,
		Example: `  mapctl id parse 1234567890123456789
  mapctl id parse 1234567890123456789 --logical-map /etc/haproxy/logical.map
  mapctl id parse 1234567890123456789 --topology /etc/shardmap/topology.yaml -o json`,
		Args: args(1, "ID"),
		RunE: func(cmd *cobra.Command, as []string) error {
			l, topo, err := idLayout(topology)
			if err != nil {
				return err
			}
			id, err := ids.ParseNumber(as[0])
			if err != nil {
				return usageError{Err: err}
			}
			d, err := describeID(l, id)
			if err != nil {
				return usageError{Err: err}
			}
			if logicalMap == "" {
				ok, err := a.routeFromRedis(cmd, &d)
				if err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: where it routes now is unknown: %v\n", err)
				}
				if !ok && topo != nil {
					logicalMap = topo.EffectiveLogicalMap()
				}
			}
			if logicalMap != "" {
				m, err := haproxy.ReadLogicalMap(logicalMap, l.LogicalShards())
				if errors.Is(err, haproxy.ErrLogicalMap) {
					return usageError{Err: err}
				} else if err != nil {
					return err
				}
				d.LogicalMap = logicalMap
				d.Shard = m[d.Logical] // "" when not listed: the default shard
				d.RoutedBy = "file"
			}
			if *out == outJSON {
				return writeJSON(cmd.OutOrStdout(), d)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "id\t%s\n", d.ID)
			age := "in the future"
			if ago := time.Since(ids.Parts{Millis: d.Millis}.Time(l)); ago >= 0 {
				age = ago.Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(w, "time\t%s (%s)\n", d.Time, age)
			fmt.Fprintf(w, "logical\t%d\n", d.Logical)
			fmt.Fprintf(w, "sequence\t%d\n", d.Sequence)
			switch {
			case d.RoutedBy == "moved map":
				fmt.Fprintf(w, "routes to\t%s (moved on its own: its entry in the moved map in Redis)\n", d.Shard)
			case d.RoutedBy == "logical map":
				fmt.Fprintf(w, "routes to\t%s (logical shard %d in the logical map in Redis)\n", d.Shard, d.Logical)
			case logicalMap == "":
			case d.Shard == "":
				fmt.Fprintf(w, "routes to\tthe default shard (logical shard %d is not in %s)\n", d.Logical, logicalMap)
			default:
				fmt.Fprintf(w, "routes to\t%s (%s)\n", d.Shard, logicalMap)
			}
			return w.Flush()
		},
	}
	c.Flags().StringVar(&logicalMap, "logical-map", "", "logical map file: also print the shard the ID's logical shard routes to")
	c.Flags().StringVar(&topology, "topology", "", "take the ID layout (and the logical map) from this topology file")
	out = outputFlag(c)
	return c
}

// createLogicalMap writes the logical map of a routing: ids topology when it
// does not exist yet (config render -o: the config HAProxy will load names
// it), and says so on stderr. An existing one is kept: logical shards may
// have moved since it was created.
func createLogicalMap(cmd *cobra.Command, t *haproxy.Topology) error {
	if created, err := haproxy.CreateDeltaMap(t); err != nil {
		return err
	} else if created {
		fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: wrote an empty delta map %s\n", maps.DeltaPath(t.Map))
	}
	if t.EffectiveRouting() != haproxy.RoutingIDs {
		return nil
	}
	created, err := haproxy.CreateLogicalMap(t)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: wrote %s: %d logical shards spread over %d shards\n", t.EffectiveLogicalMap(), t.IDLayout().LogicalShards(), len(t.Shards))
	}
	return nil
}

// routeFromRedis sets d's shard from Redis: the ID's own entry in the moved
// map, else its logical shard's in the logical map. It reports false (and
// no error) when Redis holds no logical map.
func (a *app) routeFromRedis(cmd *cobra.Command, d *idJSON) (bool, error) {
	ctx, cancel := a.ctx(cmd)
	defer cancel()
	on, err := a.idsMode(ctx)
	if err != nil || !on {
		return false, err
	}
	if sh, ok, err := a.store.Get(ctx, d.ID); err != nil {
		return false, err
	} else if ok {
		d.Shard, d.RoutedBy = sh, "moved map"
		return true, nil
	}
	sh, ok, err := a.logical.Get(ctx, strconv.Itoa(d.Logical))
	if err != nil {
		return false, err
	}
	if !ok {
		return false, fmt.Errorf("logical shard %d is not in the logical map in Redis (prefix %s)", d.Logical, maps.LogicalPrefix(a.prefix))
	}
	d.Shard, d.RoutedBy = sh, "logical map"
	return true, nil
}

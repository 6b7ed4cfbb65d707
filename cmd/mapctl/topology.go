package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/internal/atomicfile"
	"github.com/shardmap/shardmap/runtime"
)

func loadTopology(path string) (*haproxy.Topology, error) {
	if path == "" {
		return nil, usagef("--topology is required")
	}
	t, err := haproxy.LoadTopology(path)
	if errors.Is(err, haproxy.ErrTopology) || errors.Is(err, os.ErrNotExist) {
		return nil, usageError{Err: err}
	}
	return t, err
}

func (a *app) configCmd() *cobra.Command {
	c := &cobra.Command{Use: "config", Example: `  mapctl config render --topology topology.yaml -o /etc/haproxy/haproxy.cfg
  mapctl config publish --topology topology.yaml`, Short: "HAProxy configuration from the topology file"}
	var topo, out string
	render := &cobra.Command{
		Use:   "render",
		Short: "Write haproxy.cfg for the topology: deterministic, native map lookup, stats page, runtime socket",
		Example: `  mapctl config render --topology topology.yaml
  mapctl config render --topology topology.yaml -o /etc/haproxy/haproxy.cfg`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := loadTopology(topo)
			if err != nil {
				return err
			}
			cfg, err := haproxy.Render(t, topo)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(cfg)
				return err
			}
			if err := createLogicalMap(cmd, t); err != nil {
				return err
			}
			return atomicfile.Write(out, cfg, 0o644)
		},
	}
	render.Flags().StringVar(&topo, "topology", "", "topology file (YAML)")
	render.Flags().StringVarP(&out, "output", "o", "", "write here (atomically) instead of stdout")
	var ptopo string
	publish := &cobra.Command{
		Use:     "publish",
		Short:   "Record the topology's shards in Redis as known, so mapctl set accepts them",
		Example: `  mapctl config publish --topology topology.yaml`,
		Args:    args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := loadTopology(ptopo)
			if err != nil {
				return err
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			return a.store.AddShards(ctx, t.ShardNames())
		},
	}
	publish.Flags().StringVar(&ptopo, "topology", "", "topology file (YAML)")
	c.AddCommand(render, publish)
	return c
}

func (a *app) shardCmd() *cobra.Command {
	c := &cobra.Command{Use: "shard", Example: `  mapctl shard add-server shard1 10.0.0.21:8080 --topology topology.yaml
  mapctl shard remove-server shard1 10.0.0.21:8080 --topology topology.yaml`, Short: "Servers joining and leaving a shard, live and in the topology"}
	var topo string
	var sockets []string
	var weight int
	var check bool
	add := &cobra.Command{
		Use:   "add-server SHARD ADDR",
		Short: "Add a server to SHARD in every given HAProxy (no reload) and in the topology file",
		Example: `  mapctl shard add-server shard1 10.0.0.21:8080 --topology topology.yaml --check
  mapctl shard add-server shard1 10.0.0.21:8080 --topology topology.yaml --socket /run/haproxy/a.sock --socket /run/haproxy/b.sock`,
		Args: args(2, "SHARD ADDR"),
		RunE: func(cmd *cobra.Command, as []string) error {
			srv := haproxy.Server{Addr: as[1], Weight: weight, Check: check}
			if err := haproxy.CheckServer(srv); err != nil {
				return usageError{Err: err}
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			f, unlock, err := editTopology(ctx, topo, as[0])
			if err != nil {
				return err
			}
			defer unlock()
			if err := f.AddServer(as[0], srv); err != nil { // a server listed twice, check without health_check
				return usageError{Err: err}
			}
			err = eachHAProxy(socketsOr(sockets, f.Topology()), a.timeout, "add server", func(rt *runtime.Client) error {
				return rt.AddServer(ctx, as[0], srv.Name(), srv.Addr, srv.EffectiveWeight(), srv.Check)
			})
			if err != nil {
				return err
			}
			if err := f.Save(); err != nil {
				return fmt.Errorf("server %s is live in HAProxy but the topology was not saved: %w", srv.Addr, err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: server %s (%s) added to %s, live and in %s\n", srv.Name(), srv.Addr, as[0], topo)
			return nil
		},
	}
	add.Flags().IntVar(&weight, "weight", 0, "server weight 1..256 (default 100)")
	add.Flags().BoolVar(&check, "check", false, "health-check the server (the topology's health_check)")

	var drainTimeout time.Duration
	remove := &cobra.Command{
		Use:     "remove-server SHARD ADDR",
		Short:   "Drain a server of SHARD, then remove it from every given HAProxy and from the topology file",
		Example: `  mapctl shard remove-server shard1 10.0.0.21:8080 --topology topology.yaml --drain-timeout 2m`,
		Args:    args(2, "SHARD ADDR"),
		RunE: func(cmd *cobra.Command, as []string) error {
			lctx, lcancel := a.ctx(cmd)
			f, unlock, err := editTopology(lctx, topo, as[0])
			lcancel()
			if err != nil {
				return err
			}
			defer unlock()
			if len(f.Topology().Shards[as[0]].Servers) == 1 && f.Topology().Shards[as[0]].Servers[0].Addr == as[1] {
				return usagef("server %s is the last of shard %q: a shard needs a server", as[1], as[0])
			}
			srv, err := f.RemoveServer(as[0], as[1])
			if err != nil {
				return usageError{Err: err}
			}
			name := srv.Name()
			ctx, cancel := context.WithTimeout(cmd.Context(), drainTimeout+a.timeout)
			defer cancel()
			err = eachHAProxy(socketsOr(sockets, f.Topology()), a.timeout, "remove server", func(rt *runtime.Client) error {
				return drainAndDelete(ctx, rt, as[0], name, drainTimeout)
			})
			if err != nil {
				return err
			}
			if err := f.Save(); err != nil {
				return fmt.Errorf("server %s is removed from HAProxy but the topology was not saved: %w", srv.Addr, err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "mapctl: server %s drained and removed from %s, live and in %s\n", name, as[0], topo)
			return nil
		},
	}
	remove.Flags().DurationVar(&drainTimeout, "drain-timeout", 30*time.Second, "longest to wait for the server's sessions to end")
	for _, sub := range []*cobra.Command{add, remove} {
		sub.Flags().StringVar(&topo, "topology", "", "topology file (YAML), updated on success")
		sub.Flags().StringArrayVar(&sockets, "socket", nil, "HAProxy stats socket to change (repeat for several; default: the topology's)")
	}
	c.AddCommand(add, remove)
	return c
}

// editTopology locks the topology file (waiting until ctx is done for
// another mapctl to finish), then reads it afresh under the lock and checks
// that shard is in it. The caller holds the lock, through changing HAProxy
// and saving the file, until it calls unlock.
func editTopology(ctx context.Context, path, shard string) (*haproxy.TopologyFile, func(), error) {
	if path == "" {
		return nil, nil, usagef("--topology is required")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, nil, usageError{Err: err} // before creating a lock file beside a wrong path
	}
	lock, err := haproxy.LockTopology(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	unlock := func() { lock.Unlock() }
	f, err := haproxy.OpenTopologyFile(path)
	if err != nil {
		unlock()
		if errors.Is(err, haproxy.ErrTopology) || errors.Is(err, os.ErrNotExist) {
			return nil, nil, usageError{Err: err}
		}
		return nil, nil, err
	}
	if _, ok := f.Topology().Shards[shard]; !ok {
		unlock()
		return nil, nil, usagef("shard %q is not in %s (shards: %v)", shard, path, f.Topology().ShardNames())
	}
	return f, unlock, nil
}

// eachHAProxy runs fn against every socket in turn and stops at the first
// failure, which it names; the topology file is then left unchanged.
func eachHAProxy(sockets []string, timeout time.Duration, what string, fn func(*runtime.Client) error) error {
	for _, s := range sockets {
		rt, err := runtime.New(s, timeout)
		if err != nil {
			return err
		}
		if err := fn(rt); err != nil {
			return fmt.Errorf("%s on %s: %w (topology not changed)", what, s, err)
		}
	}
	return nil
}

func socketsOr(sockets []string, t *haproxy.Topology) []string {
	if len(sockets) > 0 {
		return sockets
	}
	return []string{t.Socket}
}

// drainAndDelete stops new sessions to the server, waits for the current
// ones to end, then puts it in maintenance and deletes it.
func drainAndDelete(ctx context.Context, rt *runtime.Client, backend, name string, timeout time.Duration) error {
	if err := rt.SetServerState(ctx, backend, name, "drain"); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		list, err := rt.Servers(ctx, backend)
		if err != nil {
			return err
		}
		busy := -1
		for _, s := range list {
			if s.Name == name {
				busy = s.Sessions
			}
		}
		if busy < 0 {
			return fmt.Errorf("server %s/%s not found", backend, name)
		}
		if busy == 0 {
			break
		}
		if time.Now().After(deadline) {
			rt.SetServerState(ctx, backend, name, "ready")
			return fmt.Errorf("server %s/%s still has %d sessions after %s: put back to ready", backend, name, busy, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := rt.SetServerState(ctx, backend, name, "maint"); err != nil {
		return err
	}
	return rt.DelServer(ctx, backend, name)
}

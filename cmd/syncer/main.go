// Command syncer keeps an HAProxy map equal to the user -> shard assignments
// in Redis, over the Runtime API, without reloads. See the README.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/haproxy"
	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
	"github.com/shardmap/shardmap/syncer"
)

// Exit codes.
const (
	exitOK     = 0
	exitFail   = 1
	exitConfig = 2 // bad usage or configuration, or the name is taken
)

func main() { os.Exit(run(os.Args[1:])) }

// run executes the command line args and returns the exit code. Errors
// already logged by the running syncer are not printed again.
func run(args []string) int {
	root := newRoot()
	root.SetArgs(singleDashLong(root, args))
	err := root.Execute()
	var l loggedError
	if err != nil && !errors.As(err, &l) {
		fmt.Fprintln(os.Stderr, "syncer:", err)
	}
	return exitCode(err)
}

func exitCode(err error) int {
	var u cli.UsageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &u), errors.Is(err, syncer.ErrNameTaken):
		return exitConfig
	}
	return exitFail
}

// loggedError is an error the syncer has logged already.
type loggedError struct{ error }

func (l loggedError) Unwrap() error { return l.error }

// Environment variables only the syncer reads (the shared ones are in
// internal/cli).
const (
	envConfig  = "SHARDMAP_CONFIG"
	envMapFile = "SHARDMAP_MAP_FILE"
)

// options are the syncer's settings: from its flags, the environment and
// the configuration file (resolve merges them).
type options struct {
	config                                string
	redis                                 *cli.RedisFlags
	prefix, name, listen                  string
	targets                               []string
	mapName, mapFile                      string
	logicalMap, logicalMapFile            string // routing: ids; empty: off
	flush, reconcileEvery, runtimeTimeout time.Duration
	replaceAbove, deltaMax, memoryLimitMB int
	maxDeleteShare                        float64
	fileMode, logFormat, logLevel         string
	verbose                               bool

	mode os.FileMode  // fileMode, parsed by resolve
	log  *slog.Logger // set by serve
}

// newRoot builds the syncer command: flags, their defaults (from the
// environment where one is named) and the shared conventions.
func newRoot() *cobra.Command {
	return newRootRun(func(cmd *cobra.Command, o *options) error { return o.serve(cmd) })
}

// newRootRun is newRoot with run called on the resolved options (tests
// look at them instead of starting a syncer).
func newRootRun(run func(*cobra.Command, *options) error) *cobra.Command {
	var o options
	root := &cobra.Command{
		Use:   "syncer --socket ADDR --map PATH [flags] | syncer --config FILE [flags]",
		Short: "Keep an HAProxy map equal to the user -> shard assignments in Redis, live, without reloads",
		Long: `syncer applies every change logged in Redis to HAProxy's live map over the
Runtime API (stats socket at level admin), writes the map file so a restart
or reload starts from it, and reconciles the two with Redis at start, after
HAProxy restarts and every --reconcile-every. SIGTERM and SIGINT stop it;
SIGHUP makes it check HAProxy and look for drift now.

Settings come from flags, then the environment, then --config (a topology
file's syncer: section, the file its syncer_config: names, or a file of
syncer keys; see the README), then the defaults.

Exit codes: 0 stopped by a signal, 1 failure, 2 bad usage or configuration,
or another live syncer already uses --name.`,
		Example: `  syncer --socket /run/haproxy/admin.sock --map /etc/haproxy/users.map
  syncer --config /etc/shardmap/topology.yaml
  syncer --config /etc/shardmap/topology.yaml --log-level debug --listen 127.0.0.1:9477
  syncer --redis redis://:PASSWORD@10.0.0.7:6379/0 --socket /run/haproxy/admin.sock \
      --map /etc/haproxy/users.map --listen 127.0.0.1:9477 --log-format json
  syncer --socket ipv4@127.0.0.1:9999 --map /etc/haproxy/users.map --map-file /srv/lb1/etc/haproxy/users.map
  SHARDMAP_REDIS=redis://10.0.0.7:6379/0 syncer --socket /run/haproxy/admin.sock --map /etc/haproxy/users.map -v`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.resolve(cmd); err != nil {
				return err
			}
			return run(cmd, &o)
		},
	}
	f := root.Flags()
	f.SortFlags = false
	f.StringVar(&o.config, "config", cli.Env(envConfig, ""), "configuration file: a topology (its syncer: section) or a file of syncer keys; flags and environment override it (env "+envConfig+")")
	o.redis = cli.AddRedisFlags(f)
	f.StringVar(&o.prefix, "prefix", cli.Env(cli.EnvPrefix, maps.DefaultPrefix), "Redis key prefix (env "+cli.EnvPrefix+")")
	f.StringSliceVar(&o.targets, "socket", envList(cli.EnvSocket), "HAProxy Runtime API address at level admin: a unix socket path, unix@PATH, ipv4@HOST:PORT, ipv6@[HOST]:PORT or HOST:PORT; repeat or comma-separate for several (env "+cli.EnvSocket+", comma-separated)")
	f.StringVar(&o.mapName, "map", cli.Env(cli.EnvMap, ""), "the map's path exactly as in haproxy.cfg (env "+cli.EnvMap+")")
	f.StringVar(&o.mapFile, "map-file", cli.Env(envMapFile, ""), "the map file to write, where the syncer sees it (default: --map) (env "+envMapFile+")")
	f.StringVar(&o.logicalMap, "logical-map", "", "routing: ids: also keep this logical map (its path as in haproxy.cfg) equal to the logical map in Redis, with a second syncer named NAME:logical (a routing: ids topology in --config sets it)")
	f.StringVar(&o.logicalMapFile, "logical-map-file", "", "the logical map file to write, where the syncer sees it (default: --logical-map)")
	f.StringVar(&o.name, "name", "", "name this syncer reports in Redis (default HOST:MAP)")
	f.StringVar(&o.listen, "listen", "", "address for /healthz, /readyz, /metrics and the status page at /, e.g. 127.0.0.1:9477 (off when empty)")
	f.DurationVar(&o.flush, "flush-delay", 200*time.Millisecond, "longest the map file lags the live map")
	f.IntVar(&o.replaceAbove, "replace-above", 64, "apply a batch with more set/del than this as one versioned swap")
	f.IntVar(&o.deltaMax, "delta-max", 50_000, "with a delta map (topology delta_map, HAProxy before 2.9), fold it into the map past this many entries")
	f.Float64Var(&o.maxDeleteShare, "max-delete-share", syncer.DefaultMaxDeleteShare, "refuse a full reconcile that would delete more than this share of the live map (0 to 1; 0 refuses any that deletes more than 5 entries)")
	f.DurationVar(&o.reconcileEvery, "reconcile-every", time.Minute, "how often to look for drift in Redis, the live map and the file")
	f.DurationVar(&o.runtimeTimeout, "runtime-timeout", 3*time.Second, "longest to wait for HAProxy to answer one Runtime API command before reporting it not answering")
	f.StringVar(&o.fileMode, "file-mode", "0640", "mode of a new map file (an existing one keeps its mode and owner)")
	f.IntVar(&o.memoryLimitMB, "memory-limit-mb", 0, "soft memory limit of the process in MiB: the Go collector works harder near it, it never fails (0: none, or GOMEMLIMIT from the environment); GOGC defaults to 25 here unless set")
	f.StringVar(&o.logFormat, "log-format", cli.Env(cli.EnvLogFormat, cli.LogAuto), "log format: text, json, or auto (text on a terminal, JSON otherwise) (env "+cli.EnvLogFormat+")")
	f.StringVar(&o.logLevel, "log-level", cli.Env(cli.EnvLogLevel, "info"), "least severe level logged: debug, info, warn or error (env "+cli.EnvLogLevel+")")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "same as --log-level debug: log each applied batch")
	root.RegisterFlagCompletionFunc("log-format", cobra.FixedCompletions(cli.LogFormats, cobra.ShellCompDirectiveNoFileComp))
	root.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions(cli.Levels, cobra.ShellCompDirectiveNoFileComp))
	cli.Conventions(root)
	return root
}

// envList is the comma-separated list in environment variable key, blanks
// around items and empty items dropped; nil when unset.
func envList(key string) []string {
	var out []string
	for _, v := range strings.Split(cli.Env(key, ""), ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// resolve merges the configuration file into the options (flag >
// environment > file > default) and checks the result.
func (o *options) resolve(cmd *cobra.Command) error {
	if o.config != "" {
		c, err := haproxy.LoadSyncerConfig(o.config)
		if err != nil {
			return cli.UsageError{Err: fmt.Errorf("--config: %w", err)}
		}
		o.applyFile(cmd.Flags().Changed, c)
	}
	if o.verbose {
		o.logLevel = "debug"
	}
	if o.memoryLimitMB < 0 {
		return cli.Usagef("--memory-limit-mb %d: want 0 (none) or a positive number of MiB", o.memoryLimitMB)
	}
	mode, err := haproxy.ParseFileMode(o.fileMode)
	if err != nil {
		return cli.Usagef("--file-mode %q: want an octal mode such as 0640", o.fileMode)
	}
	o.mode = mode
	if o.maxDeleteShare < 0 || o.maxDeleteShare > 1 {
		return cli.Usagef("--max-delete-share %v: want a share from 0 to 1", o.maxDeleteShare)
	}
	if len(o.targets) == 0 || o.mapName == "" {
		return cli.Usagef("--socket and --map are required, as flags, in the environment or in --config (see 'syncer --help')")
	}
	seen := map[string]bool{}
	for _, a := range o.targets {
		if err := haproxy.CheckRuntimeAddr(a); err != nil {
			return cli.UsageError{Err: fmt.Errorf("--socket: %w", err)}
		}
		if seen[a] {
			return cli.Usagef("--socket %q is given twice", a)
		}
		seen[a] = true
	}
	if o.mapFile == "" {
		o.mapFile = o.mapName
	}
	if o.logicalMapFile != "" && o.logicalMap == "" {
		return cli.Usagef("--logical-map-file needs --logical-map")
	}
	if o.logicalMap != "" {
		if o.logicalMap == o.mapName {
			return cli.Usagef("--logical-map %q: must differ from --map", o.logicalMap)
		}
		if o.logicalMapFile == "" {
			o.logicalMapFile = o.logicalMap
		}
		if o.logicalMapFile == o.mapFile {
			return cli.Usagef("--logical-map-file %q: must differ from the map file", o.logicalMapFile)
		}
	}
	if o.name == "" {
		host, _ := os.Hostname()
		o.name = host + ":" + o.mapName
	}
	return nil
}

// applyFile takes each setting c has from the file unless its flag was
// given (changed reports that) or its environment variable is set.
func (o *options) applyFile(changed func(flag string) bool, c *haproxy.SyncerConfig) {
	take := func(flag, env string, set bool, apply func()) {
		if set && !changed(flag) && (env == "" || cli.Env(env, "") == "") {
			apply()
		}
	}
	take("redis", cli.EnvRedis, c.Redis != "", func() { o.redis.URL = c.Redis })
	take("redis-ca", cli.EnvRedisCA, c.RedisCA != "", func() { o.redis.TLS.CA = c.RedisCA })
	take("redis-cert", cli.EnvRedisCert, c.RedisCert != "", func() { o.redis.TLS.Cert = c.RedisCert })
	take("redis-key", cli.EnvRedisKey, c.RedisKey != "", func() { o.redis.TLS.Key = c.RedisKey })
	take("prefix", cli.EnvPrefix, c.Prefix != "", func() { o.prefix = c.Prefix })
	take("socket", cli.EnvSocket, len(c.Targets) > 0, func() { o.targets = append([]string(nil), c.Targets...) })
	take("map", cli.EnvMap, c.Map != "", func() { o.mapName = c.Map })
	take("map-file", envMapFile, c.MapFile != "", func() { o.mapFile = c.MapFile })
	take("logical-map", "", c.LogicalMap != "", func() { o.logicalMap = c.LogicalMap })
	take("logical-map-file", "", c.LogicalMapFile != "", func() { o.logicalMapFile = c.LogicalMapFile })
	take("name", "", c.Name != "", func() { o.name = c.Name })
	take("listen", "", c.Listen != "", func() { o.listen = c.Listen })
	take("flush-delay", "", c.FlushDelay != 0, func() { o.flush = c.FlushDelay })
	take("replace-above", "", c.ReplaceAbove != 0, func() { o.replaceAbove = c.ReplaceAbove })
	take("delta-max", "", c.DeltaMax != 0, func() { o.deltaMax = c.DeltaMax })
	take("max-delete-share", "", c.MaxDeleteShare != nil, func() { o.maxDeleteShare = *c.MaxDeleteShare })
	take("reconcile-every", "", c.ReconcileEvery != 0, func() { o.reconcileEvery = c.ReconcileEvery })
	take("runtime-timeout", "", c.RuntimeTimeout != 0, func() { o.runtimeTimeout = c.RuntimeTimeout })
	take("file-mode", "", c.FileMode != "", func() { o.fileMode = c.FileMode })
	take("log-format", cli.EnvLogFormat, c.LogFormat != "", func() { o.logFormat = c.LogFormat })
	// -v is --log-level debug: it beats the file too.
	take("log-level", cli.EnvLogLevel, c.LogLevel != "" && !o.verbose, func() { o.logLevel = c.LogLevel })
}

// syncerConfig maps the resolved options onto syncer.Config.
func syncerConfig(o options) (syncer.Config, error) {
	return syncer.Config{
		Name: o.name, MapName: o.mapName, MapFile: o.mapFile, Targets: o.targets, FlushDelay: o.flush, ReplaceAbove: o.replaceAbove, DeltaMax: o.deltaMax, Logger: o.log,
		MaxDeleteShare: o.maxDeleteShare, ReconcileEvery: o.reconcileEvery, FileMode: o.mode,
	}, nil
}

// logicalConfig is the configuration of the second syncer of routing: ids,
// which keeps the logical map: cfg's with the logical map's name and file,
// the name NAME:logical, and no metrics (the Metrics series are per target,
// which both syncers share; its status is exported by its own collector).
func logicalConfig(o options, cfg syncer.Config) syncer.Config {
	cfg.Name = o.name + maps.LogicalSuffix
	cfg.MapName, cfg.MapFile = o.logicalMap, o.logicalMapFile
	cfg.Metrics = nil
	return cfg
}

// singleDashLong rewrites "-flag" and "-flag=value", which the standard flag
// package took and earlier syncers were run with, to "--flag": for the
// root's long flags only, and only before a "--".
func singleDashLong(root *cobra.Command, args []string) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if len(name) > 1 && root.Flags().Lookup(name) != nil {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}

// serve runs the syncer on the resolved options until a signal stops it.
func (o *options) serve(cmd *cobra.Command) error {
	log, err := cli.NewLogger(cmd.ErrOrStderr(), o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	o.log = log
	syncer.TuneMemory(int64(o.memoryLimitMB) << 20)
	cfg, err := syncerConfig(*o)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	rdb, store, err := o.redis.Store(false, o.prefix)
	if err != nil { // a UsageError, the URL redacted
		return err
	}
	defer rdb.Close()
	// Metrics only when they are served.
	var reg *prometheus.Registry
	if o.listen != "" {
		reg = prometheus.NewRegistry()
		if cfg.Metrics, err = syncer.NewMetrics(reg); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	dial := func(addr string) (syncer.Runtime, error) { return runtime.New(addr, o.runtimeTimeout) }
	s, err := syncer.New(cfg, store, dial)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	// routing: ids: a second syncer keeps the logical map.
	var ls *syncer.Syncer
	var lstore *maps.Store
	if o.logicalMap != "" {
		lstore = maps.NewStore(rdb, maps.LogicalPrefix(o.prefix))
		if ls, err = syncer.New(logicalConfig(*o, cfg), lstore, dial); err != nil {
			return cli.UsageError{Err: fmt.Errorf("logical map: %w", err)}
		}
	}
	src := statusSource(s)
	if ls != nil {
		src = pair{main: s, logical: ls}
	}

	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// SIGHUP: there is no configuration to reload; look for drift now.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info("SIGHUP: checking HAProxy and looking for drift now")
			s.Kick()
			if ls != nil {
				ls.Kick()
			}
		}
	}()
	if o.listen != "" {
		ln, err := net.Listen("tcp", o.listen)
		if err != nil {
			return cli.UsageError{Err: fmt.Errorf("--listen: %w", err)}
		}
		if err := registerCollectors(reg, s, o.mapName); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		if ls != nil {
			if err := reg.Register(newStatusCollector(ls, o.logicalMap)); err != nil {
				return fmt.Errorf("metrics: %w", err)
			}
		}
		page := &statusPage{name: o.name, mapPath: o.mapName, targets: o.targets, s: src, log: store, logger: log, build: cli.ReadBuild()}
		srv := &http.Server{Handler: handler(src, reg, page), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	log.Info("syncer starting", "name", o.name, "targets", o.targets, "map", o.mapName, "map_file", o.mapFile, "logical_map", o.logicalMap, "logical_map_file", o.logicalMapFile, "config", o.config, "prefix", o.prefix, "redis", cli.RedactURL(o.redis.URL))
	if ls == nil {
		if err := s.Run(ctx); err != nil {
			log.Error("syncer failed", "err", err)
			return loggedError{err}
		}
		return nil
	}
	seed := func(ctx context.Context) error { return seedLogical(ctx, lstore, o.logicalMapFile, log) }
	if err := runBoth(ctx, s, ls, seed, log); err != nil {
		log.Error("syncer failed", "err", err)
		return loggedError{err}
	}
	return nil
}

// handler serves /healthz (the process is up) and /readyz (the live map is
// loaded and the last step succeeded), both with the status as JSON
// (syncer.Status's snake_case fields), /metrics for Prometheus from reg,
// and the status page at /.
//
// In routing: ids (s a pair) the JSON also has the logical map syncer's
// status under "logical", and the top level's ready, state and problem
// cover both syncers (see pair.Status).
func handler(s statusSource, reg *prometheus.Registry, page http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", page)
	write := func(w http.ResponseWriter, ok bool) {
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		h := health{Status: s.Status()}
		if p, ok := s.(pair); ok {
			l := p.logical.Status()
			h.Logical = &l
		}
		json.NewEncoder(w).Encode(h)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { write(w, true) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { write(w, s.Status().Ready) })
	return mux
}

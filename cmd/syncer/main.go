// Command syncer keeps an HAProxy map equal to the user -> shard assignments
// in Redis, over the Runtime API, without reloads. See the README.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

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

// options are the syncer's flags.
type options struct {
	redis                                 *cli.RedisFlags
	prefix, socket, mapPath, name, listen string
	flush, reconcileEvery, runtimeTimeout time.Duration
	replaceAbove                          int
	maxDeleteShare                        float64
	fileMode, logFormat, logLevel         string
	verbose                               bool
}

// newRoot builds the syncer command: flags, their defaults (from the
// environment where one is named) and the shared conventions.
func newRoot() *cobra.Command {
	var o options
	root := &cobra.Command{
		Use:   "syncer --socket SOCKET --map PATH [flags]",
		Short: "Keep an HAProxy map equal to the user -> shard assignments in Redis, live, without reloads",
		Long: `syncer applies every change logged in Redis to HAProxy's live map over the
Runtime API (stats socket at level admin), writes the map file so a restart
or reload starts from it, and reconciles the two with Redis at start, after
HAProxy restarts and every --reconcile-every. SIGTERM and SIGINT stop it;
SIGHUP makes it check HAProxy and look for drift now.

Exit codes: 0 stopped by a signal, 1 failure, 2 bad usage or configuration,
or another live syncer already uses --name.`,
		Example: `  syncer --socket /run/haproxy/admin.sock --map /etc/haproxy/users.map
  syncer --redis redis://:PASSWORD@10.0.0.7:6379/0 --socket /run/haproxy/admin.sock \
      --map /etc/haproxy/users.map --listen 127.0.0.1:9477 --log-format json
  SHARDMAP_REDIS=redis://10.0.0.7:6379/0 syncer --socket /run/haproxy/admin.sock --map /etc/haproxy/users.map -v`,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.serve(cmd) },
	}
	f := root.Flags()
	f.SortFlags = false
	o.redis = cli.AddRedisFlags(f)
	f.StringVar(&o.prefix, "prefix", cli.Env(cli.EnvPrefix, maps.DefaultPrefix), "Redis key prefix (env "+cli.EnvPrefix+")")
	f.StringVar(&o.socket, "socket", cli.Env(cli.EnvSocket, ""), "HAProxy stats socket at level admin (env "+cli.EnvSocket+")")
	f.StringVar(&o.mapPath, "map", cli.Env(cli.EnvMap, ""), "map path exactly as in haproxy.cfg; also the file written (env "+cli.EnvMap+")")
	f.StringVar(&o.name, "name", "", "name this syncer reports in Redis (default HOST:MAP)")
	f.StringVar(&o.listen, "listen", "", "address for /healthz, /readyz and /metrics, e.g. 127.0.0.1:9477 (off when empty)")
	f.DurationVar(&o.flush, "flush-delay", 200*time.Millisecond, "longest the map file lags the live map")
	f.IntVar(&o.replaceAbove, "replace-above", 64, "apply a batch with more set/del than this as one versioned swap")
	f.Float64Var(&o.maxDeleteShare, "max-delete-share", syncer.DefaultMaxDeleteShare, "refuse a full reconcile that would delete more than this share of the live map (0 to 1; 0 refuses any that deletes more than 5 entries)")
	f.DurationVar(&o.reconcileEvery, "reconcile-every", time.Minute, "how often to look for drift in Redis, the live map and the file")
	f.DurationVar(&o.runtimeTimeout, "runtime-timeout", 3*time.Second, "longest to wait for HAProxy to answer one Runtime API command before reporting it not answering")
	f.StringVar(&o.fileMode, "file-mode", "0640", "mode of a new map file (an existing one keeps its mode and owner)")
	f.StringVar(&o.logFormat, "log-format", cli.Env(cli.EnvLogFormat, cli.LogAuto), "log format: text, json, or auto (text on a terminal, JSON otherwise) (env "+cli.EnvLogFormat+")")
	f.StringVar(&o.logLevel, "log-level", cli.Env(cli.EnvLogLevel, "info"), "least severe level logged: debug, info, warn or error (env "+cli.EnvLogLevel+")")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "same as --log-level debug: log each applied batch")
	root.RegisterFlagCompletionFunc("log-format", cobra.FixedCompletions(cli.LogFormats, cobra.ShellCompDirectiveNoFileComp))
	root.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions(cli.Levels, cobra.ShellCompDirectiveNoFileComp))
	cli.Conventions(root)
	return root
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

// serve checks the options, then runs the syncer until a signal stops it.
func (o *options) serve(cmd *cobra.Command) error {
	mode, err := strconv.ParseUint(o.fileMode, 8, 32)
	if err != nil || mode > 0o777 {
		return cli.Usagef("--file-mode %q: want an octal mode such as 0640", o.fileMode)
	}
	if o.maxDeleteShare < 0 || o.maxDeleteShare > 1 {
		return cli.Usagef("--max-delete-share %v: want a share from 0 to 1", o.maxDeleteShare)
	}
	if o.verbose {
		o.logLevel = "debug"
	}
	log, err := cli.NewLogger(cmd.ErrOrStderr(), o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	if o.socket == "" || o.mapPath == "" {
		return cli.Usagef("--socket and --map are required (see 'syncer --help')")
	}
	if o.name == "" {
		host, _ := os.Hostname()
		o.name = host + ":" + o.mapPath
	}
	rdb, store, err := o.redis.Store(false, o.prefix)
	if err != nil { // a UsageError, the URL redacted
		return err
	}
	defer rdb.Close()
	rt, err := runtime.New(o.socket, o.runtimeTimeout)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	defer rt.Close()
	s, err := syncer.New(syncer.Config{
		Name: o.name, MapPath: o.mapPath, Socket: o.socket, FlushDelay: o.flush, ReplaceAbove: o.replaceAbove, Logger: log,
		MaxDeleteShare: o.maxDeleteShare, ReconcileEvery: o.reconcileEvery, FileMode: os.FileMode(mode),
	}, store, rt)
	if err != nil {
		return cli.UsageError{Err: err}
	}
	// Every map write checks the lease right before it is sent.
	rt.SetWriteGuard(s.WriteAllowed)

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
		}
	}()
	if o.listen != "" {
		ln, err := net.Listen("tcp", o.listen)
		if err != nil {
			return cli.UsageError{Err: fmt.Errorf("--listen: %w", err)}
		}
		srv := &http.Server{Handler: health(s, o.mapPath), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	log.Info("syncer starting", "name", o.name, "socket", o.socket, "map", o.mapPath, "prefix", o.prefix, "redis", cli.RedactURL(o.redis.URL))
	if err := s.Run(ctx); err != nil {
		log.Error("syncer failed", "err", err)
		return loggedError{err}
	}
	return nil
}

// health serves /healthz (the process is up) and /readyz (the live map is
// loaded and the last step succeeded), both with the status as JSON, and
// /metrics for Prometheus.
func health(s *syncer.Syncer, mapPath string) http.Handler {
	mux := http.NewServeMux()
	reg := prometheus.NewRegistry()
	reg.MustRegister(newStatusCollector(s, mapPath))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	write := func(w http.ResponseWriter, ok bool) {
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(s.Status())
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { write(w, true) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { write(w, s.Status().Ready) })
	return mux
}

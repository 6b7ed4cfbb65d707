// Command syncer keeps an HAProxy map equal to the user -> shard assignments
// in Redis, over the Runtime API, without reloads. See the README.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shardmap/shardmap/internal/cli"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
	"github.com/shardmap/shardmap/syncer"
)

// Exit codes.
const (
	exitOK     = 0
	exitFail   = 1
	exitConfig = 2
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("syncer", flag.ContinueOnError)
	host, _ := os.Hostname()
	var (
		redisURL = fs.String("redis", cli.Env(cli.EnvRedis, cli.DefaultRedis), "Redis URL (env "+cli.EnvRedis+")")
		prefix   = fs.String("prefix", cli.Env(cli.EnvPrefix, maps.DefaultPrefix), "Redis key prefix (env "+cli.EnvPrefix+")")
		socket   = fs.String("socket", cli.Env(cli.EnvSocket, ""), "HAProxy stats socket at level admin (env "+cli.EnvSocket+")")
		mapPath  = fs.String("map", cli.Env(cli.EnvMap, ""), "map path exactly as in haproxy.cfg; also the file written (env "+cli.EnvMap+")")
		name     = fs.String("name", "", "name this syncer reports in Redis (default HOST:MAP)")
		listen   = fs.String("listen", "", "address for /healthz, /readyz and /metrics, e.g. 127.0.0.1:9477 (off when empty)")
		flush    = fs.Duration("flush-delay", 200*time.Millisecond, "longest the map file lags the live map")
		replace  = fs.Int("replace-above", 64, "apply a batch with more set/del than this as one versioned swap")
		maxDel   = fs.Float64("max-delete-share", syncer.DefaultMaxDeleteShare, "refuse a full reconcile that would delete more than this share of the live map (0 to 1; 0 refuses any that deletes more than 5 entries)")
		recEvery = fs.Duration("reconcile-every", time.Minute, "how often to look for drift in Redis, the live map and the file")
		rtTime   = fs.Duration("runtime-timeout", 3*time.Second, "longest to wait for HAProxy to answer one Runtime API command before reporting it not answering")
		fileMode = fs.String("file-mode", "0640", "mode of a new map file (an existing one keeps its mode and owner)")
		verbose  = fs.Bool("v", false, "log each applied batch")
	)
	// The default shown by --help and in usage errors must not carry the
	// password that SHARDMAP_REDIS may hold.
	fs.Lookup("redis").DefValue = cli.RedactURL(fs.Lookup("redis").DefValue)
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitConfig
	}
	mode, err := strconv.ParseUint(*fileMode, 8, 32)
	if err != nil || mode > 0o777 {
		fmt.Fprintf(os.Stderr, "syncer: --file-mode %q: want an octal mode such as 0640\n", *fileMode)
		return exitConfig
	}
	if *maxDel < 0 || *maxDel > 1 {
		fmt.Fprintf(os.Stderr, "syncer: --max-delete-share %v: want a share from 0 to 1\n", *maxDel)
		return exitConfig
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *socket == "" || *mapPath == "" {
		fmt.Fprintln(os.Stderr, "syncer: --socket and --map are required")
		return exitConfig
	}
	if *name == "" {
		*name = host + ":" + *mapPath
	}
	rdb, err := cli.Redis(*redisURL, false)
	if err != nil { // cli.Redis's errors carry the URL redacted
		fmt.Fprintln(os.Stderr, "syncer:", err)
		return exitConfig
	}
	defer rdb.Close()
	rt, err := runtime.New(*socket, *rtTime)
	if err != nil {
		fmt.Fprintln(os.Stderr, "syncer:", err)
		return exitConfig
	}
	defer rt.Close()
	s, err := syncer.New(syncer.Config{
		Name: *name, MapPath: *mapPath, Socket: *socket, FlushDelay: *flush, ReplaceAbove: *replace, Logger: log,
		MaxDeleteShare: *maxDel, ReconcileEvery: *recEvery, FileMode: os.FileMode(mode),
	}, maps.NewStore(rdb, *prefix), rt)
	if err != nil {
		fmt.Fprintln(os.Stderr, "syncer:", err)
		return exitConfig
	}
	// Every map write checks the lease right before it is sent.
	rt.SetWriteGuard(s.WriteAllowed)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
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
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "syncer: --listen:", err)
			return exitConfig
		}
		srv := &http.Server{Handler: health(s, *mapPath), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	log.Info("syncer starting", "name", *name, "socket", *socket, "map", *mapPath, "prefix", *prefix, "redis", cli.RedactURL(*redisURL))
	if err := s.Run(ctx); err != nil {
		log.Error("syncer failed", "err", err)
		if errors.Is(err, syncer.ErrNameTaken) {
			return exitConfig
		}
		return exitFail
	}
	return exitOK
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

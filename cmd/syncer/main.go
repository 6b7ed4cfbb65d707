// Command syncer keeps an HAProxy map equal to the user -> shard assignments
// in Redis, over the Runtime API, without reloads. See the README.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
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
		maxDel   = fs.Float64("max-delete-share", 0.10, "refuse a full reconcile that would delete more than this share of the live map")
		recEvery = fs.Duration("reconcile-every", time.Minute, "how often to look for drift in Redis, the live map and the file")
		verbose  = fs.Bool("v", false, "log each applied batch")
	)
	if err := fs.Parse(args); err != nil {
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
	if err != nil {
		fmt.Fprintln(os.Stderr, "syncer:", err)
		return exitConfig
	}
	defer rdb.Close()
	rt, err := runtime.New(*socket, 10*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "syncer:", err)
		return exitConfig
	}
	defer rt.Close()
	s, err := syncer.New(syncer.Config{
		Name: *name, MapPath: *mapPath, Socket: *socket, FlushDelay: *flush, ReplaceAbove: *replace, Logger: log,
		MaxDeleteShare: *maxDel, ReconcileEvery: *recEvery,
	}, maps.NewStore(rdb, *prefix), rt)
	if err != nil {
		fmt.Fprintln(os.Stderr, "syncer:", err)
		return exitConfig
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
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
	log.Info("syncer starting", "name", *name, "socket", *socket, "map", *mapPath, "prefix", *prefix)
	if err := s.Run(ctx); err != nil {
		log.Error("syncer failed", "err", err)
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

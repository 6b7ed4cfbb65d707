package suite

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // the child syncer's CPU profile, on loopback only
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/runtime"
	"github.com/shardmap/shardmap/syncer"
)

// RunSyncer is the child mode "shardmap-bench syncer": the real syncer
// (syncer.New with runtime.New as the dialer) in a process of its own, so
// that its memory is its own (/proc/PID/status) and its CPU profile is
// served at /debug/pprof/ on -pprof (loopback). SIGTERM stops it.
func RunSyncer(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("syncer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	redisAddr := fs.String("redis", "", "redis host:port")
	socket := fs.String("socket", "", "HAProxy runtime API socket")
	mapName := fs.String("map", "", "the map as HAProxy names it")
	pprofAddr := fs.String("pprof", "", "loopback address for /debug/pprof/")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *redisAddr == "" || *socket == "" || *mapName == "" {
		return errors.New("syncer: -redis, -socket and -map are required")
	}
	if *pprofAddr != "" {
		host, _, err := net.SplitHostPort(*pprofAddr)
		if err != nil || net.ParseIP(host) == nil || !net.ParseIP(host).IsLoopback() {
			return fmt.Errorf("syncer: -pprof %q: want a loopback host:port", *pprofAddr)
		}
		ln, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return fmt.Errorf("syncer: pprof: %w", err)
		}
		go http.Serve(ln, nil)
	}
	syncer.TuneMemory(0) // as cmd/syncer does by default
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
	defer rdb.Close()
	// SHARDMAP_BENCH_SYNCER_LOG=FILE: the syncer's log, at level info, goes
	// to FILE (to see what it did during a scenario); by default only its
	// warnings, to the bench's memory.
	var log *slog.Logger
	if path := os.Getenv("SHARDMAP_BENCH_SYNCER_LOG"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("syncer: SHARDMAP_BENCH_SYNCER_LOG: %w", err)
		}
		defer f.Close()
		log = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
	} else {
		log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	s, err := syncer.New(syncer.Config{Name: "bench", MapName: *mapName, Targets: []string{*socket}, Logger: log},
		maps.NewStore(rdb, ""), func(addr string) (syncer.Runtime, error) { return runtime.New(addr, 30*time.Second) })
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := s.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// startSyncer runs this executable's syncer mode on cpu.
func startSyncer(redisAddr, socket, mapName, pprofAddr string, cpu int) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("syncer: %w", err)
	}
	return start("syncer", cpu, []string{self, "syncer", "-redis", redisAddr, "-socket", socket, "-map", mapName, "-pprof", pprofAddr})
}

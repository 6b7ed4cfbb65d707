// Command demo-backends runs the demo's application servers on loopback: for
// each shard, several servers, each of which serves a login page and, once
// the user is logged in, a page saying which shard and server answered.
//
// Server i listens on base-port+i and belongs to shard i/servers, as server
// i%servers: with the defaults, shard0 is ports 8000-8002, shard5 8015-8017.
//
// With --ids (make demo ROUTING=ids) a user who logs in gets a real ID
// (docs/IDS.md), made once by the generator script in Redis and kept there
// (hash PREFIX:demo:ids, demo user -> ID): user u's ID is on a logical shard
// in the middle of shard u%shards' block of the topology's spread, and the
// cookie carries the ID. The page shows the ID and its parts.
//
// Each shard keeps its users' data in a tiny key-value store (/kv, see
// kv.go), so that mapctl move has data to move; `demo-backends copy`,
// `verify` and `cleanup` are the move's hooks for it, through the admin
// endpoint --admin:
//
//	mapctl move 3 --to shard1 --freeze --copy-cmd 'bin/demo-backends copy' \
//	    --verify-cmd 'bin/demo-backends verify' --cleanup-cmd 'bin/demo-backends cleanup'
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/ids"
	"github.com/shardmap/shardmap/maps"
)

const password = "sam"

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><title>shardmap demo</title></head><body>
{{if .User}}
<h1>Hello, user {{.User}}</h1>
<p id="served">user {{.User}} on {{.Shard}}, server {{.Server}}</p>
<p id="data">your data on {{.Shard}}: {{if .Data}}{{range $k, $v := .Data}}{{$k}}={{$v}} {{end}}{{else}}none (PUT /kv/KEY to keep some){{end}}</p>
{{with .ID}}<p id="id">ID {{.ID}}: made {{.Time}}, logical shard {{.Logical}}, sequence {{.Sequence}}</p>{{end}}
<form method="post" action="/logout"><button id="logout">Log out</button></form>
{{else}}
<h1>shardmap demo: log in</h1>
<p id="served">login page on {{.Shard}}, server {{.Server}}</p>
{{if .Error}}<p id="error">{{.Error}}</p>{{end}}
<form method="post" action="/login">
<label>User (0-{{.MaxUser}}) <input id="user" name="user"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="login" type="submit">Log in</button>
</form>
{{end}}
</body></html>
`))

type server struct {
	shard   string
	index   int
	maxUser int
	ids     *demoIDs // nil: the cookie is the user number
	kv      *kvStore // the shards' data, shared by every server
}

// demoIDs gives each demo user one real ID, kept in Redis.
type demoIDs struct {
	rdb    *redis.Client
	gen    *ids.Generator
	key    string // hash: demo user -> ID
	shards int
}

// idFor returns user u's ID, making it on first use. Concurrent first
// logins keep the first ID stored (HSETNX).
func (d *demoIDs) idFor(ctx context.Context, u int) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	field := strconv.Itoa(u)
	if id, err := d.rdb.HGet(ctx, d.key, field).Result(); err == nil {
		return id, nil
	} else if !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("redis get the ID of user %d: %w", u, err)
	}
	n := d.gen.Layout().LogicalShards()
	logical := (2*(u%d.shards) + 1) * n / (2 * d.shards) // the middle of shard u%shards' block
	id, err := d.gen.New(ctx, logical)
	if err != nil {
		return "", fmt.Errorf("make an ID for user %d: %w", u, err)
	}
	if err := d.rdb.HSetNX(ctx, d.key, field, strconv.FormatInt(id, 10)).Err(); err != nil {
		return "", fmt.Errorf("redis keep the ID of user %d: %w", u, err)
	}
	return d.rdb.HGet(ctx, d.key, field).Result()
}

// idParts is what the page shows of an ID.
type idParts struct {
	ID, Time          string
	Logical, Sequence int
}

func (s server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	data := map[string]any{"Shard": s.shard, "Server": s.index, "MaxUser": s.maxUser}
	switch {
	case r.URL.Path == "/healthz":
		fmt.Fprintln(w, "ok")
		return
	case r.URL.Path == "/kv" || strings.HasPrefix(r.URL.Path, "/kv/"):
		s.serveKV(w, r)
		return
	case r.URL.Path == "/login" && r.Method == http.MethodPost:
		u, err := strconv.Atoi(r.FormValue("user"))
		if err != nil || u < 0 || u > s.maxUser || r.FormValue("password") != password {
			data["Error"] = fmt.Sprintf("unknown user or wrong password (users 0-%d, password %q)", s.maxUser, password)
			w.WriteHeader(http.StatusUnauthorized)
			page.Execute(w, data)
			return
		}
		value := strconv.Itoa(u)
		if s.ids != nil {
			if value, err = s.ids.idFor(r.Context(), u); err != nil {
				slog.Error("demo login", "user", u, "err", err)
				http.Error(w, "cannot make an ID: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		var sid [16]byte
		rand.Read(sid[:])
		http.SetCookie(w, &http.Cookie{Name: "user", Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
		http.SetCookie(w, &http.Cookie{Name: "session", Value: hex.EncodeToString(sid[:]), Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	case r.URL.Path == "/logout" && r.Method == http.MethodPost:
		for _, n := range []string{"user", "session"} {
			http.SetCookie(w, &http.Cookie{Name: n, Value: "", Path: "/", MaxAge: -1})
		}
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if c, err := r.Cookie("user"); err == nil {
		data["User"] = c.Value
		if d, err := s.kv.user(s.shard, c.Value); err == nil {
			data["Data"] = d
		}
		if s.ids != nil {
			if _, p, err := ids.Parse(c.Value); err == nil {
				data["ID"] = idParts{ID: c.Value, Time: p.Time(ids.Default).Format(time.RFC3339Nano), Logical: p.Logical, Sequence: p.Sequence}
			}
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Served-By", fmt.Sprintf("%s/%d", s.shard, s.index))
	page.Execute(w, data)
}

func main() {
	if len(os.Args) > 1 {
		switch verb := os.Args[1]; verb {
		case "copy", "verify", "cleanup":
			os.Exit(hookMain(verb, os.Args[2:], os.Stdout, os.Stderr))
		case "load":
			os.Exit(loadMain(os.Args[2:], os.Stdout, os.Stderr))
		}
	}
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: demo-backends [flags]\n"+
			"       demo-backends copy|verify|cleanup [--admin HOST:PORT]   (mapctl move hooks; -h for theirs)\n"+
			"       demo-backends load --users U1,U2,... [--rate N] [--duration D]   (bounded load through HAProxy; -h for its flags)\n")
		flag.PrintDefaults()
	}
	var (
		host     = flag.String("host", "127.0.0.1", "address to listen on (loopback)")
		basePort = flag.Int("base-port", 8000, "port of the first server")
		shards   = flag.Int("shards", 6, "number of shards (shard0..)")
		servers  = flag.Int("servers", 3, "servers per shard")
		users    = flag.Int("users", 6, "users 0..N-1 may log in")
		spare    = flag.String("spare", "", "also run one spare server, on the next port, for this shard (to try add-server)")
		withIDs  = flag.Bool("ids", false, "routing: ids: give each user a real ID (made in Redis, docs/IDS.md) and put it in the cookie")
		redisURL = flag.String("redis", "redis://127.0.0.1:6379/0", "Redis URL, with --ids")
		prefix   = flag.String("prefix", maps.DefaultPrefix, "Redis key prefix, with --ids")
		admin    = flag.String("admin", "", "serve the admin endpoint the move hooks call (demo-backends copy|verify|cleanup) on this loopback HOST:PORT; off when empty (make demo: "+DefaultAdmin+")")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *admin != "" {
		if err := checkLoopback(*admin); err != nil {
			log.Error("demo backends", "err", err)
			os.Exit(2)
		}
	}
	var shardNames []string
	for i := 0; i < *shards; i++ {
		shardNames = append(shardNames, fmt.Sprintf("shard%d", i))
	}
	if *spare != "" {
		shardNames = append(shardNames, *spare)
	}
	kv := newKVStore(shardNames)
	var demo *demoIDs
	if *withIDs {
		opt, err := redis.ParseURL(*redisURL)
		if err != nil {
			log.Error("demo backends: --redis", "err", err)
			os.Exit(2)
		}
		rdb := redis.NewClient(opt)
		defer rdb.Close()
		gen, err := ids.NewGenerator(rdb, *prefix, ids.Default)
		if err != nil {
			log.Error("demo backends: ID generator", "err", err)
			os.Exit(2)
		}
		demo = &demoIDs{rdb: rdb, gen: gen, key: *prefix + ":demo:ids", shards: *shards}
	}
	var srvs []*http.Server
	n := *shards * *servers
	if *spare != "" {
		n++
	}
	for i := 0; i < n; i++ {
		addr := net.JoinHostPort(*host, strconv.Itoa(*basePort+i))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Error("demo backend cannot listen", "addr", addr, "err", err)
			os.Exit(1)
		}
		h := server{shard: fmt.Sprintf("shard%d", i / *servers), index: i % *servers, maxUser: *users - 1, ids: demo, kv: kv}
		if i == *shards**servers { // the spare
			h.shard, h.index = *spare, *servers
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		srvs = append(srvs, srv)
		go srv.Serve(ln)
	}
	if *admin != "" {
		ln, err := net.Listen("tcp", *admin)
		if err != nil {
			log.Error("demo backends: admin endpoint cannot listen", "addr", *admin, "err", err)
			os.Exit(1)
		}
		srv := &http.Server{Handler: adminHandler(kv), ReadHeaderTimeout: 5 * time.Second}
		srvs = append(srvs, srv)
		go srv.Serve(ln)
		log.Info("demo backends admin endpoint up", "addr", *admin)
	}
	log.Info("demo backends up", "servers", n, "first", net.JoinHostPort(*host, strconv.Itoa(*basePort)))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range srvs {
		s.Shutdown(sctx)
	}
}

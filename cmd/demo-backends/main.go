// Command demo-backends runs the demo's application servers on loopback: for
// each shard, several servers, each of which serves a login page and, once
// the user is logged in, a page saying which shard and server answered.
//
// Server i listens on base-port+i and belongs to shard i/servers, as server
// i%servers: with the defaults, shard0 is ports 8000-8002, shard5 8015-8017.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

const password = "sam"

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><title>shardmap demo</title></head><body>
{{if .User}}
<h1>Hello, user {{.User}}</h1>
<p id="served">user {{.User}} on {{.Shard}}, server {{.Server}}</p>
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
}

func (s server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	data := map[string]any{"Shard": s.shard, "Server": s.index, "MaxUser": s.maxUser}
	switch {
	case r.URL.Path == "/healthz":
		fmt.Fprintln(w, "ok")
		return
	case r.URL.Path == "/login" && r.Method == http.MethodPost:
		u, err := strconv.Atoi(r.FormValue("user"))
		if err != nil || u < 0 || u > s.maxUser || r.FormValue("password") != password {
			data["Error"] = fmt.Sprintf("unknown user or wrong password (users 0-%d, password %q)", s.maxUser, password)
			w.WriteHeader(http.StatusUnauthorized)
			page.Execute(w, data)
			return
		}
		var sid [16]byte
		rand.Read(sid[:])
		http.SetCookie(w, &http.Cookie{Name: "user", Value: strconv.Itoa(u), Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
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
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Served-By", fmt.Sprintf("%s/%d", s.shard, s.index))
	page.Execute(w, data)
}

func main() {
	var (
		host     = flag.String("host", "127.0.0.1", "address to listen on (loopback)")
		basePort = flag.Int("base-port", 8000, "port of the first server")
		shards   = flag.Int("shards", 6, "number of shards (shard0..)")
		servers  = flag.Int("servers", 3, "servers per shard")
		users    = flag.Int("users", 6, "users 0..N-1 may log in")
		spare    = flag.String("spare", "", "also run one spare server, on the next port, for this shard (to try add-server)")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
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
		h := server{shard: fmt.Sprintf("shard%d", i / *servers), index: i % *servers, maxUser: *users - 1}
		if i == *shards**servers { // the spare
			h.shard, h.index = *spare, *servers
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		srvs = append(srvs, srv)
		go srv.Serve(ln)
	}
	log.Info("demo backends up", "servers", len(srvs), "first", net.JoinHostPort(*host, strconv.Itoa(*basePort)))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range srvs {
		s.Shutdown(sctx)
	}
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The demo's per-user data: each shard has a tiny key-value store, shared by
// that shard's servers and kept in the memory of this process, so that
// moving a user between shards (mapctl move) has data to move. A request
// reads and writes the data of the user its cookie names, on the shard of
// the server HAProxy picked:
//
//	PUT /kv/KEY (body: the value)  -> 200 {"shard","server","user","key","value","found":true}
//	GET /kv/KEY                    -> 200 the same, "found":false when unset
//	GET /kv                        -> 200 {"shard","server","user","data":{KEY: VALUE}}
//
// and the X-Served-By header says SHARD/SERVER. No cookie: 401.
//
// The data lives in this one process, not in files, so that every change is
// one critical section under the shard's lock: a copy between shards is
// atomic and a hook never sees a half-written store, with no locking across
// processes. A hook process reaches it through the admin endpoint (--admin,
// loopback only), which `demo-backends copy|verify|cleanup` call:
//
//	POST /admin/copy?user=U&from=A&to=B     U's data on B becomes a copy of A's
//	GET  /admin/verify?user=U&from=A&to=B   200 when B has every key of U's on A, 409 when not
//	POST /admin/cleanup?user=U&shard=A      deletes U's data on A
//	GET  /admin/data?user=U&shard=A         {"data":{...}} (for tests and curious people)
//
// Unknown shards are 404, missing parameters 400. Restarting the process
// loses the data (it is a demo).

// kvStore holds every shard's data: shard -> user -> key -> value.
type kvStore struct {
	mu     sync.Mutex
	shards map[string]map[string]map[string]string
}

func newKVStore(shards []string) *kvStore {
	s := &kvStore{shards: map[string]map[string]map[string]string{}}
	for _, sh := range shards {
		s.shards[sh] = map[string]map[string]string{}
	}
	return s
}

var errNoShard = errors.New("no such shard")

// user returns a copy of user's data on shard.
func (s *kvStore) user(shard, user string) (map[string]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sh, ok := s.shards[shard]
	if !ok {
		return nil, fmt.Errorf("shard %q: %w", shard, errNoShard)
	}
	return maps.Clone(sh[user]), nil
}

func (s *kvStore) put(shard, user, key, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sh, ok := s.shards[shard]
	if !ok {
		return fmt.Errorf("shard %q: %w", shard, errNoShard)
	}
	if sh[user] == nil {
		sh[user] = map[string]string{}
	}
	sh[user][key] = value
	return nil
}

// copyUser makes user's data on to an exact copy of theirs on from.
func (s *kvStore) copyUser(user, from, to string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	src, ok := s.shards[from]
	if !ok {
		return 0, fmt.Errorf("shard %q: %w", from, errNoShard)
	}
	dst, ok := s.shards[to]
	if !ok {
		return 0, fmt.Errorf("shard %q: %w", to, errNoShard)
	}
	if len(src[user]) == 0 {
		delete(dst, user)
		return 0, nil
	}
	dst[user] = maps.Clone(src[user])
	return len(src[user]), nil
}

func (s *kvStore) deleteUser(shard, user string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sh, ok := s.shards[shard]
	if !ok {
		return 0, fmt.Errorf("shard %q: %w", shard, errNoShard)
	}
	n := len(sh[user])
	delete(sh, user)
	return n, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// maxValue bounds a PUT's body.
const maxValue = 64 << 10

// serveKV answers /kv and /kv/KEY for the user the cookie names.
func (s server) serveKV(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Served-By", fmt.Sprintf("%s/%d", s.shard, s.index))
	c, err := r.Cookie("user")
	if err != nil || c.Value == "" {
		writeJSON(w, http.StatusUnauthorized, map[string]any{"shard": s.shard, "server": s.index, "error": "log in first: no user cookie"})
		return
	}
	user := c.Value
	key, hasKey := strings.CutPrefix(r.URL.Path, "/kv/")
	resp := map[string]any{"shard": s.shard, "server": s.index, "user": user}
	switch {
	case !hasKey && r.Method == http.MethodGet:
		data, err := s.kv.user(s.shard, user)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
			return
		}
		if data == nil {
			data = map[string]string{}
		}
		resp["data"] = data
		writeJSON(w, http.StatusOK, resp)
	case hasKey && key != "" && r.Method == http.MethodGet:
		data, err := s.kv.user(s.shard, user)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
			return
		}
		v, ok := data[key]
		resp["key"], resp["value"], resp["found"] = key, v, ok
		writeJSON(w, http.StatusOK, resp)
	case hasKey && key != "" && r.Method == http.MethodPut:
		b, err := io.ReadAll(io.LimitReader(r.Body, maxValue+1))
		if err != nil || len(b) > maxValue {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": fmt.Sprintf("value: want a body of at most %d bytes", maxValue)})
			return
		}
		if err := s.kv.put(s.shard, user, key, string(b)); err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
			return
		}
		resp["key"], resp["value"], resp["found"] = key, string(b), true
		writeJSON(w, http.StatusOK, resp)
	default:
		writeJSON(w, http.StatusMethodNotAllowed, map[string]any{"error": "want GET /kv, GET /kv/KEY or PUT /kv/KEY"})
	}
}

// adminHandler serves the admin endpoint the hooks call.
func adminHandler(kv *kvStore) http.Handler {
	mux := http.NewServeMux()
	params := func(w http.ResponseWriter, r *http.Request, names ...string) ([]string, bool) {
		var out []string
		for _, n := range names {
			v := r.URL.Query().Get(n)
			if v == "" {
				writeJSON(w, http.StatusBadRequest, map[string]any{"error": "missing parameter " + n})
				return nil, false
			}
			out = append(out, v)
		}
		return out, true
	}
	fail := func(w http.ResponseWriter, err error) {
		status := http.StatusInternalServerError
		if errors.Is(err, errNoShard) {
			status = http.StatusNotFound
		}
		writeJSON(w, status, map[string]any{"error": err.Error()})
	}
	mux.HandleFunc("POST /admin/copy", func(w http.ResponseWriter, r *http.Request) {
		p, ok := params(w, r, "user", "from", "to")
		if !ok {
			return
		}
		n, err := kv.copyUser(p[0], p[1], p[2])
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"copied": n})
	})
	mux.HandleFunc("GET /admin/verify", func(w http.ResponseWriter, r *http.Request) {
		p, ok := params(w, r, "user", "from", "to")
		if !ok {
			return
		}
		a, err := kv.user(p[1], p[0])
		if err != nil {
			fail(w, err)
			return
		}
		b, err := kv.user(p[2], p[0])
		if err != nil {
			fail(w, err)
			return
		}
		// Not equality: verify runs after the flip, when the user writes
		// on B again, so B's values may be newer than A's frozen ones.
		var missing []string
		for k := range a {
			if _, ok := b[k]; !ok {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			writeJSON(w, http.StatusConflict, map[string]any{"error": fmt.Sprintf("user %s: %d of the %d keys on %s are missing on %s: %s", p[0], len(missing), len(a), p[1], p[2], strings.Join(missing, ", "))})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"keys": len(a)})
	})
	mux.HandleFunc("POST /admin/cleanup", func(w http.ResponseWriter, r *http.Request) {
		p, ok := params(w, r, "user", "shard")
		if !ok {
			return
		}
		n, err := kv.deleteUser(p[1], p[0])
		if err != nil {
			fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"deleted": n})
	})
	mux.HandleFunc("GET /admin/data", func(w http.ResponseWriter, r *http.Request) {
		p, ok := params(w, r, "user", "shard")
		if !ok {
			return
		}
		data, err := kv.user(p[1], p[0])
		if err != nil {
			fail(w, err)
			return
		}
		if data == nil {
			data = map[string]string{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"data": data})
	})
	return mux
}

// DefaultAdmin is the admin endpoint make demo runs, and the hooks' default.
const DefaultAdmin = "127.0.0.1:8090"

// checkLoopback refuses an admin address that is not host:port on loopback.
func checkLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--admin %q: want HOST:PORT: %v", addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("--admin %q: port must be 1..65535", addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--admin %q: the admin endpoint is for loopback only (127.0.0.1, ::1, localhost)", addr)
	}
	return nil
}

// hookMain runs `demo-backends copy|verify|cleanup`: a mapctl move hook
// (--copy-cmd, --verify-cmd, --cleanup-cmd) acting on the demo's data
// through the admin endpoint. It reads SHARDMAP_USER, SHARDMAP_FROM and
// SHARDMAP_TO, as mapctl move sets them: copy makes the user's data on TO a
// copy of theirs on FROM, verify checks that TO has every key FROM has
// (verify runs after the flip: the user writes on TO again, so values may
// have changed), cleanup deletes it on FROM. Exit 0 done, 1 failed (the admin endpoint refused or did not
// answer), 2 bad input.
func hookMain(verb string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo-backends "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", DefaultAdmin, "the admin endpoint of demo-backends (its --admin)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long the admin endpoint may take to answer")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: demo-backends %s [--admin HOST:PORT] [--timeout D]\n"+
			"A mapctl move hook: reads SHARDMAP_USER, SHARDMAP_FROM, SHARDMAP_TO from the environment.\n", verb)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "demo-backends %s: unexpected argument %q\n", verb, fs.Arg(0))
		return 2
	}
	if err := checkLoopback(*admin); err != nil {
		fmt.Fprintf(stderr, "demo-backends %s: %v\n", verb, err)
		return 2
	}
	env := map[string]string{}
	for _, k := range []string{"SHARDMAP_USER", "SHARDMAP_FROM", "SHARDMAP_TO"} {
		env[k] = os.Getenv(k)
		if env[k] == "" && (k != "SHARDMAP_TO" || verb != "cleanup") {
			fmt.Fprintf(stderr, "demo-backends %s: %s is not set (mapctl move sets it for its hooks)\n", verb, k)
			return 2
		}
	}
	q := url.Values{"user": {env["SHARDMAP_USER"]}}
	method, path := http.MethodPost, "/admin/"+verb
	switch verb {
	case "copy":
		q.Set("from", env["SHARDMAP_FROM"])
		q.Set("to", env["SHARDMAP_TO"])
	case "verify":
		method = http.MethodGet
		q.Set("from", env["SHARDMAP_FROM"])
		q.Set("to", env["SHARDMAP_TO"])
	case "cleanup":
		q.Set("shard", env["SHARDMAP_FROM"])
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+*admin+path+"?"+q.Encode(), nil)
	if err != nil {
		fmt.Fprintf(stderr, "demo-backends %s: %v\n", verb, err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "demo-backends %s: admin endpoint %s: %v\n", verb, *admin, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "demo-backends %s: user %s: %s: %s\n", verb, env["SHARDMAP_USER"], resp.Status, strings.TrimSpace(string(body)))
		return 1
	}
	fmt.Fprintf(stdout, "demo-backends %s: user %s %s->%s: %s\n", verb, env["SHARDMAP_USER"], env["SHARDMAP_FROM"], env["SHARDMAP_TO"], strings.TrimSpace(string(body)))
	return 0
}

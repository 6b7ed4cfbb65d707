package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds of `demo-backends load`: it is a demo's load, not a benchmark.
const (
	maxLoadRate     = 1000             // requests per second
	maxLoadDuration = 10 * time.Minute // how long it may run
	maxLoadRequests = 100000           // requests in all
	maxLoadUsers    = 1000             // users named in --users
	maxShardLabel   = 64               // longer X-Served-By shard names count as "?"
	loadWorkers     = 8                // requests in flight at most
)

// loadConfig is what `demo-backends load` was asked to do, checked.
type loadConfig struct {
	frontend string        // loopback HOST:PORT of HAProxy's frontend
	users    []string      // the user cookie values, sent in turn
	rate     int           // requests per second, over all users
	duration time.Duration // it stops after this
	requests int           // or after this many requests
	timeout  time.Duration // each request's
	json     bool          // -o json
}

// loadResult counts who answered. Shard is taken from the X-Served-By
// header the demo's servers set ("shard3/1" -> "shard3"); a 503 from the
// holding backend (a user mid-move, mapctl move --freeze) counts as held.
type loadResult struct {
	Sent     int               `json:"sent"`
	ByShard  map[string]int    `json:"by_shard"`            // 2xx answers per shard
	Held     int               `json:"held"`                // 503 from shardmap_hold
	Other    map[string]int    `json:"other"`               // any other answer, by status code
	Failed   int               `json:"failed"`              // no answer (connection refused, timeout)
	LastSeen map[string]string `json:"last_shard_per_user"` // the shard that last answered each user
	Seconds  float64           `json:"seconds"`
}

// parseLoadArgs checks the flags of `demo-backends load`. Every bad input
// is an error naming the flag and the rule.
func parseLoadArgs(args []string, stderr io.Writer) (loadConfig, error) {
	fs := flag.NewFlagSet("demo-backends load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	frontend := fs.String("frontend", "127.0.0.1:7000", "HAProxy's frontend, loopback HOST:PORT (make demo: 127.0.0.1:7000)")
	users := fs.String("users", "", "comma-separated user cookie values to send requests as, in turn (required), e.g. 3,6,7")
	rate := fs.Int("rate", 50, fmt.Sprintf("requests per second, over all users (1..%d)", maxLoadRate))
	duration := fs.Duration("duration", 30*time.Second, fmt.Sprintf("stop after this long (at most %s); Ctrl-C stops earlier", maxLoadDuration))
	requests := fs.Int("requests", 0, fmt.Sprintf("stop after this many requests (1..%d; 0: rate x duration)", maxLoadRequests))
	timeout := fs.Duration("timeout", 5*time.Second, "each request's timeout")
	output := fs.String("o", "table", "output: table or json")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: demo-backends load --users U1,U2,... [--frontend HOST:PORT] [--rate N] [--duration D] [--requests N] [-o json]\n"+
			"Sends GET / through HAProxy with the cookie user=U, the users in turn, and prints\n"+
			"which shards answered (the demo's servers name theirs in X-Served-By).\n")
		fs.PrintDefaults()
	}
	var c loadConfig
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, badFlag("unexpected argument %q", fs.Arg(0))
	}
	if err := checkFrontend(*frontend); err != nil {
		return c, err
	}
	if *users == "" {
		return c, badFlag("--users is required: the users to send requests as, e.g. --users 3,6,7")
	}
	seen := map[string]bool{}
	for _, u := range strings.Split(*users, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			return c, badFlag("--users %q: an empty user", *users)
		}
		if !validCookieValue(u) {
			return c, badFlag("--users: user %q cannot be a cookie value (letters, digits and -._~ only)", u)
		}
		if seen[u] {
			return c, badFlag("--users: user %q named twice", u)
		}
		seen[u] = true
		c.users = append(c.users, u)
	}
	if len(c.users) > maxLoadUsers {
		return c, badFlag("--users: %d users, at most %d", len(c.users), maxLoadUsers)
	}
	if *rate < 1 || *rate > maxLoadRate {
		return c, badFlag("--rate %d: want 1..%d requests per second", *rate, maxLoadRate)
	}
	if *duration <= 0 || *duration > maxLoadDuration {
		return c, badFlag("--duration %s: want more than 0 and at most %s", *duration, maxLoadDuration)
	}
	if *requests < 0 || *requests > maxLoadRequests {
		return c, badFlag("--requests %d: want 0 (rate x duration) or 1..%d", *requests, maxLoadRequests)
	}
	if *timeout <= 0 || *timeout > time.Minute {
		return c, badFlag("--timeout %s: want more than 0 and at most 1m", *timeout)
	}
	switch *output {
	case "table":
	case "json":
		c.json = true
	default:
		return c, badFlag("-o %q: want table or json", *output)
	}
	c.frontend, c.rate, c.duration, c.timeout = *frontend, *rate, *duration, *timeout
	c.requests = *requests
	if c.requests == 0 {
		c.requests = min(maxLoadRequests, max(1, int(duration.Seconds()*float64(*rate))))
	}
	return c, nil
}

// checkFrontend refuses a --frontend that is not HOST:PORT on loopback.
func checkFrontend(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return badFlag("--frontend %q: want HOST:PORT", addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return badFlag("--frontend %q: port must be 1..65535", addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return badFlag("--frontend %q: the load is for loopback only (127.0.0.1, ::1, localhost)", addr)
	}
	return nil
}

// loadFlagError is a bad flag of demo-backends load: its message names the
// flag and the rule.
type loadFlagError struct{ msg string }

func (e *loadFlagError) Error() string { return e.msg }

func badFlag(format string, a ...any) error { return &loadFlagError{fmt.Sprintf(format, a...)} }

func validCookieValue(s string) bool {
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("-._~", r):
		default:
			return false
		}
	}
	return len(s) <= 256
}

// loadMain runs `demo-backends load`. Exit 0: it ran and a shard answered
// at least one request; 1: none did (is the demo up?); 2: bad input.
// SIGINT or SIGTERM stops it early; it still prints the counts.
func loadMain(args []string, stdout, stderr io.Writer) int {
	c, err := parseLoadArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		if bad := (*loadFlagError)(nil); errors.As(err, &bad) { // the flag package printed its own
			fmt.Fprintf(stderr, "demo-backends load: %v\n", err)
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.duration)
	defer cancel()
	fmt.Fprintf(stderr, "demo-backends load: sending up to %d requests at %d/s for up to %s as users %s through %s (Ctrl-C stops and prints the counts)\n",
		c.requests, c.rate, c.duration, strings.Join(c.users, ","), c.frontend)
	res := runLoad(ctx, c)
	if c.json {
		json.NewEncoder(stdout).Encode(res)
	} else {
		printLoad(stdout, res)
	}
	answered := 0
	for _, n := range res.ByShard {
		answered += n
	}
	if answered == 0 {
		fmt.Fprintf(stderr, "demo-backends load: no shard answered any of %d requests through %s: is the demo up?\n", res.Sent, c.frontend)
		return 1
	}
	return 0
}

// runLoad sends c.requests requests at c.rate per second, the users in
// turn, until they are sent or ctx is done, and counts who answered.
func runLoad(ctx context.Context, c loadConfig) loadResult {
	res := loadResult{ByShard: map[string]int{}, Other: map[string]int{}, LastSeen: map[string]string{}}
	client := &http.Client{
		Timeout:   c.timeout,
		Transport: &http.Transport{MaxIdleConnsPerHost: loadWorkers, Proxy: nil},
		// The demo answers / with a page, never a redirect for a logged-in
		// user; do not follow one anyway (it would count twice).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	jobs := make(chan string)
	var wg sync.WaitGroup
	for range loadWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for user := range jobs {
				shard, status, held, err := loadOne(ctx, client, c.frontend, user)
				mu.Lock()
				switch {
				case err != nil:
					res.Failed++
				case shard != "":
					res.ByShard[shard]++
					res.LastSeen[user] = shard
				case held:
					res.Held++
				default:
					res.Other[fmt.Sprint(status)]++
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(c.rate))
	defer tick.Stop()
send:
	for i := 0; i < c.requests; i++ {
		select {
		case <-ctx.Done():
			break send
		case jobs <- c.users[i%len(c.users)]:
			res.Sent++
		}
		select {
		case <-ctx.Done():
			break send
		case <-tick.C:
		}
	}
	close(jobs)
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	return res
}

// loadOne sends one request as user and says who answered: the shard from
// X-Served-By, or held (503 from the holding backend), or only the status.
func loadOne(ctx context.Context, client *http.Client, frontend, user string) (shard string, status int, held bool, err error) {
	// A request already sent finishes even when ctx ends (up to its timeout),
	// so that Ctrl-C does not count it as failed.
	req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, "http://"+frontend+"/", nil)
	if err != nil {
		return "", 0, false, err
	}
	req.AddCookie(&http.Cookie{Name: "user", Value: user})
	resp, err := client.Do(req)
	if err != nil {
		return "", 0, false, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusServiceUnavailable && strings.HasPrefix(string(body), "shardmap_hold:") {
		return "", resp.StatusCode, true, nil
	}
	if resp.StatusCode/100 == 2 {
		if by := resp.Header.Get("X-Served-By"); by != "" {
			shard, _, _ = strings.Cut(by, "/")
			if len(shard) > maxShardLabel || !validCookieValue(shard) {
				shard = "?"
			}
			return shard, resp.StatusCode, false, nil
		}
	}
	return "", resp.StatusCode, false, nil
}

// printLoad writes the counts as a table, shards sorted by name.
func printLoad(w io.Writer, r loadResult) {
	fmt.Fprintf(w, "%d requests in %.1fs\n", r.Sent, r.Seconds)
	shards := make([]string, 0, len(r.ByShard))
	for s := range r.ByShard {
		shards = append(shards, s)
	}
	sort.Strings(shards)
	fmt.Fprintf(w, "%-10s %s\n", "SHARD", "ANSWERED")
	for _, s := range shards {
		fmt.Fprintf(w, "%-10s %d\n", s, r.ByShard[s])
	}
	if r.Held > 0 {
		fmt.Fprintf(w, "%-10s %d  (503 from shardmap_hold: users mid-move)\n", "held", r.Held)
	}
	codes := make([]string, 0, len(r.Other))
	for code := range r.Other {
		codes = append(codes, code)
	}
	sort.Strings(codes)
	for _, code := range codes {
		fmt.Fprintf(w, "%-10s %d\n", "status "+code, r.Other[code])
	}
	if r.Failed > 0 {
		fmt.Fprintf(w, "%-10s %d  (no answer)\n", "failed", r.Failed)
	}
}

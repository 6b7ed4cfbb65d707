package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestParseLoadArgsRefusesBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // in the error: the flag and the rule
	}{
		{[]string{}, "--users is required"},
		{[]string{"--users", "3,,4"}, `--users "3,,4": an empty user`},
		{[]string{"--users", "3,3"}, `user "3" named twice`},
		{[]string{"--users", "a;b"}, `user "a;b" cannot be a cookie value`},
		{[]string{"--users", "3", "--rate", "0"}, "--rate 0: want 1..1000"},
		{[]string{"--users", "3", "--rate", "1001"}, "--rate 1001: want 1..1000"},
		{[]string{"--users", "3", "--duration", "0s"}, "--duration 0s: want more than 0"},
		{[]string{"--users", "3", "--duration", "11m"}, "--duration 11m0s: want more than 0 and at most 10m0s"},
		{[]string{"--users", "3", "--requests", "-1"}, "--requests -1: want 0"},
		{[]string{"--users", "3", "--requests", "100001"}, "--requests 100001"},
		{[]string{"--users", "3", "--timeout", "0s"}, "--timeout 0s"},
		{[]string{"--users", "3", "--frontend", "10.0.0.1:7000"}, `--frontend "10.0.0.1:7000": the load is for loopback only`},
		{[]string{"--users", "3", "--frontend", "example.com:80"}, "loopback only"},
		{[]string{"--users", "3", "--frontend", "127.0.0.1"}, "want HOST:PORT"},
		{[]string{"--users", "3", "--frontend", "127.0.0.1:0"}, "port must be 1..65535"},
		{[]string{"--users", "3", "-o", "yaml"}, `-o "yaml": want table or json`},
		{[]string{"--users", "3", "extra"}, `unexpected argument "extra"`},
	} {
		_, err := parseLoadArgs(c.args, io.Discard)
		var bad *loadFlagError
		if !errors.As(err, &bad) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseLoadArgs(%q) = %v, want a *loadFlagError containing %q", c.args, err, c.want)
		}
	}
	if _, err := parseLoadArgs([]string{"--no-such-flag"}, io.Discard); err == nil {
		t.Error("parseLoadArgs(--no-such-flag): no error")
	}
}

func TestParseLoadArgsDefaults(t *testing.T) {
	c, err := parseLoadArgs([]string{"--users", " 3, 6 ,alice", "--rate", "20", "--duration", "2s", "-o", "json"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.users, "|") != "3|6|alice" || c.rate != 20 || c.duration != 2*time.Second ||
		c.requests != 40 || c.frontend != "127.0.0.1:7000" || !c.json {
		t.Errorf("config %+v: want users 3,6,alice, rate 20, 2s, 40 requests (rate x duration), frontend 127.0.0.1:7000, json", c)
	}
	c, err = parseLoadArgs([]string{"--users", "3", "--requests", "7", "--frontend", "[::1]:7000"}, io.Discard)
	if err != nil || c.requests != 7 {
		t.Errorf("--requests 7 --frontend [::1]:7000: %+v, %v", c, err)
	}
}

// runLoad counts answers by the shard the server names, held users apart,
// and other statuses by code; it sends exactly --requests, the users in turn.
func TestRunLoadCounts(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := r.Cookie("user")
		switch c.Value {
		case "1":
			w.Header().Set("X-Served-By", "shard1/2")
		case "2":
			w.Header().Set("X-Served-By", "shard2/0")
		case "held":
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "shardmap_hold: this user is being moved")
			return
		case "bad":
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		io.WriteString(w, "page")
	}))
	defer srv.Close()
	c := loadConfig{frontend: strings.TrimPrefix(srv.URL, "http://"), users: []string{"1", "2", "1", "held", "bad"},
		rate: 1000, duration: time.Minute, requests: 11, timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := runLoad(ctx, c)
	// 11 requests over users 1,2,1,held,bad: 1 five times, 2 twice, held twice, bad twice.
	if r.Sent != 11 || r.ByShard["shard1"] != 5 || r.ByShard["shard2"] != 2 || len(r.ByShard) != 2 ||
		r.Held != 2 || r.Other["502"] != 2 || r.Failed != 0 || r.LastSeen["2"] != "shard2" {
		t.Errorf("result %+v: want 11 sent, shard1 5, shard2 2, held 2, 502 twice", r)
	}
	srv.Close()
	r = runLoad(ctx, loadConfig{frontend: c.frontend, users: []string{"1"}, rate: 1000, duration: time.Minute, requests: 3, timeout: time.Second})
	if r.Failed != 3 || len(r.ByShard) != 0 {
		t.Errorf("server gone: %+v, want 3 failed", r)
	}
}

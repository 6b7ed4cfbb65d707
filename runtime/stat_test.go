package runtime

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shardmap/shardmap/internal/testenv"
)

// The two replies were captured from HAProxy 2.6.12 and 3.0.11 ("show stat
// -1 6 -1") with the same config: shard0's one server down (failed check),
// shard1 with an active and a backup server and 3 requests, rawtcp in tcp
// mode (no req_tot).
func TestBackendStatsOfBothVersions(t *testing.T) {
	for _, v := range []string{"2.6", "3.0"} {
		t.Run(v, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", "showstat-"+v+".txt"))
			if err != nil {
				t.Fatal(err)
			}
			reply := strings.TrimSuffix(string(b), "\n\n")
			got, err := parseBackendStats(reply)
			if err != nil {
				t.Fatal(err)
			}
			want := []BackendStat{
				{Name: "shard0", Status: "DOWN", ServersUp: 0, Servers: 1, HasRequests: true},
				{Name: "shard1", Status: "UP", ServersUp: 2, Servers: 2, SessionRate: 3, SessionsTotal: 3, RequestsTotal: 3, HasRequests: true},
				{Name: "rawtcp", Status: "UP", ServersUp: 1, Servers: 1},
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
			// Served through a socket, the same.
			f := newFake(t, func(string) string { return string(b) })
			got2, err := newClient(t, f.path).BackendStats(context.Background())
			if err != nil || fmt.Sprint(got2) != fmt.Sprint(want) {
				t.Errorf("over the socket: %+v, %v", got2, err)
			}
			if cmds := f.commands(); len(cmds) != 1 || cmds[0] != "show stat -1 6 -1" {
				t.Errorf("sent %q", cmds)
			}
		})
	}
}

// A reply cut at any byte is an error, never a shorter list, and never a
// panic.
func TestBackendStatsCutReplyIsError(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "showstat-2.6.txt"))
	if err != nil {
		t.Fatal(err)
	}
	reply := string(b)
	for at := 0; at < len(reply); at += 1 + at/7 {
		f := newCutFake(t, func(string) string { return reply }, 0, at)
		list, err := newClient(t, f.path).BackendStats(context.Background())
		if err == nil {
			t.Fatalf("cut at %d of %d: no error, %d backends", at, len(reply), len(list))
		}
		if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrBadReply) {
			t.Errorf("cut at %d: %v, want ErrTruncated or ErrBadReply", at, err)
		}
		if CommandOf(err) != "show_stat" {
			t.Errorf("cut at %d: command %q", at, CommandOf(err))
		}
	}
}

func TestBackendStatsOddRepliesAreErrBadReply(t *testing.T) {
	const h = "# pxname,svname,scur,stot,status,act,bck,rate,req_tot\n"
	for name, reply := range map[string]string{
		"empty":             "",
		"no line at all":    "",
		"error text":        "Unknown command. Please enter one of the following commands only :\n  help",
		"no header":         "shard0,BACKEND,0,0,UP,1,0,0,0",
		"missing column":    "# pxname,svname,scur,status,act,bck\nshard0,BACKEND,0,UP,1,0",
		"short row":         h + "shard0,BACKEND,0,0,UP",
		"negative":          h + "shard0,BACKEND,-1,0,UP,1,0,0,0",
		"not a number":      h + "shard0,BACKEND,0,x,UP,1,0,0,0",
		"empty scur":        h + "shard0,BACKEND,,0,UP,1,0,0,0",
		"huge":              h + "shard0,BACKEND,0,99999999999999999999,UP,1,0,0,0",
		"huge act":          h + "shard0,BACKEND,0,0,UP,9223372036854775807,9223372036854775807,0,0",
		"twice":             h + "shard0,BACKEND,0,0,UP,1,0,0,0\nshard0,BACKEND,0,0,UP,1,0,0,0",
		"orphan server":     h + "shard9,s1,0,0,UP,1,0,0,0\nshard0,BACKEND,0,0,UP,1,0,0,0",
		"no name":           h + ",BACKEND,0,0,UP,1,0,0,0",
		"blank line inside": h + "shard0,BACKEND,0,0,UP,1,0,0,0\n\nshard1,BACKEND,0,0,UP,1,0,0,0",
		"bad quote":         h + "shard0,BACKEND,0,0,\"UP,1,0,0,0\n",
	} {
		t.Run(name, func(t *testing.T) {
			framed := reply + "\n\n"
			if name == "no line at all" {
				framed = "\n" // the end of a reply, and nothing before it
			}
			f := newFake(t, func(string) string { return framed })
			list, err := newClient(t, f.path).BackendStats(context.Background())
			if !errors.Is(err, ErrBadReply) {
				t.Errorf("got %+v, %v; want ErrBadReply", list, err)
			}
		})
	}
}

// On a real HAProxy (2.6, or $SHARDMAP_HAPROXY): request counts follow the
// traffic sent, and a backend whose only server fails its check is DOWN
// with no server up.
func TestRealBackendStats(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "admin.sock")
	port, dead := testenv.FreePort(t), testenv.FreePort(t)
	cfg := fmt.Sprintf(`global
  stats socket %s mode 600 level admin
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s
frontend fe
  bind 127.0.0.1:%d
  use_backend %%[req.cook(user)]
backend shard0
  server s1 127.0.0.1:%d check inter 100ms
backend shard1
  http-request return status 200 content-type text/plain string shard1
backend shard2
  http-request return status 200 content-type text/plain string shard2
`, socket, port, dead)
	testenv.StartHAProxy(t, dir, cfg, socket)
	c := newClient(t, socket)
	for shard, n := range map[string]int{"shard1": 7, "shard2": 2} {
		for i := 0; i < n; i++ {
			req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
			req.AddCookie(&http.Cookie{Name: "user", Value: shard})
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
	}
	var got map[string]BackendStat
	testenv.WaitFor(t, 10*time.Second, "shard0 DOWN", func() error {
		list, err := c.BackendStats(context.Background())
		if err != nil {
			return err
		}
		got = map[string]BackendStat{}
		for _, b := range list {
			got[b.Name] = b
		}
		if got["shard0"].Status != "DOWN" {
			return fmt.Errorf("shard0 is %+v", got["shard0"])
		}
		return nil
	})
	if b := got["shard0"]; b.ServersUp != 0 || b.Servers != 1 {
		t.Errorf("shard0: %+v, want 0 of 1 servers up", b)
	}
	for shard, n := range map[string]int64{"shard1": 7, "shard2": 2} {
		if b := got[shard]; b.Status != "UP" || !b.HasRequests || b.RequestsTotal != n || b.SessionsTotal < 1 {
			t.Errorf("%s: %+v, want UP with %d requests", shard, b, n)
		}
	}
}

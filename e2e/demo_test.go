package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/shardmap/shardmap/internal/testenv"
)

// chromium finds Debian's chromium; on CI it must be there (.ci/run
// installs it), elsewhere the test says how to get it and skips.
func chromium(t *testing.T) string {
	for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found: .ci/run must install it (apt-get install -y chromium)")
	}
	t.Skip("chromium not found: apt-get install -y chromium (scripts/deps.sh --browser) to run the browser test")
	return ""
}

// browserStep starts headless Chromium (the binary at path) for the test,
// stopped at its end, and returns a context of 60 s for the test's steps.
// The first call, which starts the browser, carries no timeout.
func browserStep(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	step, cancelStep := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() { cancelStep(); cancelCtx(); cancelAlloc() })
	return step
}

// text reads the element with id in the page.
func text(step context.Context, t *testing.T, id string) string {
	t.Helper()
	s, err := chromedp.Run(step, chromedp.Text(chromedp.ID(id)))
	if err != nil {
		t.Fatalf("read #%s: %v", id, err)
	}
	return s
}

// The demo, driven as a person would: make demo's script brings the stack up
// on its fixed loopback ports; headless Chromium logs in as user 3, reads
// which shard served the page, mapctl moves user 3, a reload shows the new
// shard; mapctl move, with the demo's hooks, moves user 3 and their data to
// shard4. Screenshots are saved in the test's temp dir.
func TestDemoInBrowser(t *testing.T) {
	browser := chromium(t)
	start := time.Now()
	demo := startDemo(t, "shardmap demo is up")
	t.Logf("demo up in %s", time.Since(start).Round(100*time.Millisecond))

	shots := t.TempDir()
	step := browserStep(t, browser)

	served := func() string {
		t.Helper()
		s, err := chromedp.Run(step, chromedp.Text(chromedp.ID("served")))
		if err != nil {
			t.Fatalf("read #served: %v\ndemo output:\n%s", err, demo.Output())
		}
		return s
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(step, chromedp.FullScreenshot(90))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		os.WriteFile(filepath.Join(shots, name), png, 0o644)
	}

	if err := chromedp.Do(step, chromedp.Navigate("http://127.0.0.1:7000/")); err != nil {
		t.Fatalf("open the demo: %v", err)
	}
	if got := served(); !strings.HasPrefix(got, "login page on shard0") {
		t.Fatalf("login page (no cookie) served by %q, want the default shard0", got)
	}
	shot("login.png")
	err := chromedp.Do(step,
		chromedp.SendKeys(chromedp.ID("user"), "3"),
		chromedp.SendKeys(chromedp.ID("password"), "sam"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("logout")),
	)
	if err != nil {
		t.Fatalf("log in: %v\ndemo output:\n%s", err, demo.Output())
	}
	if got := served(); !strings.HasPrefix(got, "user 3 on shard3") {
		t.Fatalf("after login: %q, want user 3 on shard3", got)
	}
	shot("user3-shard3.png")

	out, err := exec.Command(filepath.Join(binDir, "mapctl"), "set", "3", "shard1", "--wait").CombinedOutput()
	if err != nil {
		t.Fatalf("mapctl set 3 shard1: %v %s", err, out)
	}
	if err := chromedp.Do(step, chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("logout"))); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got := served(); !strings.HasPrefix(got, "user 3 on shard1") {
		t.Fatalf("after mapctl set 3 shard1 and a reload: %q, want user 3 on shard1", got)
	}
	shot("user3-shard1.png")

	// Move user 3 with their data, as the demo's banner says: a note kept
	// on shard1, mapctl move with the demo's hooks (admin endpoint :8090),
	// and the page shows the note on shard4.
	req, _ := http.NewRequest(http.MethodPut, "http://127.0.0.1:7000/kv/note", strings.NewReader("hello"))
	req.AddCookie(&http.Cookie{Name: "user", Value: "3"})
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("PUT /kv/note as user 3: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	hook := func(verb string) string { return filepath.Join(binDir, "demo-backends") + " " + verb }
	out, err = exec.Command(filepath.Join(binDir, "mapctl"), "move", "3", "--to", "shard4", "--freeze",
		"--copy-cmd", hook("copy"), "--verify-cmd", hook("verify"), "--cleanup-cmd", hook("cleanup")).CombinedOutput()
	if err != nil {
		t.Fatalf("mapctl move 3 --to shard4: %v %s", err, out)
	}
	if err := chromedp.Do(step, chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("logout"))); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got, data := served(), text(step, t, "data"); !strings.HasPrefix(got, "user 3 on shard4") || !strings.Contains(data, "note=hello") {
		t.Fatalf("after mapctl move 3 --to shard4 and a reload: %q, %q, want user 3 on shard4 with note=hello", got, data)
	}
	shot("user3-shard4-moved.png")
	t.Logf("screenshots in %s", shots)
}

// make demo ROUTING=ids, in the browser: user 3 logs in and gets a real ID
// on a logical shard of shard3, which the page shows with its parts;
// mapctl set ID moves that one ID, mapctl del ID brings it back.
func TestDemoInBrowserIDs(t *testing.T) {
	browser := chromium(t)
	demo := startDemo(t, "shardmap demo is up in routing: ids", "ROUTING=ids")
	step := browserStep(t, browser)
	text := func(id string) string {
		t.Helper()
		s, err := chromedp.Run(step, chromedp.Text(chromedp.ID(id)))
		if err != nil {
			t.Fatalf("read #%s: %v\ndemo output:\n%s", id, err, demo.Output())
		}
		return s
	}
	err := chromedp.Do(step,
		chromedp.Navigate("http://127.0.0.1:7000/"),
		chromedp.SendKeys(chromedp.ID("user"), "3"),
		chromedp.SendKeys(chromedp.ID("password"), "sam"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("logout")),
	)
	if err != nil {
		t.Fatalf("log in: %v\ndemo output:\n%s", err, demo.Output())
	}
	// "ID 5027...: made 2026-..., logical shard 4778, sequence 0"
	parts := text("id")
	id, _, ok := strings.Cut(strings.TrimPrefix(parts, "ID "), ":")
	if !ok || !strings.Contains(parts, "logical shard 4778") {
		t.Fatalf("#id %q: want the ID and logical shard 4778 (the middle of shard3's block)", parts)
	}
	if got := text("served"); !strings.HasPrefix(got, "user "+id+" on shard3") {
		t.Fatalf("after login: %q, want user %s on shard3", got, id)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"set", id, "shard1", "--wait"}, "shard1"},
		{[]string{"del", id, "--wait"}, "shard3"},
	} {
		if out, err := exec.Command(filepath.Join(binDir, "mapctl"), c.args...).CombinedOutput(); err != nil {
			t.Fatalf("mapctl %v: %v %s", c.args, err, out)
		}
		if err := chromedp.Do(step, chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("logout"))); err != nil {
			t.Fatalf("reload: %v", err)
		}
		if got := text("served"); !strings.HasPrefix(got, "user "+id+" on "+c.want) {
			t.Fatalf("after mapctl %v and a reload: %q, want on %s", c.args, got, c.want)
		}
	}
}

// startDemo runs scripts/demo.sh (make demo) with env, and waits until its
// output says up. At the test's end it stops the script with SIGTERM and
// checks that it stopped and removed /tmp/shardmap-demo.
func startDemo(t *testing.T, up string, env ...string) *testenv.Proc {
	t.Helper()
	demo := testenv.Start(t, "demo", []string{"bash", "../scripts/demo.sh"}, append([]string{"SHARDMAP_BIN=" + binDir}, env...)...)
	t.Cleanup(func() { // runs before the Proc's own kill: let the script stop its children
		demo.Signal(syscall.SIGTERM)
		if _, done := demo.Wait(20 * time.Second); !done {
			t.Error("demo did not stop within 20 s of SIGTERM")
		}
		if _, err := os.Stat("/tmp/shardmap-demo"); !os.IsNotExist(err) {
			t.Errorf("demo left /tmp/shardmap-demo behind: %v", err)
		}
	})
	testenv.WaitFor(t, 30*time.Second, "make demo to come up ("+up+")", func() error {
		if demo.Exited() {
			t.Fatalf("demo exited:\n%s", demo.Output())
		}
		if !strings.Contains(demo.Output(), up) {
			return fmt.Errorf("not up yet")
		}
		return nil
	})
	return demo
}

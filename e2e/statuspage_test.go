package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/shardmap/shardmap/internal/testenv"
	"github.com/shardmap/shardmap/maps"
)

// UpdateDocsEnv, set to 1, makes TestStatusPageInBrowser write its
// screenshot to docs/status-page.png (committed) instead of the test's
// temp dir, so that an ordinary run leaves the checkout clean.
const updateDocsEnv = "SHARDMAP_UPDATE_DOCS"

// The status page, loaded in headless Chromium from a syncer running
// against real HAProxy and Redis, shows the target, its state, the users
// per shard and the last changes; /metrics carries the per-target series.
func TestStatusPageInBrowser(t *testing.T) {
	browser := chromium(t)
	s := newStack(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	s.startSyncer("--listen", listen)
	// An uneven spread, so that the chart says something.
	var as []maps.Assignment
	for i, n := range []int{6, 14, 9, 3} {
		for j := range n {
			as = append(as, maps.Assignment{User: fmt.Sprintf("%s-u%02d", shards[i], j), Shard: shards[i]})
		}
	}
	if _, err := s.store.Import(context.Background(), as, 500, nil); err != nil {
		t.Fatal(err)
	}
	s.mustMapctl("set", "alice", "shard2", "--wait")
	s.mustMapctl("set", "bob", "shard1", "--wait")
	s.waitConverged(20 * time.Second)

	base := "http://" + listen
	// The per-target series, from the real syncer.
	target := regexp.QuoteMeta(`target="` + s.socket + `"`)
	testenv.WaitFor(t, 20*time.Second, "per-target metrics", func() error {
		body, err := httpGet(s, base+"/metrics")
		if err != nil {
			return err
		}
		for _, re := range []string{
			`shardmap_syncer_full_syncs_by_reason_total\{reason="start",` + target + `\} 1`,
			`shardmap_syncer_apply_latency_seconds_count\{` + target + `\} [1-9]`,
			`shardmap_syncer_lag_seconds\{` + target + `\} 0`,
			`shardmap_syncer_lag_entries\{` + target + `\} 0`,
			`shardmap_build_info\{`,
		} {
			if !regexp.MustCompile(re).MatchString(body) {
				return fmt.Errorf("no %s in /metrics:\n%s", re, body)
			}
		}
		return nil
	})

	step := browserStep(t, browser)
	err := chromedp.Do(step,
		chromedp.EmulateViewport(1000, 900),
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.ID("shards")),
	)
	if err != nil {
		t.Fatalf("open the status page: %v\nsyncer output:\n%s", err, s.syncer.Output())
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(step, chromedp.TextContent(chromedp.ID(sel)))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return v
	}
	if got := text("targets"); !strings.Contains(got, s.socket) || !strings.Contains(got, "ready") || !strings.Contains(got, "caught up") {
		t.Errorf("targets table %q: want the socket %s, ready, caught up", got, s.socket)
	}
	chart := text("shards")
	for i, sh := range shards {
		want := []int{6, 15, 10, 3}[i] // alice on shard2, bob on shard1
		if !strings.Contains(chart, sh+strconv.Itoa(want)) {
			t.Errorf("chart %q: want %s with %d users", chart, sh, want)
		}
	}
	if got := text("changes"); !strings.Contains(got, "bob") || !strings.Contains(got, "alice") {
		t.Errorf("recent changes %q: want bob and alice", got)
	}

	png, err := chromedp.Run(step, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	out := filepath.Join(t.TempDir(), "status-page.png")
	if os.Getenv(updateDocsEnv) == "1" {
		out = filepath.Join("..", "docs", "status-page.png")
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(png))
}

func httpGet(s *stack, url string) (string, error) {
	resp, err := s.http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

package suite

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// memory is the syncer's memory at Users users, alone (shardmap-bench
// -only memory): Users users imported into Redis and made live by a first
// syncer; then a second syncer started against that Redis and that HAProxy
// (a snapshot load and a full sync of a 1M live map: the comparison), churn
// at 10k changes/s for ChurnDur (delta folds: whole-map swaps), a
// reassignment of Reassign users (a swap), and the map-file write of it
// all. It reports both syncers' VmHWM (/proc/PID/status); the doc's syncer
// figure is the larger.
func (s *suite) memory(ctx context.Context, res *results) error {
	rig, err := s.startLive(ctx)
	if err != nil {
		return fmt.Errorf("live rig: %w", err)
	}
	n := s.o.Users
	s.logf("memory: import of %s users", count(int64(n)))
	stop1, peak1 := make(chan struct{}), make(chan int64, 1)
	go func() { peak1 <- s.heapPeak(ctx, rig, "syncer-memory-import-heap.pprof", stop1) }()
	if _, err := importUsers(ctx, rig.store, 0, n, 0); err != nil {
		close(stop1)
		return err
	}
	_, err = waitLive(ctx, rig.fe, userName(n-1), shardNames[(n-1)%2], liveLimit)
	close(stop1)
	if err != nil {
		return fmt.Errorf("import live: %w", err)
	}
	rig.n = n
	first, err := readMem(rig.syncer.pid())
	if err != nil {
		return err
	}
	s.logf("memory: syncer through the import: VmRSS %s VmHWM %s", mb(first.RSS), mb(first.HWM))
	if peak := <-peak1; peak > 0 {
		s.logf("memory: its largest live heap (sampled, as of a GC): %s; profile %s", mb(peak), filepath.Join(s.o.ProfileDir, "syncer-memory-import-heap.pprof"))
	}

	rig.syncer.stop()
	sp, err := startSyncer(rig.redis.addr, rig.socket, rig.mapPath, rig.pprof, s.o.LoadCPU)
	if err != nil {
		return err
	}
	rig.syncer = sp
	s.cleanup(sp.stop)
	stopPeak := make(chan struct{})
	peakDone := make(chan int64, 1)
	go func() { peakDone <- s.heapPeak(ctx, rig, "syncer-memory-heap.pprof", stopPeak) }()
	defer func() {
		select {
		case <-stopPeak:
		default:
			close(stopPeak)
		}
	}()
	t0 := time.Now()
	drain, cancel := context.WithTimeout(ctx, liveLimit)
	_, err = waitLiveProbe(drain, rig)
	cancel()
	if err != nil {
		return fmt.Errorf("restarted syncer: load and full sync: %w", err)
	}
	s.logf("memory: restarted syncer loaded and synced in %s", time.Since(t0).Round(time.Millisecond))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var made int64
	var cerr error
	wg.Add(1)
	go func() { defer wg.Done(); made, cerr = churn(ctx, rig.store, n, 10_000, stop) }()
	time.Sleep(s.o.ChurnDur)
	close(stop)
	wg.Wait()
	if cerr != nil {
		return fmt.Errorf("churn: %w", cerr)
	}
	s.logf("memory: churn made %d changes", made)
	b := &bulkResult{}
	if err := s.reassign(ctx, rig, s.o.Reassign, b); err != nil {
		return fmt.Errorf("reassign: %w", err)
	}
	last, err := rig.store.LastLogID(ctx)
	if err != nil {
		return err
	}
	fctx, fcancel := context.WithTimeout(ctx, liveLimit)
	defer fcancel()
	err = waitFor(fctx, "the map file at the last change", func() error {
		id, err := fileLogID(rig.mapPath)
		if err == nil && id != last {
			err = fmt.Errorf("file at %s, log at %s", id, last)
		}
		return err
	})
	if err != nil {
		return err
	}
	second, err := readMem(rig.syncer.pid())
	if err != nil {
		return err
	}
	close(stopPeak)
	if peak := <-peakDone; peak > 0 {
		s.logf("memory: largest live heap of the restarted syncer (sampled, as of a GC): %s; profile %s", mb(peak), filepath.Join(s.o.ProfileDir, "syncer-memory-heap.pprof"))
	}
	s.logf("memory: restarted syncer (load, full sync, churn, reassign, file): VmRSS %s VmHWM %s", mb(second.RSS), mb(second.HWM))
	m := first
	if second.HWM > m.HWM {
		m = second
	}
	res.syncerMem = &m
	res.liveUsers = n
	if hm, err := readMem(rig.fe.h.pid()); err == nil {
		res.liveHAProxy = &hm
	}
	return nil
}

// fileLogID reads the log ID in a map file's header.
func fileLogID(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return "", fmt.Errorf("%s: empty", path)
	}
	id, ok := strings.CutPrefix(sc.Text(), "# shardmap log-id=")
	if !ok {
		return "", fmt.Errorf("%s: no header", path)
	}
	id, _, _ = strings.Cut(id, " ")
	return id, nil
}

// heapPeak samples the syncer's heap profile (live heap as of its last GC)
// every 50 ms until stop, and keeps the one with the most bytes in use in
// ProfileDir/file: where the memory goes at the peak.
func (s *suite) heapPeak(ctx context.Context, rig *liveRig, file string, stop <-chan struct{}) (peak int64) {
	if s.o.ProfileDir == "" {
		<-stop
		return 0
	}
	get := func(debug int) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/debug/pprof/heap?debug=%d", rig.pprof, debug), nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return peak
		case <-ctx.Done():
			return peak
		case <-tick.C:
		}
		text, err := get(1)
		if err != nil {
			continue
		}
		// "heap profile: N: BYTES [...] @ heap/..."
		var objs, inuse int64
		if _, err := fmt.Sscanf(string(text), "heap profile: %d: %d", &objs, &inuse); err != nil || inuse <= peak {
			continue
		}
		if prof, err := get(0); err == nil {
			peak = inuse
			os.WriteFile(filepath.Join(s.o.ProfileDir, file), prof, 0o644)
		}
	}
}

package syncer

import (
	"context"
	"os"
	"time"

	"github.com/shardmap/shardmap/maps"
)

// mapFile writes the map file from the state in the background, one write
// at a time, so that sorting and writing a large map (0.5 s at 1M entries)
// does not hold up the reader; only after a hand edit of the file and at
// stop is it written in the loop (flushNow). Changes that arrive meanwhile
// make the next write due. A
// failed write is retried with capped backoff and is one state (kind file)
// until a write succeeds. Owned by the Run goroutine.
type mapFile struct {
	path       string
	mode       os.FileMode
	id         string    // change-log ID the file reflects
	dirtySince time.Time // first change not yet in the file; zero when none
	stamp      fileStamp // the file as we last wrote it
	writing    bool      // a background write is under way
	written    chan fileWrite
	retryAt    time.Time     // after a failed write, the next is not before this
	took       time.Duration // the last write's duration (see delay)
	backoff    *backoff
	metrics    *Metrics // times each write (nil: none)
}

// fileWrite is the outcome of one map-file write.
type fileWrite struct {
	id    string
	stamp fileStamp
	err   error
	took  time.Duration
}

// fileStamp identifies a version of the map file cheaply.
type fileStamp struct {
	size  int64
	mtime time.Time
}

func (f fileStamp) zero() bool { return f == fileStamp{} }

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{size: -1}
	}
	return fileStamp{size: fi.Size(), mtime: fi.ModTime()}
}

func (f *mapFile) init(path string, mode os.FileMode) {
	f.path, f.mode = path, mode
	f.written = make(chan fileWrite, 1)
	f.backoff = newBackoff(time.Second, 30*time.Second)
}

func (f *mapFile) markDirty() {
	if f.dirtySince.IsZero() {
		f.dirtySince = time.Now()
	}
}

// due reports whether the file lags the state.
func (f *mapFile) due(s *Syncer) bool {
	if !s.state.isLoaded() {
		return false
	}
	_, logID, _ := s.state.position()
	return !f.dirtySince.IsZero() || f.id != logID
}

// fileSnapshot is the state at one position, for the file: a frozen list
// that shares the names with the state (8 bytes per user), not a copy.
type fileSnapshot struct {
	entries *entryList
	logID   string
}

// snapshot takes the state for the file, under a short read lock.
func (f *mapFile) snapshot(s *Syncer) fileSnapshot {
	f.dirtySince = time.Time{}
	l, id := s.state.mapFile()
	return fileSnapshot{l, id}
}

// write sorts the snapshot (its 8-byte entries, not strings) and streams it
// to the file.
func (f *mapFile) write(snap fileSnapshot) fileWrite {
	start := time.Now()
	defer f.metrics.flushed(f.path, start)
	snap.entries.sort()
	_, err := maps.WriteMapFileFrom(f.path, snap.logID, snap.entries, f.mode)
	return fileWrite{id: snap.logID, stamp: stampOf(f.path), err: err, took: time.Since(start)}
}

// delay is how long changes wait before the file is written: FlushDelay,
// or eight times the last write's duration when that is longer, so that
// rewriting a big file under steady changes (0.2-0.4 s at 1M entries, most
// of it the sort) costs the syncer at most a ninth of a core: the file is
// what a restarted HAProxy loads before the syncer brings it up to date, a
// few seconds behind is fine.
func (f *mapFile) delay(s *Syncer) time.Duration {
	return max(s.cfg.FlushDelay, 8*f.took)
}

// bound shortens a wait so that the loop comes back when the file is due:
// soon while a write is under way, at the end of the flush delay, or when a
// failed write may be retried.
func (f *mapFile) bound(s *Syncer, wait time.Duration) time.Duration {
	switch {
	case f.writing:
		return min(wait, 20*time.Millisecond)
	case !f.due(s):
		return wait
	case time.Now().Before(f.retryAt):
		return max(time.Millisecond, min(wait, time.Until(f.retryAt)))
	case !f.dirtySince.IsZero():
		return max(time.Millisecond, min(wait, f.delay(s)-time.Since(f.dirtySince)))
	}
	return wait
}

// maybeStart begins a background write when one is due: changes wait out
// the flush delay, a header-only change (the position moved, no entry
// changed) is written at once, a failed write waits for its retry time.
func (f *mapFile) maybeStart(s *Syncer) {
	if f.writing || !f.due(s) || time.Now().Before(f.retryAt) {
		return
	}
	if !f.dirtySince.IsZero() && time.Since(f.dirtySince) < f.delay(s) {
		return
	}
	mf := f.snapshot(s)
	f.writing = true
	go func() { f.written <- f.write(mf) }()
}

// collect takes the outcome of a background write, if it has ended.
func (f *mapFile) collect(s *Syncer, ctx context.Context) {
	if !f.writing {
		return
	}
	select {
	case w := <-f.written:
		f.writing = false
		f.done(s, ctx, w)
	default:
	}
}

func (f *mapFile) done(s *Syncer, ctx context.Context, w fileWrite) error {
	if w.err != nil {
		f.markDirty()
		f.retryAt = time.Now().Add(f.backoff.next())
		s.setFileProblem(ctx, w.err)
		return w.err
	}
	f.id, f.stamp, f.retryAt, f.took = w.id, w.stamp, time.Time{}, w.took
	s.fileOK.Store(true)
	f.backoff.reset()
	s.mu.Lock()
	s.status.FileWritten = time.Now()
	s.mu.Unlock()
	s.setFileProblem(ctx, nil)
	return nil
}

// flushNow writes the file now, after any background write: after a full
// sync and when stopping.
func (f *mapFile) flushNow(s *Syncer) error {
	ctx := context.Background()
	if f.writing {
		f.writing = false
		if err := f.done(s, ctx, <-f.written); err != nil {
			return err
		}
	}
	if !f.due(s) {
		return nil
	}
	return f.done(s, ctx, f.write(f.snapshot(s)))
}

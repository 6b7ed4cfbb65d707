package syncer

import (
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/fsnotify/fsnotify"
)

// watchSocket signals kick (without blocking) whenever the socket file is
// created, removed or renamed: HAProxy going away or coming back. The
// directory is watched, since the file itself comes and goes. It returns a
// function that stops the watch.
//
// With socket-FD passing on reload the file is not recreated; the syncer's
// periodic show-info check covers that case.
func watchSocket(socket string, kick chan<- struct{}, log *slog.Logger) (stop func(), err error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", socket, err)
	}
	dir, name := filepath.Split(filepath.Clean(socket))
	if err := w.Add(filepath.Clean(dir)); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Base(ev.Name) != name || !ev.Has(fsnotify.Create|fsnotify.Remove|fsnotify.Rename) {
					continue
				}
				log.Debug("socket changed", "event", ev.Op.String())
				select {
				case kick <- struct{}{}:
				default:
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("socket watch error", "err", err)
			}
		}
	}()
	return func() { w.Close(); <-done }, nil
}

// Package atomicfile replaces files so that a reader sees either the old
// content or the new, never a part, and a crash or power loss leaves one of
// the two on disk. It is shared by the map file writer (maps), the topology
// editor and the config renderer (haproxy), without linking either.
package atomicfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// testHookBeforeRename, when set by a test, runs after the temp file is
// written and synced and before it is renamed over the target: a crash there
// must leave the old file whole.
var testHookBeforeRename func()

// tempPrefix is how the temp files of target path start; RemoveStale finds
// the leftovers of a crashed Write by it. The leading dot keeps them out of
// globs such as /etc/haproxy/*.map.
func tempPrefix(path string) string { return "." + filepath.Base(path) + ".tmp-" }

// Write replaces path with data atomically: it writes a temp file in path's
// directory, fsyncs it, renames it over path and fsyncs the directory so the
// rename itself survives a power loss. On every error the temp file is
// removed and path is left as it was.
//
// An existing file keeps its permission bits and its owner (uid and gid): the
// temp file is chmod-ed and, when its owner differs, fchown-ed to match before
// the rename. Changing the owner needs the privilege to do so (root, or the
// same uid and a group the caller is in); without it Write fails with an error
// that wraps os.ErrPermission and leaves path unchanged. mode is used only
// when path does not exist yet (it is not subject to the umask). A symlink at
// path is replaced by a regular file.
//
// Write always writes; callers that want to skip identical content compare
// first (maps.WriteMapFile does).
func Write(path string, data []byte, mode os.FileMode) error {
	return WriteFrom(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}, mode)
}

// WriteFrom is Write with the content written by write into the temp file
// (buffered), for content too large to hold in memory at once. An error from
// write is returned as it is, and path is left as it was.
func WriteFrom(path string, write func(w io.Writer) error, mode os.FileMode) (err error) {
	perm := mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	uid, gid := -1, -1
	if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("write %s: %w", path, err)
	}

	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	renamed := false
	defer func() {
		if err != nil && !renamed {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 64<<10)
	if err = write(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if uid >= 0 {
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("stat %s: %w", tmp, err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && (int(st.Uid) != uid || int(st.Gid) != gid) {
			if err = f.Chown(uid, gid); err != nil {
				return fmt.Errorf("keep owner %d:%d of %s: %w", uid, gid, path, err)
			}
		}
	}
	// After the chown: chown clears the setuid and setgid bits.
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if testHookBeforeRename != nil {
		testHookBeforeRename()
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	renamed = true // tmp is path now: the cleanup must not remove it
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// RemoveStale removes the temp files a Write of path left behind when the
// process was killed during it (".users.map.tmp-*" beside users.map) and
// returns the paths it removed. Only regular files with that prefix are
// touched; path itself and every other file are left alone. Call it at start,
// before any Write of path runs, since it cannot tell a live Write's temp file
// from a dead one. Removing continues past a failure; the failures are joined.
func RemoveStale(path string) (removed []string, err error) {
	dir := filepath.Dir(path)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("remove stale temp files of %s: %w", path, err)
	}
	prefix := tempPrefix(path)
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, prefix) || len(name) == len(prefix) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, name)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove stale temp file %s: %w", p, err))
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}

package syncer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shardmap/shardmap/internal/atomicfile"
	"github.com/shardmap/shardmap/runtime"
)

// ErrNameTaken: another running syncer reports under this syncer's name.
// Two syncers under one name would make mapctl --wait and status trust one
// HAProxy's position for another's.
var ErrNameTaken = errors.New("another running syncer has this name")

// A syncer holds keys in Redis while it runs (see maps.Store.Claim): its
// name, which no other running syncer may use; the lease of each HAProxy map
// it drives, which makes one of several syncers of one target active and the
// others standbys ready to take over; and the lease of the map file, so that
// one syncer writes it. All are renewed every heartbeat and expire ClaimTTL
// after the holder stops.
type claims struct {
	mu          sync.Mutex
	nameKey     string
	nameLostErr error // set when another syncer took the name
}

// lease is one lease the syncer takes and renews: of a target, or of the
// map file. ident names what is leased as it is now ("" and an error when
// it cannot be told yet, e.g. the socket's directory is not there).
type lease struct {
	ident func() (string, error)

	mu    sync.Mutex
	key   string    // "" until the leased thing is known
	at    time.Time // last successful take or renewal
	other string    // the holder, while another syncer holds it
	err   error     // why the last renewal failed, when Redis did not answer
	// identErr is why the leased thing cannot be identified yet (a socket
	// whose directory does not exist): the lease cannot even be asked for.
	identErr error
}

func newInstanceID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// claimName takes the syncer's name in Redis. A name held by another
// instance is waited for up to ClaimTTL and a second (a predecessor killed
// without releasing it), then refused with ErrNameTaken naming the other.
// Redis being away is waited out until ctx ends.
func (s *Syncer) claimName(ctx context.Context) error {
	s.claims.nameKey = s.store.NameClaimKey(s.cfg.Name)
	var heldSince time.Time
	logged := false
	backoff := newBackoff(100*time.Millisecond, time.Second)
	for ctx.Err() == nil {
		held, other, err := s.claim(ctx, s.claims.nameKey)
		switch {
		case err != nil:
			if !logged {
				s.log.Warn("cannot claim the syncer's name in Redis yet, retrying", "name", s.cfg.Name, "err", err)
				logged = true
			}
		case held:
			return nil
		default:
			if heldSince.IsZero() {
				heldSince = time.Now()
				s.log.Info("syncer name held by another instance; waiting for it to expire", "name", s.cfg.Name, "other", other)
			}
			if time.Since(heldSince) > s.cfg.ClaimTTL+time.Second {
				return fmt.Errorf("syncer: %w: %q is held by running instance %s (a syncer reports every %s under its name); "+
					"give this one another --name, or stop the other", ErrNameTaken, s.cfg.Name, other, s.cfg.Heartbeat)
			}
		}
		sleepCtx(ctx, backoff.next())
	}
	return nil
}

func (s *Syncer) claim(ctx context.Context, key string) (bool, string, error) {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Heartbeat)
	defer cancel()
	return s.store.Claim(cctx, key, s.instance, s.cfg.ClaimTTL)
}

// renewClaims runs every heartbeat: it renews the name (noticing if another
// took it meanwhile), and renews or tries to take every lease.
func (s *Syncer) renewClaims(ctx context.Context) {
	held, other, err := s.claim(ctx, s.claims.nameKey)
	if err == nil && !held {
		s.claims.mu.Lock()
		s.claims.nameLostErr = fmt.Errorf("syncer: %w: %q was taken by instance %s while this one could not renew it", ErrNameTaken, s.cfg.Name, other)
		s.claims.mu.Unlock()
	}
	s.mu.Lock()
	s.nameErr = err // the loop logs the state change
	s.mu.Unlock()
	for _, t := range s.targets {
		s.renewLease(ctx, &t.lease)
	}
	// The file's lease is taken only by the reader, once a target accepted
	// the state (holdFileLease); here it is only renewed.
	if s.fileActive.Load() {
		s.renewLease(ctx, &s.fileLease)
	}
}

// nameLost is the error to stop with once another syncer took the name.
func (c *claims) nameLost() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nameLostErr
}

// holder names the lease's holder while another syncer holds it.
func (l *lease) holder() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.other
}

// refreshKey sets the lease's key for the leased thing as it is now: a
// socket's directory may have been recreated (a HAProxy restart with
// systemd's RuntimeDirectory=), which changes it for every syncer alike. A
// lease held under the old key is released. When it cannot be told, the key
// last known stands. It returns the key and whether it changed.
func (s *Syncer) refreshKey(ctx context.Context, l *lease) (string, bool) {
	id, err := l.ident()
	l.mu.Lock()
	l.identErr = err
	old, held := l.key, !l.at.IsZero()
	key := old
	if err == nil {
		key = s.store.LeaseKey(id)
	}
	if key == old {
		l.mu.Unlock()
		return old, false
	}
	l.key, l.at = key, time.Time{}
	l.mu.Unlock()
	if old != "" && held {
		s.store.Release(ctx, old, s.instance)
	}
	return key, true
}

// renewLease renews the lease, or takes it when it is free.
func (s *Syncer) renewLease(ctx context.Context, l *lease) {
	key, _ := s.refreshKey(ctx, l)
	if key == "" {
		return // not there yet
	}
	held, other, err := s.claim(ctx, key)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = err
	if err != nil {
		return // Redis away: the lease runs out unless renewed in time
	}
	if held {
		l.at, l.other = time.Now(), ""
	} else {
		l.at, l.other = time.Time{}, other
	}
}

// valid reports whether the lease was renewed recently enough that no other
// syncer can have taken it: a margin of a heartbeat before it expires.
func (l *lease) valid(ttl, heartbeat time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.at.IsZero() && time.Since(l.at) < ttl-heartbeat
}

// holdLease reports whether the target may be written to now: this syncer
// holds its lease, renewed recently enough that no other syncer can have
// taken it. Taking the lease makes the live map in doubt (another syncer
// drove it); losing it stops all writes.
func (t *target) holdLease(ctx context.Context) bool {
	s := t.s
	// renewLease looks at the target itself; an active target renews from
	// the heartbeat, and here only when the target changed under it.
	if !t.active.Load() {
		s.renewLease(ctx, &t.lease)
	} else if _, changed := s.refreshKey(ctx, &t.lease); changed {
		s.renewLease(ctx, &t.lease)
	}
	valid := t.leaseValid()
	switch {
	case valid && !t.active.Load():
		t.active.Store(true)
		t.doubt(reasonLease)
		t.log.Info("holding the map's lease: this syncer drives the target's live map")
	case !valid && t.active.Load():
		t.active.Store(false)
		t.lease.mu.Lock()
		other, why := t.lease.other, t.lease.err
		t.lease.mu.Unlock()
		if other != "" {
			t.log.Warn("lost the target's lease to another syncer: stopping writes to it", "holder", other)
			s.setProblems(ctx, func() { t.loop = nil }) // a standby's old failure is not its state
		} else {
			// Redis did not answer for the lease's lifetime: that is the
			// state, not a takeover.
			if why == nil {
				why = errors.New("not renewed in time")
			}
			t.setProblem(ctx, fail(kindRedis, fmt.Errorf("the map's lease ran out, writes to HAProxy stopped: %w", why)))
		}
	}
	if !t.active.Load() {
		// A target that cannot be identified never gets a lease: say why,
		// rather than look like one still starting.
		t.lease.mu.Lock()
		identErr := t.lease.identErr
		t.lease.mu.Unlock()
		if identErr != nil {
			t.setProblem(ctx, fail(kindHAProxy, fmt.Errorf("cannot reach the target to lease it: %w", identErr)))
			return false
		}
	}
	s.setProblems(ctx, func() {})
	return t.active.Load()
}

func (t *target) leaseValid() bool { return t.lease.valid(t.s.cfg.ClaimTTL, t.s.cfg.Heartbeat) }

// writeAllowed is nil while this syncer holds the target's lease, renewed
// recently enough that no other syncer can have taken it, and errLeaseLost
// otherwise. It is the runtime client's write guard, so that a syncer paused
// in the middle of a long swap sends nothing more once it resumes. Safe for
// concurrent use.
func (t *target) writeAllowed() error {
	if !t.leaseValid() {
		return errLeaseLost
	}
	return nil
}

// errLeaseLost: a write to HAProxy was about to start after the lease ran
// out (the syncer was paused, or Redis was away for its lifetime).
var errLeaseLost = errors.New("the map's lease ran out before a write to HAProxy")

// holdFileLease reports whether this syncer may write the map file now. On
// taking it, leftover temp files of an interrupted write are removed: only
// the file's writer may, a standby would remove the one being written.
func (s *Syncer) holdFileLease(ctx context.Context) bool {
	if !s.fileActive.Load() {
		s.renewLease(ctx, &s.fileLease)
	}
	valid := s.fileLease.valid(s.cfg.ClaimTTL, s.cfg.Heartbeat)
	switch {
	case valid && !s.fileActive.Load():
		s.fileActive.Store(true)
		s.log.Info("holding the map file's lease: this syncer writes it", "file", s.cfg.MapFile)
		if removed, err := atomicfile.RemoveStale(s.cfg.MapFile); err != nil {
			s.log.Warn("cannot remove leftover temp files of the map file", "err", err)
		} else if len(removed) > 0 {
			s.log.Info("removed leftover temp files of the map file (a write was interrupted)", "files", removed)
		}
	case !valid && s.fileActive.Load():
		s.fileActive.Store(false)
		s.log.Warn("lost the map file's lease: another syncer writes it", "holder", s.fileLease.holder())
	}
	if !s.fileActive.Load() {
		// Not the file's writer: an old write's failure is not this
		// syncer's state; a file whose lease cannot even be named (its
		// directory is missing) is.
		_, err := s.fileLease.ident()
		if err != nil {
			err = fmt.Errorf("map file %s: %w", s.cfg.MapFile, err)
		}
		s.setFileProblem(ctx, err)
	}
	return s.fileActive.Load()
}

// releaseClaims drops the name and the leases at a clean stop, so that a
// successor need not wait for them to expire.
func (s *Syncer) releaseClaims() {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Heartbeat)
	defer cancel()
	release := func(l *lease) {
		l.mu.Lock()
		key, held := l.key, !l.at.IsZero()
		l.mu.Unlock()
		if held {
			s.store.Release(ctx, key, s.instance)
		}
	}
	for _, t := range s.targets {
		release(&t.lease)
	}
	release(&s.fileLease)
	if s.claims.nameKey != "" {
		s.store.Release(ctx, s.claims.nameKey, s.instance)
	}
}

// leaseTarget identifies the HAProxy map a syncer drives, the same for every
// syncer that reaches the same socket on the same machine whatever path it
// uses, and different for HAProxy processes in separate containers that use
// the same path: the kernel's boot ID, the device and inode of the socket's
// directory (stable across HAProxy reloads, which recreate the socket file),
// the socket's name and the map. A TCP target is its address (and the boot
// ID when it is a loopback address, which names another process on each
// machine).
func leaseTarget(socket, mapPath string) (string, error) {
	id := []string{"map=" + mapPath}
	network, addr, err := runtime.ParseAddress(socket)
	if err == nil && network == "unix" {
		socket = addr // without unix@
	}
	if err == nil && network == "tcp" {
		id = append(id, "tcp="+addr)
		if host, _, _ := net.SplitHostPort(addr); host == "localhost" || net.ParseIP(host).IsLoopback() {
			id = append(id, "boot="+bootID())
		}
	} else if socket != "" {
		dir, name, err := inDir(socket)
		if err != nil {
			return "", err
		}
		id = append(id, dir, "socket="+name)
	}
	sum := sha256.Sum256([]byte(strings.Join(id, "\n")))
	return hex.EncodeToString(sum[:12]), nil
}

// bootID is the running kernel's boot ID, read once: leaseTarget runs every
// loop step.
var bootID = sync.OnceValue(func() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
})

// fileIdent identifies the map file a syncer writes, the same for every
// syncer on the machine that writes it whatever path it uses: the boot ID,
// the device and inode of its directory and its name.
func fileIdent(path string) (string, error) {
	dir, name, err := inDir(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(strings.Join([]string{"file=" + name, dir}, "\n")))
	return "file-" + hex.EncodeToString(sum[:12]), nil
}

// inDir names the directory of path by the boot ID and its device and
// inode (stable while the directory exists, whatever path reaches it), and
// returns path's base name.
func inDir(path string) (dir, name string, err error) {
	d, name := filepath.Split(filepath.Clean(path))
	fi, err := os.Stat(filepath.Clean(d))
	if err != nil {
		return "", "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", "", fmt.Errorf("stat %s: no device and inode", d)
	}
	return fmt.Sprintf("boot=%s\ndir=%d:%d", bootID(), st.Dev, st.Ino), name, nil
}

package syncer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shardmap/shardmap/internal/atomicfile"
)

// ErrNameTaken: another running syncer reports under this syncer's name.
// Two syncers under one name would make mapctl --wait and status trust one
// HAProxy's position for another's.
var ErrNameTaken = errors.New("another running syncer has this name")

// claims are the two keys a syncer holds in Redis while it runs (see
// maps.Store.Claim): its name, which no other running syncer may use, and
// the lease of the HAProxy map it drives, which makes one of several syncers
// of one map active and the others standbys ready to take over. Both are
// renewed every heartbeat and expire ClaimTTL after the holder stops.
type claims struct {
	mu          sync.Mutex
	nameKey     string
	nameLostErr error     // set when another syncer took the name
	leaseKey    string    // "" until the target is known
	leaseAt     time.Time // last successful take or renewal of the lease
	leaseOther  string    // the holder, while another syncer holds it
	leaseErr    error     // why the last renewal failed, when Redis did not answer
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
		s.sleep(ctx, backoff.next())
	}
	return nil
}

func (s *Syncer) claim(ctx context.Context, key string) (bool, string, error) {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Heartbeat)
	defer cancel()
	return s.store.Claim(cctx, key, s.instance, s.cfg.ClaimTTL)
}

// renewClaims runs every heartbeat: it renews the name (noticing if another
// took it meanwhile), and renews or tries to take the lease.
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
	s.renewLease(ctx)
}

// nameLost is the error to stop with once another syncer took the name.
func (c *claims) nameLost() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nameLostErr
}

// standbyFor names the lease's holder while another syncer holds it.
func (c *claims) standbyFor() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leaseOther
}

// refreshLeaseKey sets the lease's key for the target as it is now: the
// socket's directory may have been recreated (a HAProxy restart with
// systemd's RuntimeDirectory=), which changes it for every syncer alike. A
// lease held under the old key is released. When the directory is not
// there, the key last known stands. It returns the key and whether it
// changed.
func (s *Syncer) refreshLeaseKey(ctx context.Context) (string, bool) {
	target, err := leaseTarget(s.cfg.Socket, s.cfg.MapPath)
	s.claims.mu.Lock()
	old, held := s.claims.leaseKey, !s.claims.leaseAt.IsZero()
	key := old
	if err == nil {
		key = s.store.LeaseKey(target)
	}
	if key == old {
		s.claims.mu.Unlock()
		return old, false
	}
	s.claims.leaseKey, s.claims.leaseAt = key, time.Time{}
	s.claims.mu.Unlock()
	if old != "" && held {
		s.store.Release(ctx, old, s.instance)
	}
	return key, true
}

// renewLease renews the lease, or takes it when it is free.
func (s *Syncer) renewLease(ctx context.Context) {
	key, _ := s.refreshLeaseKey(ctx)
	if key == "" {
		return // the socket's directory is not there yet
	}
	held, other, err := s.claim(ctx, key)
	s.claims.mu.Lock()
	defer s.claims.mu.Unlock()
	s.claims.leaseErr = err
	if err != nil {
		return // Redis away: the lease runs out unless renewed in time
	}
	if held {
		s.claims.leaseAt, s.claims.leaseOther = time.Now(), ""
	} else {
		s.claims.leaseAt, s.claims.leaseOther = time.Time{}, other
	}
}

// holdLease reports whether this syncer may write to HAProxy now: it holds
// the lease, renewed recently enough that no other syncer can have taken it
// (a margin of a heartbeat before it expires). Taking the lease makes the
// live map in doubt (another syncer drove it); losing it stops all writes.
func (s *Syncer) holdLease(ctx context.Context) bool {
	// renewLease looks at the target itself; an active syncer renews from
	// the heartbeat, and here only when the target changed under it.
	if !s.active {
		s.renewLease(ctx)
	} else if _, changed := s.refreshLeaseKey(ctx); changed {
		s.renewLease(ctx)
	}
	valid := s.leaseValid()
	switch {
	case valid && !s.active:
		s.active, s.needFull = true, true
		s.cfg.Metrics.needFull(s.cfg.Socket, reasonLease)
		s.log.Info("holding the map's lease: this syncer drives the live map")
		// Only the active syncer may remove the map file's temp files: a
		// standby would remove the one the active syncer is writing.
		if removed, err := atomicfile.RemoveStale(s.cfg.MapPath); err != nil {
			s.log.Warn("cannot remove leftover temp files of the map file", "err", err)
		} else if len(removed) > 0 {
			s.log.Info("removed leftover temp files of the map file (a write was interrupted)", "files", removed)
		}
	case !valid && s.active:
		s.active = false
		s.claims.mu.Lock()
		other, why := s.claims.leaseOther, s.claims.leaseErr
		s.claims.mu.Unlock()
		if other != "" {
			s.log.Warn("lost the map's lease to another syncer: stopping writes to HAProxy", "holder", other)
			s.setProblems(ctx, func() { s.loop = nil }) // a standby's old failure is not its state
		} else {
			// Redis did not answer for the lease's lifetime: that is the
			// state, not a takeover.
			if why == nil {
				why = errors.New("not renewed in time")
			}
			s.setLoopProblem(ctx, fail(kindRedis, fmt.Errorf("the map's lease ran out, writes to HAProxy stopped: %w", why)))
		}
	}
	s.setProblems(ctx, func() {})
	return s.active
}

// leaseValid reports whether the lease was renewed recently enough that no
// other syncer can have taken it: a margin of a heartbeat before it expires.
func (s *Syncer) leaseValid() bool {
	s.claims.mu.Lock()
	defer s.claims.mu.Unlock()
	return !s.claims.leaseAt.IsZero() && time.Since(s.claims.leaseAt) < s.cfg.ClaimTTL-s.cfg.Heartbeat
}

// WriteAllowed is nil while this syncer holds its map's lease, renewed
// recently enough that no other syncer can have taken it, and errLeaseLost
// otherwise. Give it to runtime.Client.SetWriteGuard, so that a syncer
// paused in the middle of a long swap sends nothing more once it resumes.
// Safe for concurrent use.
func (s *Syncer) WriteAllowed() error {
	if !s.leaseValid() {
		return errLeaseLost
	}
	return nil
}

// errLeaseLost: a write to HAProxy was about to start after the lease ran
// out (the syncer was paused, or Redis was away for its lifetime).
var errLeaseLost = errors.New("the map's lease ran out before a write to HAProxy")

// releaseClaims drops the name and the lease at a clean stop, so that a
// successor need not wait for them to expire.
func (s *Syncer) releaseClaims() {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Heartbeat)
	defer cancel()
	s.claims.mu.Lock()
	lease, held := s.claims.leaseKey, !s.claims.leaseAt.IsZero()
	s.claims.mu.Unlock()
	if held {
		s.store.Release(ctx, lease, s.instance)
	}
	if s.claims.nameKey != "" {
		s.store.Release(ctx, s.claims.nameKey, s.instance)
	}
}

// leaseTarget identifies the HAProxy map a syncer drives, the same for every
// syncer that reaches the same socket on the same machine whatever path it
// uses, and different for HAProxy processes in separate containers that use
// the same path: the kernel's boot ID, the device and inode of the socket's
// directory (stable across HAProxy reloads, which recreate the socket file),
// the socket's name and the map.
func leaseTarget(socket, mapPath string) (string, error) {
	id := []string{"map=" + mapPath}
	if socket != "" {
		dir, name := filepath.Split(filepath.Clean(socket))
		fi, err := os.Stat(filepath.Clean(dir))
		if err != nil {
			return "", err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return "", fmt.Errorf("stat %s: no device and inode", dir)
		}
		id = append(id, "boot="+bootID(), fmt.Sprintf("dir=%d:%d", st.Dev, st.Ino), "socket="+name)
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

package move

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/maps"
)

// The Redis keys of moves, all under the store's prefix (its {shardmap}
// hash tag keeps them in the one Cluster slot the scripts need):
//
//	PREFIX:move:ID                 hash: the move's record (fields below)
//	PREFIX:moves                   sorted set: move IDs by creation time (ms)
//	PREFIX:move:lock:KIND:SUBJECT  string: the ID of the unfinished move of a
//	                               user or logical shard (one at a time)
//	PREFIX:move:owner:ID           string with a TTL: the lease of the process
//	                               driving the move
func (m *Mover) recordKey(id string) string { return m.prefix + ":move:" + id }
func (m *Mover) indexKey() string           { return m.prefix + ":moves" }
func (m *Mover) ownerKey(id string) string  { return m.prefix + ":move:owner:" + id }
func (m *Mover) lockKey(k Kind, subject string) string {
	return m.prefix + ":move:lock:" + string(k) + ":" + subject
}

// idPattern is the shape of a move ID: its UTC creation second and 6 random
// hex digits.
var idPattern = regexp.MustCompile(`^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$`)

func newID(now time.Time) (string, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("move id: %w", err)
	}
	return now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:]), nil
}

// checkID refuses what cannot be a move ID (bad input).
func checkID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w: move ID %q: want YYYYMMDD-HHMMSS-xxxxxx as mapctl move printed it", maps.ErrInvalid, id)
	}
	return nil
}

// createScript records a new move and takes its subject's lock and the
// owner lease, all or nothing. KEYS: lock, record, index, owner. ARGV: id,
// score, lease ms, token, then the record's field/value pairs. It returns
// {1} or {0, the ID of the move holding the lock}.
var createScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[1])
if holder then return {0, holder} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return {1}
`)

// updateScript writes fields of a move's record only while the caller holds
// its owner lease; with ARGV[2] == '1' it also ends the move: it frees the
// subject's lock (if it still names the move) and the lease. KEYS: owner,
// record, lock. ARGV: token, end, id, then field/value pairs. It returns 1,
// or 0 (lease lost: nothing written).
var updateScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
if ARGV[2] == '1' then
  if redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
  redis.call('DEL', KEYS[1])
end
return 1
`)

// renewScript extends the lease KEYS[1] to ARGV[2] ms if it still holds
// the token ARGV[1]; releaseScript deletes it on the same condition.
var (
	renewScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`)
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)
)

// fields returns mv's record as field/value pairs.
func (mv *Move) fields() []any {
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	return []any{
		"id", mv.ID, "kind", string(mv.Kind), "subject", mv.Subject, "from", mv.From, "to", mv.To,
		"route", mv.Route, "reason", mv.Reason,
		"created", mv.Created.UTC().Format(time.RFC3339Nano), "updated", mv.Updated.UTC().Format(time.RFC3339Nano),
		"step", string(mv.Step), "state", string(mv.State), "error", mv.Error, "attempts", strconv.Itoa(mv.Attempts),
		"freeze", b(mv.Freeze), "freeze_id", mv.FreezeID, "flip_id", mv.FlipID,
		"freeze_cmd", mv.Hooks.Freeze, "unfreeze_cmd", mv.Hooks.Unfreeze, "copy_cmd", mv.Hooks.Copy,
		"verify_cmd", mv.Hooks.Verify, "cleanup_cmd", mv.Hooks.Cleanup,
		"hook_timeout", mv.Hooks.Timeout.String(), "retries", strconv.Itoa(mv.Hooks.Retries), "retry_delay", mv.Hooks.RetryDelay.String(),
	}
}

// parseRecord reads a record from Redis, which is untrusted: a field that
// does not parse is an error naming it.
func parseRecord(h map[string]string) (*Move, error) {
	mv := &Move{
		ID: h["id"], Kind: Kind(h["kind"]), Subject: h["subject"], From: h["from"], To: h["to"],
		Route: h["route"], Reason: h["reason"], Step: Step(h["step"]), State: State(h["state"]), Error: h["error"],
		Freeze: h["freeze"] == "1", FreezeID: h["freeze_id"], FlipID: h["flip_id"],
		Hooks: Hooks{Freeze: h["freeze_cmd"], Unfreeze: h["unfreeze_cmd"], Copy: h["copy_cmd"], Verify: h["verify_cmd"], Cleanup: h["cleanup_cmd"]},
	}
	var errs []error
	bad := func(field string, err error) {
		errs = append(errs, fmt.Errorf("field %s %q: %w", field, h[field], err))
	}
	var err error
	if mv.Created, err = time.Parse(time.RFC3339Nano, h["created"]); err != nil {
		bad("created", err)
	}
	if mv.Updated, err = time.Parse(time.RFC3339Nano, h["updated"]); err != nil {
		bad("updated", err)
	}
	if mv.Attempts, err = strconv.Atoi(h["attempts"]); err != nil {
		bad("attempts", err)
	}
	if mv.Hooks.Retries, err = strconv.Atoi(h["retries"]); err != nil {
		bad("retries", err)
	}
	if mv.Hooks.Timeout, err = time.ParseDuration(h["hook_timeout"]); err != nil {
		bad("hook_timeout", err)
	}
	if mv.Hooks.RetryDelay, err = time.ParseDuration(h["retry_delay"]); err != nil {
		bad("retry_delay", err)
	}
	if mv.Kind != KindUser && mv.Kind != KindLogical {
		bad("kind", errors.New("want user or logical"))
	}
	if stepIndex(mv.Step) < 0 {
		bad("step", errors.New("unknown step"))
	}
	switch mv.State {
	case StateRunning, StateFailed, StateDone, StateAborted:
	default:
		bad("state", errors.New("unknown state"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("move %s: unreadable record: %w", mv.ID, err)
	}
	return mv, nil
}

// load reads the move id (ErrNotFound when there is none).
func (m *Mover) load(ctx context.Context, id string) (*Move, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	h, err := m.rdb.HGetAll(ctx, m.recordKey(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("redis read move %s: %w", id, err)
	}
	if len(h) == 0 {
		return nil, fmt.Errorf("%w: move %s: %w", maps.ErrInvalid, id, ErrNotFound)
	}
	mv, err := parseRecord(h)
	if err != nil {
		return nil, err
	}
	n, err := m.rdb.Exists(ctx, m.ownerKey(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("redis read move %s owner: %w", id, err)
	}
	mv.Driven = n == 1
	return mv, nil
}

// create records mv (step plan), takes its subject's lock and the owner
// lease under token.
func (m *Mover) create(ctx context.Context, mv *Move, token string) error {
	args := append([]any{mv.ID, mv.Created.UnixMilli(), m.leaseTTL.Milliseconds(), token}, mv.fields()...)
	res, err := createScript.Run(ctx, m.rdb, []string{m.lockKey(mv.Kind, mv.Subject), m.recordKey(mv.ID), m.indexKey(), m.ownerKey(mv.ID)}, args...).Slice()
	if err != nil {
		return fmt.Errorf("redis record move %s: %w", mv.ID, err)
	}
	if len(res) == 0 {
		return fmt.Errorf("redis record move %s: unexpected reply %v", mv.ID, res)
	}
	if ok, _ := res[0].(int64); ok != 1 {
		holder := ""
		if len(res) > 1 {
			holder, _ = res[1].(string)
		}
		return busy(mv.Kind, mv.Subject, holder)
	}
	return nil
}

// save writes mv's whole record while token holds its lease; end also
// frees the subject's lock and the lease. A lost lease is ErrLeaseLost.
func (m *Mover) save(ctx context.Context, mv *Move, token string, end bool) error {
	e := "0"
	if end {
		e = "1"
	}
	args := append([]any{token, e, mv.ID}, mv.fields()...)
	n, err := updateScript.Run(ctx, m.rdb, []string{m.ownerKey(mv.ID), m.recordKey(mv.ID), m.lockKey(mv.Kind, mv.Subject)}, args...).Int()
	if err != nil {
		return fmt.Errorf("redis save move %s: %w", mv.ID, err)
	}
	if n != 1 {
		return fmt.Errorf("move %s: %w", mv.ID, ErrLeaseLost)
	}
	return nil
}

// acquire takes the owner lease of move id, or returns ErrBusy when a live
// process holds it.
func (m *Mover) acquire(ctx context.Context, id string) (string, error) {
	token, err := newID(time.Now())
	if err != nil {
		return "", err
	}
	ok, err := m.rdb.SetNX(ctx, m.ownerKey(id), token, m.leaseTTL).Result()
	if err != nil {
		return "", fmt.Errorf("redis take move %s lease: %w", id, err)
	}
	if !ok {
		return "", fmt.Errorf("%w: move %s is being driven by another mapctl right now (its lease lasts %s after that process dies)", ErrBusy, id, m.leaseTTL)
	}
	return token, nil
}

// keepLease renews the lease every third of its TTL until the returned stop
// is called; stop does not release it (save with end, or release, does).
// When the lease is found taken by another process, or no renewal was
// confirmed for a whole TTL (Redis unreachable from here: by then another
// process may hold it), lost (if not nil) is called and renewing ends.
func (m *Mover) keepLease(ctx context.Context, id, token string, lost func()) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(m.leaseTTL / 3)
		defer t.Stop()
		// The lease lasts at least a TTL from the sending of the last
		// renewal that succeeded (local monotonic time; Redis's clock sets
		// the expiry); the first is taken as when the caller set it.
		confirmed := time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				sent := time.Now()
				rctx, rcancel := context.WithTimeout(ctx, m.leaseTTL/3)
				n, err := renewScript.Run(rctx, m.rdb, []string{m.ownerKey(id)}, token, m.leaseTTL.Milliseconds()).Int()
				rcancel()
				switch {
				case err == nil && n == 1:
					confirmed = sent
					continue
				case err == nil:
					m.log.Warn("move lease lost", "move", id)
				case ctx.Err() != nil:
					return
				case time.Since(confirmed) < m.leaseTTL:
					continue
				default:
					m.log.Warn("move lease not renewed for its TTL: taken as lost", "move", id, "err", err)
				}
				if lost != nil {
					lost()
				}
				return
			}
		}
	}()
	return func() { cancel(); <-done }
}

// release gives the lease up (best effort, on a context of its own so it
// runs after the caller's ended).
func (m *Mover) release(ctx context.Context, id, token string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	releaseScript.Run(ctx, m.rdb, []string{m.ownerKey(id)}, token)
}

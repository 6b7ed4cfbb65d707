// Package move moves a user (or, with routing: ids, a logical shard) from
// one shard to another as a resumable state machine recorded in Redis:
// plan -> freeze -> copy -> flip -> verify -> cleanup -> done. Each step is
// recorded done before the next starts, so a process killed at any point
// leaves a record that says where it stood, and Resume reruns the step that
// had started (hooks must be idempotent). docs/MOVES.md is the runbook.
package move

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shardmap/shardmap/maps"
)

// Kind is what a move moves.
type Kind string

// The two kinds of move.
const (
	KindUser    Kind = "user"    // one user (an ID in routing: ids) in the store
	KindLogical Kind = "logical" // a logical shard in the logical map (routing: ids)
)

// Step is a step of a move, in this order.
type Step string

// The steps. A move's recorded step is the one it runs next (or is running).
const (
	StepPlan    Step = "plan"    // validate and record the move, lock its subject
	StepFreeze  Step = "freeze"  // route to maps.HoldShard (--freeze) and run the freeze hook
	StepCopy    Step = "copy"    // run the copy hook
	StepFlip    Step = "flip"    // route to the destination, wait for the fleet, run the unfreeze hook
	StepVerify  Step = "verify"  // run the verify hook
	StepCleanup Step = "cleanup" // run the cleanup hook (delete on the old shard)
	StepDone    Step = "done"
)

// Steps lists the steps in order.
var Steps = []Step{StepPlan, StepFreeze, StepCopy, StepFlip, StepVerify, StepCleanup, StepDone}

func stepIndex(s Step) int {
	for i, x := range Steps {
		if x == s {
			return i
		}
	}
	return -1
}

// State is where a move stands.
type State string

// The states. Running and failed moves hold their subject's lock.
const (
	StateRunning State = "running" // a process drives it (or was killed: see Move.Driven)
	StateFailed  State = "failed"  // stopped at Step with Error; Resume or Abort it
	StateDone    State = "done"
	StateAborted State = "aborted" // routing rolled back to the move's start
)

// Defaults of the hook policy (mapctl's flag defaults).
const (
	DefaultHookTimeout = 5 * time.Minute
	DefaultRetries     = 2
	DefaultRetryDelay  = time.Second
	// DefaultLeaseTTL is how long a move's owner lease outlives a killed
	// process: a resume after kill -9 is refused for at most this long.
	DefaultLeaseTTL = 5 * time.Second
)

// Errors a caller decides on with errors.Is.
var (
	// ErrBusy: the subject has an unfinished move, or the move is being
	// driven by another live process.
	ErrBusy = errors.New("move in progress")
	// ErrNotFound: no move has this ID (wrapped with maps.ErrInvalid too).
	ErrNotFound = errors.New("no such move")
	// ErrFinished: the move is done or aborted; nothing to resume or abort.
	ErrFinished = errors.New("move already finished")
	// ErrTooLate: abort refused, the cleanup step has started.
	ErrTooLate = errors.New("too late to abort")
	// ErrLeaseLost: another process took the move over while this one
	// drove it (this one was paused for longer than the lease).
	ErrLeaseLost = errors.New("move lease lost to another process")
	// ErrRoutingChanged: the routing is neither what the move set nor what
	// it expected; someone else changed it, and the move does not overwrite.
	ErrRoutingChanged = errors.New("routing changed by someone else")
)

// Hooks are the operator's commands, each run by `sh -c` (see
// docs/MOVES.md for the environment). "" skips a hook.
type Hooks struct {
	Freeze, Unfreeze, Copy, Verify, Cleanup string
	Timeout                                 time.Duration // per attempt; <= 0: DefaultHookTimeout
	Retries                                 int           // further attempts after a failed one (< 0: 0)
	RetryDelay                              time.Duration // before the first retry, doubled before each next
}

// Request asks for a move.
type Request struct {
	Kind    Kind   // "" means KindUser
	Subject string // the user (ID), or the logical shard's number
	To      string // destination shard
	// From is where the subject's data is. Optional when the subject has an
	// assignment (then it must equal it); required for a user with none
	// (HAProxy sends it to the default shard: From names that shard).
	From   string
	Reason string
	Freeze bool // route to maps.HoldShard during the copy
	Hooks  Hooks
}

// Move is a move's record.
type Move struct {
	ID      string
	Kind    Kind
	Subject string
	From    string // where the data was
	To      string
	// Route is the subject's routing value when the move started ("" = no
	// assignment): what Abort restores.
	Route            string
	Reason           string
	Created, Updated time.Time
	Step             Step
	State            State
	Error            string // why it failed ("" unless failed)
	Attempts         int    // runs of the current step so far
	Freeze           bool
	Hooks            Hooks
	FreezeID         string // change-log ID of the freeze
	FlipID           string // change-log ID of the flip
	// Driven is true when a live process holds the move's lease. A running
	// move that is not driven was killed: Resume it.
	Driven bool
}

// StepError is a move that stopped at a step; the record is in state failed.
type StepError struct {
	ID   string
	Step Step
	Err  error
}

func (e *StepError) Error() string {
	return fmt.Sprintf("move %s failed at %s (resume with mapctl move --resume %s, or roll back with --abort): %v", e.ID, e.Step, e.ID, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// Routing is one assignments map a move changes: the users' store, or the
// logical map's. *maps.Store implements it.
type Routing interface {
	Get(ctx context.Context, key string) (string, bool, error)
	// SetIfFenced and DelIfFenced: compare-and-set that writes only while
	// the move's owner lease is the caller's (maps.ErrFenced otherwise).
	SetIfFenced(ctx context.Context, a maps.Assignment, expected string, fence maps.Fence) (string, error)
	DelIfFenced(ctx context.Context, key, expected string, fence maps.Fence) (string, error)
	LastLogID(ctx context.Context) (string, error)
	WaitApplied(ctx context.Context, id string, within time.Duration) error
}

// Shards tells the shards HAProxy has a backend for. *maps.Store implements it.
type Shards interface {
	KnownShard(ctx context.Context, shard string) (bool, error)
}

// Config is what a Mover needs.
type Config struct {
	Redis  redis.UniversalClient // where the move records are kept
	Prefix string                // the store's key prefix ("" = maps.DefaultPrefix)
	Users  Routing               // the users' (IDs') store
	// Logical is the logical map's store (routing: ids); nil refuses
	// logical moves.
	Logical Routing
	Shards  Shards
	// Wait bounds each wait for the fleet (freeze, flip, abort); <= 0: 30s.
	Wait time.Duration
	// LeaseTTL is the owner lease's TTL; <= 0: DefaultLeaseTTL.
	LeaseTTL time.Duration
	// OnStep is called after each step is recorded done, with the move as
	// recorded (its Step is the next one). It may be called from several
	// goroutines at once when moves run in parallel.
	OnStep func(mv Move, done Step)
	// HookOutput gets the hooks' stdout and stderr; nil drops them (the end
	// of a failed hook's output is in its error either way).
	HookOutput io.Writer
	Log        *slog.Logger // nil: slog.Default()

	crash func(step Step, after bool) bool // tests: stop dead, as if killed
}

// Mover runs moves. It is safe for concurrent use.
type Mover struct {
	cfg      Config
	rdb      redis.UniversalClient
	prefix   string
	leaseTTL time.Duration
	log      *slog.Logger
}

// New returns a Mover for cfg.
func New(cfg Config) *Mover {
	m := &Mover{cfg: cfg, rdb: cfg.Redis, prefix: cfg.Prefix, leaseTTL: cfg.LeaseTTL, log: cfg.Log}
	if m.prefix == "" {
		m.prefix = maps.DefaultPrefix
	}
	if m.leaseTTL <= 0 {
		m.leaseTTL = DefaultLeaseTTL
	}
	if m.cfg.Wait <= 0 {
		m.cfg.Wait = 30 * time.Second
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	return m
}

func (m *Mover) routing(k Kind) Routing {
	if k == KindLogical {
		if m.cfg.Logical == nil {
			// A logical move's record in Redis (another process's, or one
			// written by hand) read by a Mover without a logical map.
			return noRouting{}
		}
		return m.cfg.Logical
	}
	return m.cfg.Users
}

// errNoLogical is every answer of noRouting.
var errNoLogical = fmt.Errorf("%w: a logical shard's move, but no logical map (routing: ids) is configured", maps.ErrInvalid)

// noRouting is the routing of logical moves when Config.Logical is nil.
type noRouting struct{}

func (noRouting) Get(context.Context, string) (string, bool, error) { return "", false, errNoLogical }
func (noRouting) SetIfFenced(context.Context, maps.Assignment, string, maps.Fence) (string, error) {
	return "", errNoLogical
}
func (noRouting) DelIfFenced(context.Context, string, string, maps.Fence) (string, error) {
	return "", errNoLogical
}
func (noRouting) LastLogID(context.Context) (string, error) { return "", errNoLogical }
func (noRouting) WaitApplied(context.Context, string, time.Duration) error {
	return errNoLogical
}

func busy(k Kind, subject, holder string) error {
	return fmt.Errorf("%w: %s %q is being moved by move %s (mapctl moves shows it; resume or abort it first)", ErrBusy, k, subject, holder)
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{maps.ErrInvalid}, args...)...)
}

// plan validates req against Redis and returns the move to record. Bad
// input is a maps.ErrInvalid naming the input and the rule.
func (m *Mover) plan(ctx context.Context, req Request) (*Move, error) {
	if req.Kind == "" {
		req.Kind = KindUser
	}
	switch req.Kind {
	case KindUser:
		if err := maps.ValidateUser(req.Subject); err != nil {
			return nil, err
		}
	case KindLogical:
		if m.cfg.Logical == nil {
			return nil, invalidf("logical shard %q: no logical map (routing: ids only)", req.Subject)
		}
		if n, err := strconv.Atoi(req.Subject); err != nil || n < 0 || strconv.Itoa(n) != req.Subject {
			return nil, invalidf("logical shard %q: want a number without leading zeros", req.Subject)
		}
	default:
		return nil, invalidf("move kind %q: want user or logical", req.Kind)
	}
	if err := maps.ValidateShard(req.To); err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	if req.To == maps.HoldShard {
		return nil, invalidf("destination %q: that is the holding backend, never a destination", req.To)
	}
	known, err := m.cfg.Shards.KnownShard(ctx, req.To)
	if err != nil {
		return nil, err
	}
	if !known {
		return nil, invalidf("destination %q is not a backend HAProxy is known to have (mapctl shard list; a syncer publishes them)", req.To)
	}
	if req.From != "" {
		if err := maps.ValidateShard(req.From); err != nil {
			return nil, fmt.Errorf("--from: %w", err)
		}
		if req.From == maps.HoldShard {
			return nil, invalidf("--from %q: that is the holding backend, which holds no data", req.From)
		}
	}
	if req.Freeze {
		ok, err := m.cfg.Shards.KnownShard(ctx, maps.HoldShard)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, invalidf("--freeze: HAProxy has no backend %s; render the config from the topology (mapctl config render) and reload HAProxy", maps.HoldShard)
		}
	}
	// An unfinished move of the subject is the answer before anything its
	// freeze explains (create takes the lock atomically; this names it early).
	holder, err := m.rdb.Get(ctx, m.lockKey(req.Kind, req.Subject)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redis read move lock: %w", err)
	}
	if err == nil {
		return nil, busy(req.Kind, req.Subject, holder)
	}
	cur, ok, err := m.routing(req.Kind).Get(ctx, req.Subject)
	if err != nil {
		return nil, err
	}
	mv := &Move{Kind: req.Kind, Subject: req.Subject, To: req.To, Reason: req.Reason, Freeze: req.Freeze, Hooks: req.Hooks,
		Step: StepPlan, State: StateRunning}
	switch {
	case ok && cur == maps.HoldShard:
		return nil, invalidf("%s %q is routed to %s (frozen by a move that did not finish: mapctl moves --all)", req.Kind, req.Subject, maps.HoldShard)
	case ok && req.From != "" && req.From != cur:
		return nil, invalidf("--from %q: %s %q is on %q", req.From, req.Kind, req.Subject, cur)
	case ok:
		mv.From, mv.Route = cur, cur
	case req.Kind == KindLogical:
		return nil, invalidf("logical shard %q is not in the logical map", req.Subject)
	case req.From == "":
		return nil, invalidf("user %q has no assignment (HAProxy sends it to the default shard): name the shard that has its data with --from SHARD", req.Subject)
	default:
		mv.From, mv.Route = req.From, "" // routed by default; Abort deletes again
	}
	if mv.From == req.To {
		return nil, invalidf("%s %q is already on %q", req.Kind, req.Subject, req.To)
	}
	if mv.Hooks.Timeout <= 0 {
		mv.Hooks.Timeout = DefaultHookTimeout
	}
	mv.Hooks.Retries = max(mv.Hooks.Retries, 0)
	mv.Hooks.RetryDelay = max(mv.Hooks.RetryDelay, 0)
	return mv, nil
}

// Start plans the move (bad input: a maps.ErrInvalid; a subject with an
// unfinished move: ErrBusy), records it and runs it to the end. It returns
// the move as last recorded, and a *StepError when a step failed (the move
// is then in state failed). The move's ID is known once OnStep is called
// for StepPlan, before any routing changes.
func (m *Mover) Start(ctx context.Context, req Request) (*Move, error) {
	mv, err := m.plan(ctx, req)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if mv.ID, err = newID(now); err != nil {
		return nil, err
	}
	mv.Created, mv.Updated = now, now
	token, err := newID(now)
	if err != nil {
		return nil, err
	}
	if err := m.create(ctx, mv, token); err != nil {
		return nil, err
	}
	m.log.Info("move planned", "move", mv.ID, "kind", mv.Kind, "subject", mv.Subject, "from", mv.From, "to", mv.To, "freeze", mv.Freeze)
	return m.drive(ctx, mv, token)
}

// Resume continues a failed move, or a running one whose process died
// (its lease expired), from its recorded step with its recorded options.
// ErrBusy while a live process drives it; ErrFinished when done or aborted.
func (m *Mover) Resume(ctx context.Context, id string) (*Move, error) {
	mv, err := m.load(ctx, id)
	if err != nil {
		return nil, err
	}
	if mv.State == StateDone || mv.State == StateAborted {
		return mv, fmt.Errorf("move %s is %s: %w", id, mv.State, ErrFinished)
	}
	if _, no := m.routing(mv.Kind).(noRouting); no {
		return mv, fmt.Errorf("move %s: %w", id, errNoLogical) // before any hook runs
	}
	token, err := m.acquire(ctx, id)
	if err != nil {
		return mv, err
	}
	if mv, err = m.load(ctx, id); err != nil { // as of the lease
		m.release(ctx, id, token)
		return nil, err
	}
	if mv.State == StateDone || mv.State == StateAborted {
		m.release(ctx, id, token)
		return mv, fmt.Errorf("move %s is %s: %w", id, mv.State, ErrFinished)
	}
	mv.State, mv.Error, mv.Updated = StateRunning, "", time.Now()
	if err := m.save(ctx, mv, token, false); err != nil {
		m.release(ctx, id, token)
		return mv, err
	}
	m.log.Info("move resumed", "move", id, "step", mv.Step)
	return m.drive(ctx, mv, token)
}

// Get returns the move id (ErrNotFound, wrapped with maps.ErrInvalid, when
// there is none).
func (m *Mover) Get(ctx context.Context, id string) (*Move, error) {
	return m.load(ctx, id)
}

// List returns the moves in creation order: all of them, or only the
// unfinished ones (running or failed). A record that does not parse is an
// error naming it.
func (m *Mover) List(ctx context.Context, all bool) ([]Move, error) {
	ids, err := m.rdb.ZRange(ctx, m.indexKey(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("redis read %s: %w", m.indexKey(), err)
	}
	pipe := m.rdb.Pipeline()
	recs := make([]*redis.MapStringStringCmd, len(ids))
	owned := make([]*redis.IntCmd, len(ids))
	for i, id := range ids {
		recs[i] = pipe.HGetAll(ctx, m.recordKey(id))
		owned[i] = pipe.Exists(ctx, m.ownerKey(id))
	}
	if len(ids) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("redis read moves: %w", err)
		}
	}
	out := []Move{}
	for i := range ids {
		h := recs[i].Val()
		if len(h) == 0 {
			continue // deleted by hand
		}
		mv, err := parseRecord(h)
		if err != nil {
			return nil, err
		}
		mv.Driven = owned[i].Val() == 1
		if all || mv.State == StateRunning || mv.State == StateFailed {
			out = append(out, *mv)
		}
	}
	return out, nil
}

package move

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shardmap/shardmap/maps"
)

// stepAbort is SHARDMAP_STEP for the unfreeze hook that Abort runs.
const stepAbort Step = "abort"

// errCrashed is what drive returns when a test's crash hook stopped it dead.
var errCrashed = errors.New("crashed (test)")

// drive runs mv from its recorded step to done while holding its lease
// (token). Each step is recorded (attempts) before it runs and recorded done
// (the next step) after; a failed step records state failed and returns a
// *StepError.
func (m *Mover) drive(ctx context.Context, mv *Move, token string) (*Move, error) {
	// Losing the lease (another process took the move over after this one
	// stalled for longer than the TTL) cancels the running step: two
	// processes must not run the same hook at once for long.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := m.keepLease(ctx, mv.ID, token, func() { cancel(ErrLeaseLost) })
	defer stop()
	for mv.Step != StepDone {
		step := mv.Step
		mv.Attempts++
		mv.Updated = time.Now()
		if err := m.save(ctx, mv, token, false); err != nil {
			return mv, m.fail(ctx, mv, token, err)
		}
		if m.cfg.crash != nil && m.cfg.crash(step, false) {
			return mv, errCrashed
		}
		start := time.Now()
		if err := m.runStep(ctx, mv, token); err != nil {
			if errors.Is(context.Cause(ctx), ErrLeaseLost) {
				err = fmt.Errorf("%w: %w", ErrLeaseLost, err)
			}
			return mv, m.fail(ctx, mv, token, err)
		}
		if m.cfg.crash != nil && m.cfg.crash(step, true) {
			return mv, errCrashed
		}
		mv.Step = Steps[stepIndex(step)+1]
		mv.Attempts, mv.Updated = 0, time.Now()
		end := mv.Step == StepDone
		if end {
			mv.State = StateDone
		}
		if err := m.save(ctx, mv, token, end); err != nil {
			mv.Step, mv.State = step, StateRunning
			return mv, m.fail(ctx, mv, token, err)
		}
		m.log.Info("move step done", "move", mv.ID, "step", step, "took", time.Since(start).Round(time.Millisecond))
		if m.cfg.OnStep != nil {
			m.cfg.OnStep(*mv, step)
		}
	}
	return mv, nil
}

// fail records mv as failed at its step with err (on a context of its own,
// so that an interrupted move is recorded too) and gives the lease up.
func (m *Mover) fail(ctx context.Context, mv *Move, token string, err error) error {
	se := &StepError{ID: mv.ID, Step: mv.Step, Err: err}
	if errors.Is(err, ErrLeaseLost) {
		return se // the record is someone else's now
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	mv.State, mv.Error, mv.Updated = StateFailed, err.Error(), time.Now()
	if serr := m.save(wctx, mv, token, false); serr != nil {
		se.Err = fmt.Errorf("%w (and recording the failure: %v)", err, serr)
	}
	m.release(ctx, mv.ID, token)
	m.log.Warn("move failed", "move", mv.ID, "step", mv.Step, "err", err)
	return se
}

// runStep does mv's current step. Every step is safe to run again after it
// ran in part or in whole: routing writes are compare-and-set and accept
// the value they would write, and hooks must be idempotent.
func (m *Mover) runStep(ctx context.Context, mv *Move, token string) error {
	switch mv.Step {
	case StepPlan:
		// Recorded by Start, which read the routing before it took the
		// subject's lock: another move (or a set) may have changed it in
		// between, and the hooks must not run with a From that is stale.
		cur, ok, err := m.routing(mv.Kind).Get(ctx, mv.Subject)
		if err != nil {
			return fmt.Errorf("plan: %w", err)
		}
		if !ok {
			cur = ""
		}
		if cur != mv.Route {
			return fmt.Errorf("plan: %w: %s %q is routed to %s since the move read %s",
				ErrRoutingChanged, mv.Kind, mv.Subject, shown(cur), shown(mv.Route))
		}
		return nil
	case StepFreeze:
		if mv.Freeze {
			id, err := m.route(ctx, mv, token, mv.Route, maps.HoldShard)
			if err != nil {
				return fmt.Errorf("freeze: %w", err)
			}
			mv.FreezeID = id
			if err := m.save(ctx, mv, token, false); err != nil {
				return err
			}
			if err := m.routing(mv.Kind).WaitApplied(ctx, id, m.cfg.Wait); err != nil {
				return fmt.Errorf("freeze: %w", err)
			}
		}
		return m.hook(ctx, mv, StepFreeze, mv.Hooks.Freeze)
	case StepCopy:
		return m.hook(ctx, mv, StepCopy, mv.Hooks.Copy)
	case StepFlip:
		expected := mv.Route
		if mv.Freeze {
			expected = maps.HoldShard
		}
		id, err := m.route(ctx, mv, token, expected, mv.To)
		if err != nil {
			return fmt.Errorf("flip: %w", err)
		}
		mv.FlipID = id
		if err := m.save(ctx, mv, token, false); err != nil {
			return err
		}
		if err := m.routing(mv.Kind).WaitApplied(ctx, id, m.cfg.Wait); err != nil {
			return fmt.Errorf("flip: %w", err)
		}
		return m.hook(ctx, mv, StepFlip, mv.Hooks.Unfreeze)
	case StepVerify:
		return m.hook(ctx, mv, StepVerify, mv.Hooks.Verify)
	case StepCleanup:
		return m.hook(ctx, mv, StepCleanup, mv.Hooks.Cleanup)
	}
	return fmt.Errorf("move %s: no step %q", mv.ID, mv.Step)
}

// route sets the subject's routing to want ("" = no assignment) if it is
// expected and token still holds the move's lease (ErrLeaseLost), and returns the change-log ID to wait for. A value that already
// is want (the write happened before a crash) is success; anything else is
// ErrRoutingChanged.
func (m *Mover) route(ctx context.Context, mv *Move, token, expected, want string) (string, error) {
	r := m.routing(mv.Kind)
	var id string
	var err error
	// Written only while this process holds the move's lease: a process
	// that stalled past the TTL must not write over its successor's steps.
	fence := maps.Fence{Key: m.ownerKey(mv.ID), Token: token}
	if want == "" {
		id, err = r.DelIfFenced(ctx, mv.Subject, expected, fence)
	} else {
		id, err = r.SetIfFenced(ctx, maps.Assignment{User: mv.Subject, Shard: want}, expected, fence)
	}
	if errors.Is(err, maps.ErrFenced) {
		return "", fmt.Errorf("move %s: %w (%w)", mv.ID, ErrLeaseLost, err)
	}
	var ce *maps.ChangedError
	if errors.As(err, &ce) {
		if ce.Current == want {
			return r.LastLogID(ctx) // written before: wait for at least as much
		}
		return "", fmt.Errorf("%w: %s %q is routed to %s, expected %s: the move does not overwrite it",
			ErrRoutingChanged, mv.Kind, mv.Subject, shown(ce.Current), shown(expected))
	}
	return id, err
}

func shown(shard string) string {
	if shard == "" {
		return "no shard (the default)"
	}
	return fmt.Sprintf("%q", shard)
}

// hook runs command ("" skips it) for step with the move's policy.
func (m *Mover) hook(ctx context.Context, mv *Move, step Step, command string) error {
	if command == "" {
		return nil
	}
	subject := "SHARDMAP_USER="
	if mv.Kind == KindLogical {
		subject = "SHARDMAP_LOGICAL="
	}
	h := hookRun{command: command, timeout: mv.Hooks.Timeout, out: m.cfg.HookOutput, env: []string{
		"SHARDMAP_MOVE_ID=" + mv.ID, subject + mv.Subject, "SHARDMAP_FROM=" + mv.From, "SHARDMAP_TO=" + mv.To, "SHARDMAP_STEP=" + string(step),
	}}
	m.log.Info("move hook", "move", mv.ID, "step", step, "command", command)
	return h.runWithRetries(ctx, step, mv.Hooks.Retries, mv.Hooks.RetryDelay, func(n int) {
		if n > 1 {
			m.log.Warn("move hook retry", "move", mv.ID, "step", step, "attempt", n)
		}
	})
}

// Abort rolls the routing of move id back to what it was when the move
// started, waits for the fleet to have it, runs the unfreeze hook when the
// move has one and got past planning, and records the move aborted (which
// frees its subject). It returns the move as recorded. A routing that is
// neither the start's nor a value the move set (someone else changed it
// since) is left as it is, and the move is aborted all the same: nothing of
// the move's is left to roll back. Refused with ErrTooLate once the cleanup
// step has started, ErrFinished when done or aborted, ErrBusy while a live
// process drives it; ErrRoutingChanged when the routing changes during the
// rollback itself.
func (m *Mover) Abort(ctx context.Context, id string) (*Move, error) {
	mv, err := m.load(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := abortable(mv); err != nil {
		return mv, err
	}
	if _, no := m.routing(mv.Kind).(noRouting); no {
		return mv, fmt.Errorf("abort move %s: %w", id, errNoLogical) // before any hook runs
	}
	token, err := m.acquire(ctx, id)
	if err != nil {
		return mv, err
	}
	defer m.release(ctx, id, token)
	if mv, err = m.load(ctx, id); err != nil {
		return nil, err
	}
	if err := abortable(mv); err != nil {
		return mv, err
	}
	stop := m.keepLease(ctx, id, token, nil)
	defer stop()
	r := m.routing(mv.Kind)
	cur, ok, err := r.Get(ctx, mv.Subject)
	if err != nil {
		return mv, err
	}
	if !ok {
		cur = ""
	}
	switch {
	case cur == mv.Route:
	case !setByMove(mv, cur):
		// Someone else routed it since: nothing of the move's is left in
		// the routing to roll back, and theirs is not overwritten.
		m.log.Warn("move abort leaves the routing someone else set", "move", id, "route", cur)
	default:
		lid, err := m.route(ctx, mv, token, cur, mv.Route)
		if err != nil {
			return mv, fmt.Errorf("abort move %s: %w", id, err)
		}
		cur = mv.Route
		if err := r.WaitApplied(ctx, lid, m.cfg.Wait); err != nil {
			return mv, fmt.Errorf("abort move %s: rolled back to %s in Redis, but: %w", id, shown(mv.Route), err)
		}
	}
	if mv.Step != StepPlan {
		if err := m.hook(ctx, mv, stepAbort, mv.Hooks.Unfreeze); err != nil {
			return mv, fmt.Errorf("abort move %s: routing is %s, but: %w", id, shown(cur), err)
		}
	}
	mv.State, mv.Error, mv.Updated = StateAborted, "", time.Now()
	if err := m.save(ctx, mv, token, true); err != nil {
		return mv, err
	}
	m.log.Info("move aborted", "move", id, "step", mv.Step, "route", mv.Route)
	return mv, nil
}

// setByMove reports whether the routing value cur may have been written by
// mv: its destination once the flip step has started, the holding backend
// (with a freeze) from the freeze step until the flip step is done. Any
// other value, e.g. the destination set by an operator before the flip, is
// someone else's and abort does not overwrite it.
func setByMove(mv *Move, cur string) bool {
	i := stepIndex(mv.Step)
	switch {
	case cur == mv.To:
		return i >= stepIndex(StepFlip)
	case cur == maps.HoldShard:
		return mv.Freeze && i >= stepIndex(StepFreeze) && i <= stepIndex(StepFlip)
	}
	return false
}

func abortable(mv *Move) error {
	switch {
	case mv.State == StateDone || mv.State == StateAborted:
		return fmt.Errorf("move %s is %s: %w", mv.ID, mv.State, ErrFinished)
	case stepIndex(mv.Step) >= stepIndex(StepCleanup):
		return fmt.Errorf("move %s: %w: its cleanup step has started (the data on %q may be deleted already, so routing back to it could lose data); resume it instead",
			mv.ID, ErrTooLate, mv.From)
	}
	return nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/shardmap/shardmap/ids"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/move"
)

// moveOpts are mapctl move's flags.
type moveOpts struct {
	to, from, reason, logical string
	resume, abort, fromFile   string
	parallel                  int
	freeze                    bool
	hooks                     move.Hooks
}

func (a *app) moveCmd() *cobra.Command {
	var o moveOpts
	c := &cobra.Command{
		Use:   "move [USER] --to SHARD",
		Short: "Move a user's data and routing to another shard, step by step, resumable (docs/MOVES.md)",
		Long: `move moves USER (with routing: ids, an ID; or with --logical, a whole logical
shard) to SHARD as a state machine recorded in Redis:
plan -> freeze -> copy -> flip -> verify -> cleanup -> done.

It prints the move's ID alone on the first line of stdout, then "STEP done"
as each step completes. A failed step leaves the move in state failed (exit
1): fix the cause, then mapctl move --resume ID goes on from that step with
the move's recorded options, or mapctl move --abort ID routes back to where
the move started (refused once cleanup has started). A killed mapctl leaves
the move running; it can be resumed once its lease has expired (5s).

Hooks run by sh -c with SHARDMAP_MOVE_ID, SHARDMAP_USER (or SHARDMAP_LOGICAL),
SHARDMAP_FROM, SHARDMAP_TO and SHARDMAP_STEP in the environment; exit 0 is
success. A step may run again after a crash: hooks must be idempotent.

--from-file runs the moves of a plan ("USER SHARD" or "logical:L SHARD" lines,
# comments), --parallel at a time, with the same flags; it prints one line
per move and a summary, and exits 1 if any failed.

The global --timeout bounds each wait for the fleet (after the freeze, the
flip and an abort), not the whole move; hooks have --hook-timeout.

Exit status: 0 done (or aborted), 1 failed, 2 bad input.`,
		Example: `  mapctl move alice --to shard2 --freeze --copy-cmd '/usr/local/bin/copy-user' --cleanup-cmd '/usr/local/bin/drop-user'
  mapctl move 42 --to shard1 --from shard0 --reason 'hot user'
  mapctl move --logical 17 --to shard3 --freeze --copy-cmd ./copy-logical.sh
  mapctl move --resume 20261125-193012-4f2a9c
  mapctl move --abort 20261125-193012-4f2a9c
  mapctl move --from-file plan.txt --parallel 4 --freeze --copy-cmd ./copy.sh`,
		Args: func(cmd *cobra.Command, as []string) error {
			if len(as) > 1 {
				return usagef("move takes at most one USER, got %d arguments", len(as))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, as []string) error {
			user := ""
			if len(as) == 1 {
				user = as[0]
			}
			return a.move(cmd, user, o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.to, "to", "", "destination shard (a backend HAProxy has)")
	f.StringVar(&o.from, "from", "", "shard that has the data now; needed for a user with no assignment (routed to the default shard)")
	f.StringVar(&o.reason, "reason", "", "why, recorded with the move")
	f.StringVar(&o.logical, "logical", "", "move this logical shard (routing: ids) instead of a user")
	f.StringVar(&o.resume, "resume", "", "continue the move ID from its recorded step")
	f.StringVar(&o.abort, "abort", "", "roll the move ID back to its old routing and mark it aborted")
	f.StringVar(&o.fromFile, "from-file", "", `run every move of a plan file ("USER SHARD" or "logical:L SHARD" lines)`)
	f.IntVar(&o.parallel, "parallel", 1, "with --from-file: moves run at once")
	addMoveFlags(f, &o.freeze, &o.hooks, "")
	return c
}

// addMoveFlags defines the flags of the move procedure (--freeze and the
// hooks) on f, their help prefixed with when (e.g. "with --apply: "); move
// and rebalance plan --apply share them.
func addMoveFlags(f *pflag.FlagSet, freeze *bool, hooks *move.Hooks, when string) {
	f.BoolVar(freeze, "freeze", false, when+"route to "+maps.HoldShard+" (503 + Retry-After) from before the copy until the flip")
	f.StringVar(&hooks.Freeze, "freeze-cmd", "", when+"hook run at the freeze step (after the routing freeze, if --freeze)")
	f.StringVar(&hooks.Unfreeze, "unfreeze-cmd", "", when+"hook run after the flip (and on --abort)")
	f.StringVar(&hooks.Copy, "copy-cmd", "", when+"hook that copies the data from SHARDMAP_FROM to SHARDMAP_TO")
	f.StringVar(&hooks.Verify, "verify-cmd", "", when+"hook run after the flip to check the data on SHARDMAP_TO")
	f.StringVar(&hooks.Cleanup, "cleanup-cmd", "", when+"hook that deletes the data on SHARDMAP_FROM")
	f.DurationVar(&hooks.Timeout, "hook-timeout", move.DefaultHookTimeout, when+"each hook attempt is killed (its whole process group) after this")
	f.IntVar(&hooks.Retries, "retries", move.DefaultRetries, when+"further attempts of a failed hook")
	f.DurationVar(&hooks.RetryDelay, "retry-delay", move.DefaultRetryDelay, when+"wait before the first retry, doubled before each next one")
}

// mover returns a Mover on the app's stores; hooks' output and warnings go
// to errOut.
func (a *app) mover(errOut io.Writer, onStep func(move.Move, move.Step)) *move.Mover {
	return move.New(move.Config{
		Redis: a.rdb, Prefix: a.prefix, Users: a.store, Logical: a.logical, Shards: a.store,
		Wait: a.timeout, OnStep: onStep, HookOutput: errOut,
		Log: slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
}

// move runs one mode of mapctl move; exactly one of USER, --logical,
// --resume, --abort and --from-file must be given.
func (a *app) move(cmd *cobra.Command, user string, o moveOpts) error {
	modes := 0
	for _, s := range []string{user, o.logical, o.resume, o.abort, o.fromFile} {
		if s != "" {
			modes++
		}
	}
	if modes != 1 {
		return usagef("move takes exactly one of USER, --logical L, --resume ID, --abort ID and --from-file FILE")
	}
	planning := user != "" || o.logical != "" || o.fromFile != ""
	if !planning && (o.to != "" || o.from != "" || o.reason != "" || o.freeze || o.hooks.Freeze != "" || o.hooks.Unfreeze != "" ||
		o.hooks.Copy != "" || o.hooks.Verify != "" || o.hooks.Cleanup != "" || cmd.Flags().Changed("hook-timeout") ||
		cmd.Flags().Changed("retries") || cmd.Flags().Changed("retry-delay")) {
		return usagef("--resume and --abort take no other move flags: a move goes on with the options it was started with")
	}
	if (user != "" || o.logical != "") && o.to == "" {
		return usagef("move needs --to SHARD")
	}
	if o.fromFile != "" && (o.to != "" || o.from != "") {
		return usagef("--from-file takes the destinations from the file: no --to or --from")
	}
	if cmd.Flags().Changed("parallel") && o.fromFile == "" {
		return usagef("--parallel goes with --from-file")
	}
	if o.parallel < 1 {
		return usagef("--parallel %d: want 1 or more", o.parallel)
	}
	if o.hooks.Timeout <= 0 {
		return usagef("--hook-timeout %s: want more than 0", o.hooks.Timeout)
	}
	if o.hooks.Retries < 0 || o.hooks.RetryDelay < 0 {
		return usagef("--retries and --retry-delay cannot be negative")
	}
	// An interrupt ends the hook (its process group) and records the move
	// failed at its step, so that --resume goes on from there.
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	switch {
	case o.fromFile != "":
		return a.moveFile(ctx, cmd, o)
	case o.abort != "":
		m := a.mover(errOut, nil)
		if _, err := m.Get(ctx, o.abort); err != nil { // an unknown ID prints nothing
			return err
		}
		fmt.Fprintln(out, o.abort)
		mv, err := m.Abort(ctx, o.abort)
		if err != nil {
			return moveErr(err)
		}
		st := a.store
		if mv.Kind == move.KindLogical {
			st = a.logical
		}
		cur, ok, err := st.Get(ctx, mv.Subject)
		if err != nil {
			return err
		}
		if !ok {
			cur = ""
		}
		if cur != mv.Route { // someone else routed it since the move started
			fmt.Fprintf(out, "aborted: %s %s left routed to %s (someone else set it; the move did not roll it back to %s)\n",
				mv.Kind, mv.Subject, routeName(cur), routeName(mv.Route))
			return nil
		}
		fmt.Fprintf(out, "aborted: %s %s routed to %s again\n", mv.Kind, mv.Subject, routeName(mv.Route))
		return nil
	case o.resume != "":
		m := a.mover(errOut, stepPrinter(out, nil))
		if _, err := m.Get(ctx, o.resume); err != nil {
			return err
		}
		fmt.Fprintln(out, o.resume)
		_, err := m.Resume(ctx, o.resume)
		return moveErr(err)
	}
	req := move.Request{Kind: move.KindUser, Subject: user, To: o.to, From: o.from, Reason: o.reason, Freeze: o.freeze, Hooks: o.hooks}
	if o.logical != "" {
		l, err := a.logicalShard(ctx, o.logical)
		if err != nil {
			return err
		}
		req.Kind, req.Subject = move.KindLogical, fmt.Sprint(l)
	} else if err := a.checkKey(ctx, user); err != nil {
		return err
	}
	printed := false
	_, err := a.mover(errOut, stepPrinter(out, func(mv move.Move) { fmt.Fprintln(out, mv.ID); printed = true })).Start(ctx, req)
	var se *move.StepError
	if errors.As(err, &se) && !printed { // recorded, but failed before plan was done
		fmt.Fprintln(out, se.ID)
	}
	return moveErr(err)
}

// stepPrinter prints "STEP done" for each step done, after first (called
// once, before the first line) when not nil.
func stepPrinter(out io.Writer, first func(move.Move)) func(move.Move, move.Step) {
	var once sync.Once
	return func(mv move.Move, done move.Step) {
		if first != nil {
			once.Do(func() { first(mv) })
		}
		fmt.Fprintf(out, "%s done\n", done)
	}
}

// moveErr makes a refusal that is the caller's (a finished move, too late
// to abort) exit 2; a failed step stays an operational failure (exit 1).
func moveErr(err error) error {
	if errors.Is(err, move.ErrFinished) || errors.Is(err, move.ErrTooLate) {
		return usageError{Err: err}
	}
	return err
}

func routeName(route string) string {
	if route == "" {
		return "the default shard (no assignment)"
	}
	return route
}

// readPlan reads the plan file at path (move.ReadPlan: every line is
// checked before any move runs). A file that cannot be opened is bad usage.
func readPlan(path string) ([]move.PlanLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usageError{Err: err}
	}
	defer f.Close()
	return move.ReadPlan(f, path)
}

// checkPlan checks a plan against Redis before any of its moves starts, so
// that a bad line is refused up front (exit 2) rather than after the moves
// before it ran: in routing: ids (a logical map in Redis) a user line must
// be an ID (ids.ParseNumber) and a logical line a logical shard the map
// has; otherwise there are no logical lines; every destination must be a
// backend HAProxy is known to have. A line that fails is a *move.PlanError
// naming path, its line and the rule.
func (a *app) checkPlan(ctx context.Context, path string, plan []move.PlanLine) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	idsOn, err := a.idsMode(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, p := range plan {
		bad := func(rule string, err error) error {
			return &move.PlanError{File: path, Line: p.Line, Text: p.String(), Rule: rule, Err: err}
		}
		switch {
		case p.Kind == move.KindLogical && !idsOn:
			return bad("a logical shard, but there is no logical map in Redis (routing: ids only)", nil)
		case p.Kind == move.KindLogical:
			if _, err := a.logicalShard(ctx, p.Subject); err != nil {
				return bad("logical shard of the logical map", err)
			}
		case idsOn:
			if _, err := ids.ParseNumber(p.Subject); err != nil {
				return bad("routing: ids (a logical map is in Redis), so a user line takes an ID (docs/IDS.md)", err)
			}
		}
		ok, seen := known[p.To]
		if !seen {
			if ok, err = a.store.KnownShard(ctx, p.To); err != nil {
				return err
			}
			known[p.To] = ok
		}
		if !ok {
			return bad("destination is not a backend HAProxy is known to have (mapctl shard list; a syncer publishes them)", nil)
		}
	}
	return nil
}

// moveFile runs the moves of a plan file, o.parallel at a time.
func (a *app) moveFile(ctx context.Context, cmd *cobra.Command, o moveOpts) error {
	plan, err := readPlan(o.fromFile)
	if err != nil {
		return err
	}
	if err := a.checkPlan(ctx, o.fromFile, plan); err != nil {
		return err
	}
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
	var mu sync.Mutex // out and the bar
	var bar *progressbar.ProgressBar
	if f, ok := errOut.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar = progressbar.NewOptions(len(plan), progressbar.OptionSetWriter(f), progressbar.OptionSetDescription("move"),
			progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond))
		defer fmt.Fprintln(f)
	}
	m := a.mover(errOut, nil)
	jobs := make(chan move.PlanLine)
	var wg sync.WaitGroup
	failed, done := 0, 0
	for range min(o.parallel, max(len(plan), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range jobs {
				req := move.Request{Kind: p.Kind, Subject: p.Subject, To: p.To, Reason: o.reason, Freeze: o.freeze, Hooks: o.hooks}
				mv, err := m.Start(ctx, req)
				subject, _, _ := strings.Cut(p.String(), " ")
				mu.Lock()
				switch {
				case err != nil && mv == nil:
					failed++
					fmt.Fprintf(out, "- %s %s failed: %v\n", subject, p.To, err)
				case err != nil:
					failed++
					fmt.Fprintf(out, "%s %s %s failed at %s: %v\n", mv.ID, subject, p.To, mv.Step, err)
				default:
					done++
					fmt.Fprintf(out, "%s %s %s done\n", mv.ID, subject, p.To)
				}
				if bar != nil {
					bar.Add(1)
				}
				mu.Unlock()
			}
		}()
	}
	for _, p := range plan {
		select {
		case jobs <- p:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	// Moves an interrupt kept from starting are neither done nor failed.
	if notStarted := len(plan) - done - failed; notStarted > 0 {
		fmt.Fprintf(out, "summary: %d moves, %d done, %d failed, %d not started\n", len(plan), done, failed, notStarted)
	} else {
		fmt.Fprintf(out, "summary: %d moves, %d done, %d failed\n", len(plan), done, failed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("move --from-file %s: interrupted: %w", o.fromFile, err)
	}
	if failed > 0 {
		return fmt.Errorf("move --from-file %s: %d of %d moves failed (mapctl moves lists them)", o.fromFile, failed, len(plan))
	}
	return nil
}

// moveJSON is one move in mapctl moves -o json.
type moveJSON struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`
	Subject  string    `json:"subject"`
	From     string    `json:"from"`
	To       string    `json:"to"`
	Route    string    `json:"route"` // routing before the move ("" = none)
	Reason   string    `json:"reason"`
	Step     string    `json:"step"`
	State    string    `json:"state"`
	Error    string    `json:"error"`
	Attempts int       `json:"attempts"`
	Freeze   bool      `json:"freeze"`
	FlipID   string    `json:"flip_id"`
	Driven   bool      `json:"driven"` // a live mapctl drives it now
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

func (a *app) movesCmd() *cobra.Command {
	var all, prune, dryRun bool
	var olderThan time.Duration
	var out *output
	c := &cobra.Command{
		Use:   "moves",
		Short: "List the moves that are not finished (running or failed); --all lists every move; --prune deletes old finished ones",
		Long: `moves lists moves (mapctl move) in creation order: ID, subject, from, to, the
step it is at, its state and when it was last updated. A running move that no
live mapctl drives (it was killed) shows as "running (stalled)": resume it.
-o json prints an array of objects with every recorded field.

--prune deletes the records of finished moves (done or aborted) last updated
more than --older-than ago (default 720h, 30 days), each record with its index entry
at once; a running or failed move is never deleted, however old. It lists the
moves it deleted and prints how many; --dry-run lists them and deletes nothing.`,
		Example: `  mapctl moves
  mapctl moves --all -o json | jq '.[] | select(.state == "failed")'
  mapctl moves --prune --older-than 720h --dry-run`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !prune && (cmd.Flags().Changed("older-than") || dryRun) {
				return usagef("--older-than and --dry-run go with --prune")
			}
			if prune && all {
				return usagef("--prune lists what it deletes: no --all")
			}
			if olderThan < 0 {
				return usagef("--older-than %s: want 0 or more", olderThan)
			}
			ctx, cancel := a.ctx(cmd)
			defer cancel()
			m := a.mover(cmd.ErrOrStderr(), nil)
			var list []move.Move
			var err error
			if prune {
				list, err = m.Prune(ctx, time.Now().Add(-olderThan), dryRun)
			} else {
				list, err = m.List(ctx, all)
			}
			if err != nil && len(list) == 0 {
				return err
			}
			if *out == outJSON {
				js := make([]moveJSON, len(list))
				for i, mv := range list {
					js[i] = moveJSON{ID: mv.ID, Kind: string(mv.Kind), Subject: mv.Subject, From: mv.From, To: mv.To, Route: mv.Route,
						Reason: mv.Reason, Step: string(mv.Step), State: string(mv.State), Error: mv.Error, Attempts: mv.Attempts,
						Freeze: mv.Freeze, FlipID: mv.FlipID, Driven: mv.Driven, Created: mv.Created, Updated: mv.Updated}
				}
				if werr := writeJSON(cmd.OutOrStdout(), js); werr != nil {
					return werr
				}
			} else {
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				if !prune || len(list) > 0 {
					fmt.Fprintln(w, "ID\tSUBJECT\tFROM\tTO\tSTEP\tSTATE\tUPDATED")
				}
				for _, mv := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mv.ID, subjectName(mv), mv.From, mv.To, mv.Step, stateName(mv),
						mv.Updated.UTC().Format(time.RFC3339))
				}
				if werr := w.Flush(); werr != nil {
					return werr
				}
				if prune {
					verb := "removed"
					if dryRun {
						verb = "would remove"
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s %d finished moves last updated over %s ago\n", verb, len(list), olderThan)
				}
			}
			return err // a prune that stopped part way: what it removed is printed
		},
	}
	c.Flags().BoolVar(&all, "all", false, "list finished moves (done, aborted) too")
	c.Flags().BoolVar(&prune, "prune", false, "delete the records of finished moves (done, aborted) older than --older-than; never an unfinished one")
	c.Flags().DurationVar(&olderThan, "older-than", move.DefaultPruneAge, "with --prune: only moves last updated longer ago than this")
	c.Flags().BoolVar(&dryRun, "dry-run", false, "with --prune: list what would be deleted, delete nothing")
	out = outputFlag(c)
	return c
}

func subjectName(mv move.Move) string {
	if mv.Kind == move.KindLogical {
		return "logical:" + mv.Subject
	}
	return mv.Subject
}

func stateName(mv move.Move) string {
	if mv.State == move.StateRunning && !mv.Driven {
		return "running (stalled)"
	}
	return string(mv.State)
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardmap/shardmap/internal/atomicfile"
	"github.com/shardmap/shardmap/maps"
	"github.com/shardmap/shardmap/move"
	"github.com/shardmap/shardmap/rebalance"
)

func (a *app) rebalanceCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "rebalance",
		Short: "Plan moves that even out the shards, by users or by HAProxy's load",
		Example: `  mapctl rebalance plan
  mapctl rebalance plan --by load --socket /run/haproxy/admin.sock --write plan.txt`,
	}
	c.AddCommand(a.rebalancePlanCmd())
	return c
}

// planOpts are rebalance plan's flags.
type planOpts struct {
	by       string
	figure   string
	sockets  []string
	sample   time.Duration
	maxMoves int
	shards   []string
	write    string

	apply    bool
	parallel int
	freeze   bool
	reason   string
	hooks    move.Hooks
}

func (a *app) rebalancePlanCmd() *cobra.Command {
	var o planOpts
	var out *output
	c := &cobra.Command{
		Use:   "plan",
		Short: "Propose moves that even out the shards and print each shard's figure before and after",
		Long: `plan proposes moves, one user at a time (with routing: ids, one logical
shard at a time), from the fullest shards to the emptiest, until no single
move evens them out further or --max-moves is reached. No user moves twice,
and nothing moves to a shard with no server up, to the hold backend
(` + maps.HoldShard + `) or off a shard with no server up.

--by users counts the users each shard has in Redis (with routing: ids, the
logical shards: each is taken to hold an equal share of the IDs). --by load
reads each shard's load from HAProxy's "show stat" on every --socket, summed:
--load requests (default) is requests per second over --sample (0: the
totals since HAProxy started), --load sessions the current sessions; a
shard's load is taken to be spread evenly over its users (or logical
shards). With --socket, a shard is up when every HAProxy has a server up in
it; without, every known shard is taken as up.

The shards are the backends the syncers published (mapctl status shows them),
or --shards. --write FILE writes the moves in mapctl move --from-file's
format. --apply then runs the moves through the move procedure (mapctl move,
docs/MOVES.md), --parallel at a time, with the hook flags of mapctl move; each
move is refused if its subject is no longer where the plan found it. It
prints one line per move and exits 1 if any failed (mapctl moves lists them;
mapctl move --resume ID goes on).

See docs/REBALANCE.md.`,
		Example: `  mapctl rebalance plan
  mapctl rebalance plan --by users --socket /run/haproxy/admin.sock --max-moves 50 --write plan.txt
  mapctl rebalance plan --by load --socket /run/lb1/admin.sock --socket /run/lb2/admin.sock --sample 10s -o json
  mapctl rebalance plan --by load --load sessions --socket /run/haproxy/admin.sock --shards shard0,shard1,shard2
  mapctl rebalance plan --by load --socket /run/haproxy/admin.sock --max-moves 20 --apply --parallel 4 --freeze --copy-cmd ./copy.sh --cleanup-cmd ./drop.sh`,
		Args: args(0, "nothing"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.by != string(rebalance.ByUsers) && o.by != string(rebalance.ByLoad) {
				return usagef("--by %q: want users or load", o.by)
			}
			if o.figure != string(rebalance.Requests) && o.figure != string(rebalance.Sessions) {
				return usagef("--load %q: want requests or sessions", o.figure)
			}
			if o.by == string(rebalance.ByLoad) && len(o.sockets) == 0 {
				return usagef("--by load reads HAProxy's figures: give at least one --socket")
			}
			if o.maxMoves < 1 {
				return usagef("--max-moves %d: want at least 1", o.maxMoves)
			}
			if o.sample < 0 {
				return usagef("--sample %s: want 0 or more", o.sample)
			}
			if err := checkApplyFlags(cmd, o); err != nil {
				return err
			}
			for _, sh := range o.shards {
				if err := maps.ValidateShard(sh); err != nil {
					return fmt.Errorf("--shards: %w", err)
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout+o.sample)
			defer cancel()
			rp, err := a.plan(ctx, o)
			if err != nil {
				return err
			}
			if o.write != "" {
				var b bytes.Buffer
				if err := move.WritePlan(&b, rp.header(), rp.Plan.PlanLines(rp.Mode == "ids")); err != nil {
					return fmt.Errorf("--write: %w", err)
				}
				if err := atomicfile.Write(o.write, b.Bytes(), 0o644); err != nil {
					return fmt.Errorf("--write: %w", err)
				}
			}
			var applyErr error
			if o.apply {
				applyErr = a.applyPlan(cmd, rp, o)
			}
			if *out == outJSON {
				if err := writeJSON(cmd.OutOrStdout(), rp); err != nil {
					return err
				}
			} else if err := rp.table(cmd.OutOrStdout()); err != nil {
				return err
			}
			return applyErr
		},
	}
	f := c.Flags()
	f.StringVar(&o.by, "by", string(rebalance.ByUsers), "what to even out: users (counted in Redis) or load (from HAProxy's show stat)")
	f.StringVar(&o.figure, "load", string(rebalance.Requests), "with --by load: requests (per second over --sample) or sessions (current)")
	f.StringSliceVar(&o.sockets, "socket", nil, "HAProxy stats socket to read show stat from; repeat or comma-separate for several HAProxies in front of the same shards")
	f.DurationVar(&o.sample, "sample", 5*time.Second, "with --by load --load requests: how long to count requests (0: the totals since HAProxy started)")
	f.IntVar(&o.maxMoves, "max-moves", 100, "propose at most this many moves")
	f.StringSliceVar(&o.shards, "shards", nil, "the shards to even out (default: every backend the syncers published, but the hold backend)")
	f.StringVar(&o.write, "write", "", "write the moves to FILE in mapctl move --from-file's format")
	f.BoolVar(&o.apply, "apply", false, "run the moves through the move procedure (mapctl move), then print the plan with each move's outcome")
	f.IntVar(&o.parallel, "parallel", 1, "with --apply: moves run at once")
	f.StringVar(&o.reason, "reason", "", "with --apply: why, recorded with each move (default: the plan's measure)")
	addMoveFlags(f, &o.freeze, &o.hooks, "with --apply: ")
	out = outputFlag(c)
	return c
}

// checkApplyFlags refuses the move flags without --apply, and bad values.
func checkApplyFlags(cmd *cobra.Command, o planOpts) error {
	if !o.apply {
		for _, name := range []string{"parallel", "reason", "freeze", "freeze-cmd", "unfreeze-cmd", "copy-cmd", "verify-cmd", "cleanup-cmd", "hook-timeout", "retries", "retry-delay"} {
			if cmd.Flags().Changed(name) {
				return usagef("--%s goes with --apply", name)
			}
		}
		return nil
	}
	switch {
	case o.parallel < 1:
		return usagef("--parallel %d: want 1 or more", o.parallel)
	case o.hooks.Timeout <= 0:
		return usagef("--hook-timeout %s: want more than 0", o.hooks.Timeout)
	case o.hooks.Retries < 0 || o.hooks.RetryDelay < 0:
		return usagef("--retries and --retry-delay cannot be negative")
	}
	return nil
}

// appliedMove is one move's outcome with --apply.
type appliedMove struct {
	Subject string `json:"subject"`
	To      string `json:"to"`
	ID      string `json:"id"`    // the move's ID ("" when it was refused before it was recorded)
	State   string `json:"state"` // done, failed or refused
	Step    string `json:"step"`  // where a failed move stopped
	Error   string `json:"error"`
}

// applyPlan runs rp's moves through package move, o.parallel at a time,
// each from where the plan found its subject (a subject that moved since is
// refused by the move itself). The outcomes go into rp.Applied, in the
// plan's order. An interrupt stops the hooks running and records their
// moves failed, resumable.
func (a *app) applyPlan(cmd *cobra.Command, rp *rebalanceReport, o planOpts) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reason := o.reason
	if reason == "" {
		reason = fmt.Sprintf("mapctl rebalance plan --by %s (%s)", rp.Measure, rp.Figure)
	}
	kind := move.KindUser
	if rp.Mode == "ids" {
		kind = move.KindLogical
	}
	m := a.mover(cmd.ErrOrStderr(), nil)
	rp.Applied = make([]appliedMove, len(rp.Moves))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(o.parallel, max(len(rp.Moves), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				pm := rp.Moves[i]
				mv, err := m.Start(ctx, move.Request{Kind: kind, Subject: pm.Subject, From: pm.From, To: pm.To, Reason: reason, Freeze: o.freeze, Hooks: o.hooks})
				res := appliedMove{Subject: pm.Subject, To: pm.To, State: "done"}
				if mv != nil {
					res.ID, res.Step = mv.ID, string(mv.Step)
				}
				switch {
				case err != nil && mv == nil:
					res.State, res.Error = "refused", err.Error()
				case err != nil:
					res.State, res.Error = "failed", err.Error()
				}
				rp.Applied[i] = res
			}
		}()
	}
	sent := 0
	for i := range rp.Moves {
		select {
		case jobs <- i:
			sent++
			continue
		case <-ctx.Done():
		}
		break
	}
	close(jobs)
	wg.Wait()
	failed := 0
	for i := range rp.Applied {
		if i >= sent {
			rp.Applied[i] = appliedMove{Subject: rp.Moves[i].Subject, To: rp.Moves[i].To, State: "not started"}
		}
		if rp.Applied[i].State != "done" {
			failed++
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("rebalance --apply: interrupted after %d of %d moves: %w", sent, len(rp.Moves), err)
	}
	if failed > 0 {
		return fmt.Errorf("rebalance --apply: %d of %d moves did not finish (mapctl moves lists them; mapctl move --resume ID goes on)", failed, len(rp.Moves))
	}
	return nil
}

// rebalanceReport is rebalance plan's result, also its JSON.
type rebalanceReport struct {
	Mode    string   `json:"mode"`   // "users" or "ids" (logical shards move)
	Figure  string   `json:"figure"` // what the numbers are
	Sockets []string `json:"sockets"`
	rebalance.Plan
	// Applied holds each move's outcome with --apply, in Moves' order;
	// null without.
	Applied []appliedMove `json:"applied"`
}

// plan reads the shards and subjects and asks the planner.
func (a *app) plan(ctx context.Context, o planOpts) (*rebalanceReport, error) {
	ids, err := a.idsMode(ctx)
	if err != nil {
		return nil, err
	}
	rp := &rebalanceReport{Mode: "users", Sockets: o.sockets}
	if rp.Sockets == nil {
		rp.Sockets = []string{}
	}
	var subjects []rebalance.Subject
	if ids {
		rp.Mode = "ids"
		m, _, err := a.logicalMap(ctx)
		if err != nil {
			return nil, err
		}
		for l, sh := range m {
			subjects = append(subjects, rebalance.Subject{Name: strconv.Itoa(l), Shard: sh})
		}
	} else {
		seen := map[string]string{}
		if _, err := a.store.Scan(ctx, func(as maps.Assignment) error {
			seen[as.User] = as.Shard // HSCAN may repeat an entry
			return nil
		}, nil); err != nil {
			return nil, err
		}
		subjects = make([]rebalance.Subject, 0, len(seen))
		for u, sh := range seen {
			subjects = append(subjects, rebalance.Subject{Name: u, Shard: sh})
		}
	}
	names := o.shards
	if len(names) == 0 {
		if names, err = a.store.KnownShards(ctx); err != nil {
			return nil, err
		}
		if len(names) == 0 {
			return nil, usagef("no known shards in Redis: start a syncer (it publishes HAProxy's backends), or name them with --shards")
		}
	}
	figure := rebalance.LoadFigure(o.figure)
	sample := time.Duration(0) // users, and current sessions: one read
	if o.by == string(rebalance.ByLoad) && figure == rebalance.Requests {
		sample = o.sample
	}
	readings, err := rebalance.SampleLoad(ctx, o.sockets, sample)
	if errors.Is(err, rebalance.ErrInput) {
		return nil, usageError{Err: fmt.Errorf("--socket: %w", err)}
	}
	if err != nil {
		return nil, err
	}
	shards, err := rebalance.ShardsFromStats(names, figure, readings)
	if err != nil {
		return nil, err
	}
	rp.Plan, err = rebalance.Propose(rebalance.Input{Measure: rebalance.Measure(o.by), Shards: shards, Subjects: subjects, MaxMoves: o.maxMoves})
	if err != nil {
		return nil, err
	}
	switch {
	case o.by == string(rebalance.ByUsers) && ids:
		rp.Figure = "logical shards"
	case o.by == string(rebalance.ByUsers):
		rp.Figure = "users"
	case figure == rebalance.Sessions:
		rp.Figure = "current sessions"
	case o.sample > 0:
		rp.Figure = "requests per second"
	default:
		rp.Figure = "requests since start"
	}
	return rp, nil
}

// header is the comment at the top of a --write file.
func (rp *rebalanceReport) header() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mapctl rebalance plan --by %s: %s, %d moves (stopped: %s)\n", rp.Measure, rp.Figure, len(rp.Moves), rp.Stopped)
	fmt.Fprintf(&b, "written %s; max deviation from the mean %s: %s -> %s\n", time.Now().UTC().Format(time.RFC3339), num(rp.Mean), num(rp.MaxDeviationBefore), num(rp.MaxDeviationAfter))
	for _, s := range rp.Shards {
		fmt.Fprintf(&b, "%s: %s -> %s%s\n", s.Name, num(s.Before), num(s.After), map[bool]string{true: "", false: " (no server up)"}[s.Up])
	}
	return b.String()
}

// num prints a figure: an integer as one, anything else with one decimal.
func num(f float64) string {
	if f == float64(int64(f)) {
		return strconv.FormatInt(int64(f), 10)
	}
	return strconv.FormatFloat(f, 'f', 1, 64)
}

func (rp *rebalanceReport) table(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "by %s (%s per shard): mean %s, max deviation from it %s -> %s\n", rp.Measure, rp.Figure, num(rp.Mean), num(rp.MaxDeviationBefore), num(rp.MaxDeviationAfter))
	if len(rp.Sockets) == 0 {
		fmt.Fprintln(tw, "servers not checked (no --socket): every shard taken as up")
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "SHARD\tUP\tBEFORE\tAFTER\t")
	for _, s := range rp.Shards {
		up := "yes"
		switch {
		case len(rp.Sockets) == 0:
			up = "?"
		case !s.Up:
			up = "no"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", s.Name, up, num(s.Before), num(s.After))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	what := "users"
	if rp.Mode == "ids" {
		what = "logical shards"
	}
	fmt.Fprintf(w, "\n%d moves of %s (stopped: %s", len(rp.Moves), what, rp.Stopped)
	if rp.Ignored > 0 {
		fmt.Fprintf(w, "; %d on the hold backend or an unknown shard left alone", rp.Ignored)
	}
	fmt.Fprintln(w, ")")
	if len(rp.Moves) == 0 {
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if rp.Applied == nil {
		fmt.Fprintln(tw, "\nMOVE\tFROM\tTO\tCARRIES\t")
	} else {
		fmt.Fprintln(tw, "\nMOVE\tFROM\tTO\tCARRIES\tID\tOUTCOME\t")
	}
	for i, m := range rp.Moves {
		subject := m.Subject
		if rp.Mode == "ids" {
			subject = "logical:" + subject
		}
		if rp.Applied == nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", subject, m.From, m.To, num(m.Weight))
			continue
		}
		ap := rp.Applied[i]
		outcome := ap.State
		if ap.State == "failed" {
			outcome += " at " + ap.Step
		}
		if ap.Error != "" {
			outcome += ": " + ap.Error
		}
		id := ap.ID
		if id == "" {
			id = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", subject, m.From, m.To, num(m.Weight), id, outcome)
	}
	return tw.Flush()
}

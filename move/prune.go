package move

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultPruneAge is mapctl moves --prune's default --older-than.
const DefaultPruneAge = 30 * 24 * time.Hour

// pruneScript deletes a finished move's record and its index entry, all or
// nothing, only if the record is still as Prune read it: state done or
// aborted, updated unchanged, no owner lease, and the subject's lock not
// naming it. KEYS: record, index, owner, lock. ARGV: id, updated. It
// returns 1 (deleted) or 0 (kept).
var pruneScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'done' and st ~= 'aborted' then return 0 end
if redis.call('HGET', KEYS[1], 'updated') ~= ARGV[2] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('GET', KEYS[4]) == ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
`)

// Prune deletes the records of the finished moves (state done or aborted:
// their subject's lock and lease were freed when they ended) last updated
// before cutoff, each record with its index entry in one script. A running
// or failed move (it holds its subject's lock; failed ones are resumed or
// aborted) is never deleted, whatever its age, nor a finished one that
// changed, is driven or is named by its subject's lock by the time the
// script runs. With dryRun nothing is deleted. It returns the moves deleted
// (with dryRun, those it would delete), in creation order; on an error,
// those deleted so far with it. A record that does not parse is an error
// naming it (List's), before anything is deleted.
func (m *Mover) Prune(ctx context.Context, cutoff time.Time, dryRun bool) ([]Move, error) {
	list, err := m.List(ctx, true)
	if err != nil {
		return nil, err
	}
	pruned := []Move{}
	for _, mv := range list {
		if (mv.State != StateDone && mv.State != StateAborted) || !mv.Updated.Before(cutoff) {
			continue
		}
		if dryRun {
			pruned = append(pruned, mv)
			continue
		}
		ok, err := m.pruneOne(ctx, &mv)
		if err != nil {
			return pruned, err
		}
		if ok {
			pruned = append(pruned, mv)
			m.log.Info("move record pruned", "move", mv.ID, "state", mv.State, "updated", mv.Updated)
		}
	}
	return pruned, nil
}

// pruneOne runs pruneScript for mv as read: true when it was deleted.
func (m *Mover) pruneOne(ctx context.Context, mv *Move) (bool, error) {
	keys := []string{m.recordKey(mv.ID), m.indexKey(), m.ownerKey(mv.ID), m.lockKey(mv.Kind, mv.Subject)}
	n, err := pruneScript.Run(ctx, m.rdb, keys, mv.ID, mv.Updated.UTC().Format(time.RFC3339Nano)).Int()
	if err != nil {
		return false, fmt.Errorf("redis prune move %s: %w", mv.ID, err)
	}
	return n == 1, nil
}

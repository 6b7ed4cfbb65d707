package maps

import (
	"context"
	"fmt"
)

// ScanPage reads one HSCAN page of the hash from cursor (0 starts a pass)
// and returns its valid assignments, its invalid entries and the cursor of
// the next page (0 when the pass is complete). A pass may return an entry
// twice (HSCAN's guarantee); it returns every entry present for the whole
// pass at least once.
func (s *Store) ScanPage(ctx context.Context, cursor uint64, count int64) (page []Assignment, bad []BadEntry, next uint64, err error) {
	kv, next, err := s.rdb.HScan(ctx, s.UsersKey(), cursor, "", count).Result()
	if err != nil {
		return nil, nil, 0, fmt.Errorf("redis scan %s: %w", s.UsersKey(), err)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		a := Assignment{User: kv[i], Shard: kv[i+1]}
		if err := a.Validate(); err != nil {
			bad = append(bad, BadEntry{User: a.User, Err: err})
			continue
		}
		page = append(page, a)
	}
	return page, bad, next, nil
}

// UsersChangedAfter returns the users named by the changes of the
// change-log entries after the ID after, up to and including upto (a bulk
// entry names each user it sets). More than limit changes is an error, as
// the caller then cannot tell what changed.
func (s *Store) UsersChangedAfter(ctx context.Context, after, upto string, limit int64) (map[string]bool, error) {
	users := map[string]bool{}
	var n int64
	page := min(limit+1, firstPage) // sized on what came, as in ReadLog
	for from := "(" + after; ; {
		msgs, err := s.rdb.XRangeN(ctx, s.LogKey(), from, upto, page).Result()
		if err != nil {
			return nil, fmt.Errorf("redis read %s from %s to %s: %w", s.LogKey(), after, upto, err)
		}
		changes, _ := parseChanges(msgs, nil, nil)
		n += int64(len(changes))
		if n > limit {
			return nil, fmt.Errorf("redis read %s from %s to %s: more than %d changes", s.LogKey(), after, upto, limit)
		}
		for _, c := range changes {
			if c.User != "" {
				users[c.User] = true
			}
		}
		if int64(len(msgs)) < page {
			return users, nil
		}
		per := max(1, (len(changes)+len(msgs)-1)/len(msgs))
		page = min(readPage, max(1, (limit+1-n)/int64(per)))
		from = "(" + msgs[len(msgs)-1].ID
	}
}

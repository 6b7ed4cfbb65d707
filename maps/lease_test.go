package maps

import (
	"context"
	"testing"
	"time"
)

// Claims on real Redis: one holder at a time, renewed and released only by
// their holder; a key that is no live claim (no TTL, or another type) is
// taken, since it would otherwise block every syncer for ever.
func TestClaims(t *testing.T) {
	s, r := newTestStore(t)
	rdb := r.Client(t)
	ctx := context.Background()
	key := s.LeaseKey("t")
	if held, _, err := s.Claim(ctx, key, "a", 5*time.Second); err != nil || !held {
		t.Fatalf("a: %v %v", held, err)
	}
	if held, other, err := s.Claim(ctx, key, "b", 5*time.Second); err != nil || held || other != "a" {
		t.Fatalf("b while a holds: held=%v other=%q err=%v", held, other, err)
	}
	if err := s.Release(ctx, key, "b"); err != nil {
		t.Fatal(err)
	}
	if held, _, _ := s.Claim(ctx, key, "a", 5*time.Second); !held {
		t.Fatal("b's release dropped a's claim")
	}
	if err := s.Release(ctx, key, "a"); err != nil {
		t.Fatal(err)
	}
	if held, _, _ := s.Claim(ctx, key, "b", 5*time.Second); !held {
		t.Fatal("b did not take the released claim")
	}

	for name, set := range map[string]func(string) error{
		"string without TTL": func(k string) error { return rdb.Set(ctx, k, "someone", 0).Err() },
		"list":               func(k string) error { return rdb.RPush(ctx, k, "x").Err() },
	} {
		k := s.NameClaimKey(name)
		if err := set(k); err != nil {
			t.Fatal(err)
		}
		held, _, err := s.Claim(ctx, k, "c", 5*time.Second)
		if err != nil || !held {
			t.Errorf("%s: held=%v err=%v, want taken", name, held, err)
		}
		if ttl := rdb.PTTL(ctx, k).Val(); ttl <= 0 {
			t.Errorf("%s: taken claim has no TTL (%s)", name, ttl)
		}
	}
	// A foreign key WITH a TTL is a live claim: left alone.
	k := s.NameClaimKey("live")
	rdb.Set(ctx, k, "someone", time.Minute)
	if held, other, err := s.Claim(ctx, k, "c", 5*time.Second); err != nil || held || other != "someone" {
		t.Errorf("live foreign claim: held=%v other=%q err=%v", held, other, err)
	}
}

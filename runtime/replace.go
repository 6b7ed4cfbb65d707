package runtime

import (
	"context"
	"fmt"
	"strings"
)

// Entry is one key/value pair of a map.
type Entry struct {
	Key   string
	Value string
}

// Replace swaps the whole content of the live map for entries in one atomic
// step: it prepares a new version, loads it in payloads of at most 8 KB (one
// connection each, through client-native), checks HAProxy's entry count and
// only then commits. Requests see the old map until the commit. On any error
// the new version is cleared and the old map stays as it was.
//
// entries must not hold duplicate keys. Every key and value is checked with
// CheckWord before anything is sent.
func (c *Client) Replace(ctx context.Context, mapPath string, entries []Entry) error {
	if err := checkPath(mapPath); err != nil {
		return err
	}
	var payloads []string
	var b strings.Builder
	for i, e := range entries {
		if err := CheckWord(e.Key); err != nil {
			return fmt.Errorf("runtime replace %s: entry %d key: %w", mapPath, i, err)
		}
		if err := CheckWord(e.Value); err != nil {
			return fmt.Errorf("runtime replace %s: entry %d (%s) value: %w", mapPath, i, e.Key, err)
		}
		if b.Len()+len(e.Key)+len(e.Value)+2 > payloadChunk {
			payloads = append(payloads, b.String())
			b.Reset()
		}
		b.WriteString(e.Key)
		b.WriteByte(' ')
		b.WriteString(e.Value)
		b.WriteByte('\n')
	}
	if b.Len() > 0 {
		payloads = append(payloads, b.String())
	}

	before, err := c.MapEntryCount(ctx, mapPath)
	if err != nil {
		return fmt.Errorf("runtime replace %s: %w", mapPath, err)
	}
	version, err := c.native.PrepareMap(mapPath)
	if err != nil {
		return fmt.Errorf("runtime prepare map %s: %w", mapPath, err)
	}
	fail := func(err error) error {
		// The version was never committed, so no request saw it; drop it.
		if cerr := c.native.ClearMapVersioned(mapPath, version); cerr != nil {
			return fmt.Errorf("%w (and clear map @%s: %v)", err, version, cerr)
		}
		return err
	}
	for i, p := range payloads {
		if err := ctx.Err(); err != nil {
			return fail(fmt.Errorf("runtime replace %s: %w", mapPath, err))
		}
		if err := c.native.AddMapPayloadVersioned(version, mapPath, p); err != nil {
			return fail(fmt.Errorf("runtime add map @%s %s payload %d/%d: %w", version, mapPath, i+1, len(payloads), err))
		}
	}
	// client-native reports a payload HAProxy dropped, or a timed-out read,
	// as success: count what HAProxy actually holds before committing.
	after, err := c.MapEntryCount(ctx, mapPath)
	if err != nil {
		return fail(fmt.Errorf("runtime replace %s: %w", mapPath, err))
	}
	if after-before != len(entries) {
		return fail(fmt.Errorf("runtime replace %s: version %s holds %d entries, sent %d: not committed",
			mapPath, version, after-before, len(entries)))
	}
	if err := c.native.CommitMap(version, mapPath); err != nil {
		return fail(fmt.Errorf("runtime commit map @%s %s: %w", version, mapPath, err))
	}
	return nil
}

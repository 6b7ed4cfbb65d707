package suite

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"
)

// KeySet is the keys one design's requests carry in their user cookie.
type KeySet interface {
	// Key draws a key and returns it with the shard it must route to.
	Key(r *rand.Rand) (key, want string)
}

// ShardHeader is the response header naming the backend that answered
// (each backend answers itself with http-request return).
const ShardHeader = "x-shard"

// httpConn is one keep-alive HTTP/1.1 connection to the frontend, written
// by hand: the load generator must cost the shared core as little as
// possible, and net/http's client costs several times more per request.
type httpConn struct {
	c   net.Conn
	rd  *bufio.Reader
	buf []byte
}

func dialHTTP(addr string) (*httpConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial frontend %s: %w", addr, err)
	}
	return &httpConn{c: c, rd: bufio.NewReaderSize(c, 4096), buf: make([]byte, 0, 256)}, nil
}

var errBadResponse = errors.New("bad HTTP response")

// get sends GET / with Cookie: user=key and returns the x-shard header.
func (h *httpConn) get(key string) (string, error) {
	h.buf = append(h.buf[:0], "GET / HTTP/1.1\r\nHost: bench\r\nCookie: user="...)
	h.buf = append(h.buf, key...)
	h.buf = append(h.buf, "\r\n\r\n"...)
	h.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := h.c.Write(h.buf); err != nil {
		return "", fmt.Errorf("write request: %w", err)
	}
	line, err := h.rd.ReadSlice('\n')
	if err != nil {
		return "", fmt.Errorf("read status: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200")) {
		return "", fmt.Errorf("%w: status %q", errBadResponse, bytes.TrimSpace(line))
	}
	shard, length := "", 0
	for {
		line, err := h.rd.ReadSlice('\n')
		if err != nil {
			return "", fmt.Errorf("read header: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte(ShardHeader)):
			shard = string(v)
		case bytes.EqualFold(k, []byte("content-length")):
			if length, err = strconv.Atoi(string(v)); err != nil || length < 0 || length > 1<<20 {
				return "", fmt.Errorf("%w: content-length %q", errBadResponse, v)
			}
		}
	}
	if _, err := h.rd.Discard(length); err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	return shard, nil
}

func (h *httpConn) close() { h.c.Close() }

// LoadResult is one run of the load generator.
type LoadResult struct {
	Requests int64
	Wrong    int64 // answered by another shard than the key's
	Errors   int64
	Elapsed  time.Duration
	Lat      Latencies
	FirstErr string
}

// RPS is requests per second.
func (l LoadResult) RPS() float64 {
	if l.Elapsed <= 0 {
		return 0
	}
	return float64(l.Requests) / l.Elapsed.Seconds()
}

// Load runs conc keep-alive connections to addr for d, each sending one
// request at a time with a key from keys, and checks every answer's
// backend. check=false skips that check (keys whose shard is changing).
func Load(ctx context.Context, addr string, conc int, d time.Duration, keys KeySet, check bool) (LoadResult, error) {
	conns := make([]*httpConn, conc)
	for i := range conns {
		c, err := dialHTTP(addr)
		if err != nil {
			for _, c := range conns[:i] {
				c.close()
			}
			return LoadResult{}, err
		}
		conns[i] = c
	}
	var (
		mu  sync.Mutex
		res LoadResult
		lat []time.Duration
		wg  sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(d)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { c.close() }()
			r := rand.New(rand.NewPCG(uint64(i)+1, uint64(start.UnixNano())))
			var n, wrong, errs int64
			var first string
			my := make([]time.Duration, 0, 1<<16)
			for ctx.Err() == nil {
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				key, want := keys.Key(r)
				got, err := c.get(key)
				if err != nil {
					errs++
					if first == "" {
						first = err.Error()
					}
					// The connection is unusable: dial anew, so a stall
					// (HAProxy busy loading a map) does not cost concurrency.
					c.close()
					nc, derr := dialHTTP(addr)
					if derr != nil {
						break
					}
					c = nc
					continue
				}
				my = append(my, time.Since(t0))
				n++
				if check && got != want {
					wrong++
					if first == "" {
						first = fmt.Sprintf("key %s: answered by %q, want %q", key, got, want)
					}
				}
			}
			mu.Lock()
			res.Requests += n
			res.Wrong += wrong
			res.Errors += errs
			if res.FirstErr == "" {
				res.FirstErr = first
			}
			lat = append(lat, my...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Lat = Summarize(lat)
	if res.Requests == 0 {
		return res, fmt.Errorf("load on %s: no request answered: %s", addr, res.FirstErr)
	}
	return res, nil
}

// usersKeys are the users user000000000.. of a map of n users; user i is
// on shards[i%len(shards)].
type usersKeys struct {
	n      int
	shards []string
}

func userName(i int) string { return fmt.Sprintf("user%09d", i) }

func (u usersKeys) Key(r *rand.Rand) (string, string) {
	i := r.IntN(u.n)
	return userName(i), u.shards[i%len(u.shards)]
}

// fixedKeys routes every key to one shard (the static design).
type fixedKeys struct {
	inner KeySet
	shard string
}

func (f fixedKeys) Key(r *rand.Rand) (string, string) {
	k, _ := f.inner.Key(r)
	return k, f.shard
}

// deltaKeys are the users keys with the delta map of the users-delta design:
// every (n/1000)th of the first 1,000 such users is in the delta, on the
// other shard.
type deltaKeys struct{ u usersKeys }

func (d deltaKeys) Key(r *rand.Rand) (string, string) {
	i := r.IntN(d.u.n)
	want := d.u.shards[i%len(d.u.shards)]
	if step := d.u.n / 1000; step > 0 && i%step == 0 && i/step < 1000 {
		want = d.u.shards[(i+1)%len(d.u.shards)]
	}
	return userName(i), want
}

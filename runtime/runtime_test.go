package runtime

import (
	"bufio"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCheckWord(t *testing.T) {
	for _, w := range []string{"alice", "shard0", "a#b", "x<", strings.Repeat("k", MaxWord)} {
		if err := CheckWord(w); err != nil {
			t.Errorf("CheckWord(%q) = %v", w, err)
		}
	}
	for _, w := range []string{"", "a b", "a\nb", "a\r", "a;b", `a\b`, "#0x1", "k<<", "a\tb", "\x00", "é", strings.Repeat("k", MaxWord+1), "a\n\nclear map x"} {
		if err := CheckWord(w); !errors.Is(err, ErrUnsafeWord) {
			t.Errorf("CheckWord(%q) = %v, want ErrUnsafeWord", w, err)
		}
	}
}

// fakeSocket is a Unix socket that records what it reads and answers with
// reply(line) for each line, in HAProxy's prompt-mode framing.
type fakeSocket struct {
	path  string
	mu    sync.Mutex
	got   strings.Builder
	reply func(line string) (string, bool) // reply body, and false to hang up
}

func newFakeSocket(t *testing.T, reply func(string) (string, bool)) *fakeSocket {
	f := &fakeSocket{path: filepath.Join(t.TempDir(), "s.sock"), reply: reply}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *fakeSocket) serve(c net.Conn) {
	defer c.Close()
	rd := bufio.NewReader(c)
	prompt := false
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return
		}
		f.mu.Lock()
		f.got.WriteString(line)
		f.mu.Unlock()
		line = strings.TrimSuffix(line, "\n")
		var out string
		switch {
		case line == "prompt":
			prompt = true
			c.Write([]byte("\n"))
			continue
		case line == "set severity-output number":
			out = "\n"
		default:
			body, ok := f.reply(line)
			if !ok {
				c.Write([]byte("> " + body))
				return
			}
			out = body + "\n"
		}
		if prompt {
			out = "> " + out
		}
		c.Write([]byte(out))
		if !prompt {
			return
		}
	}
}

func (f *fakeSocket) received() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.got.String()
}

func TestApplyRefusesUnsafeWordsAndSendsNothing(t *testing.T) {
	f := newFakeSocket(t, func(string) (string, bool) { return "", true })
	c, _ := New(f.path, time.Second)
	for _, op := range []Op{
		{Kind: Add, Key: "evil\nclear map /m.map", Value: "s"},
		{Kind: Set, Key: "u", Value: "shard1;clear map /other.map"},
		{Kind: Add, Key: "u", Value: "a b"},
		{Kind: Del, Key: "u<<"},
		{Kind: Add, Key: "u", Value: "s\n\nclear map /m.map"},
	} {
		_, err := c.Apply(context.Background(), "/m.map", []Op{{Kind: Add, Key: "ok", Value: "s"}, op})
		if !errors.Is(err, ErrUnsafeWord) {
			t.Errorf("%v: err = %v, want ErrUnsafeWord", op, err)
		}
	}
	if err := c.Replace(context.Background(), "/m.map", []Entry{{"ok", "s"}, {"k", "v\n\nclear map /m.map"}}); !errors.Is(err, ErrUnsafeWord) {
		t.Errorf("Replace: %v, want ErrUnsafeWord", err)
	}
	if _, err := c.Apply(context.Background(), "/m.map;clear map x", []Op{{Kind: Del, Key: "u"}}); !errors.Is(err, ErrUnsafeWord) {
		t.Errorf("unsafe map path: %v", err)
	}
	if got := f.received(); got != "" {
		t.Fatalf("socket received %q, want nothing", got)
	}
}

func TestApplyReplies(t *testing.T) {
	f := newFakeSocket(t, func(line string) (string, bool) {
		switch {
		case strings.HasPrefix(line, "set map /m.map missing"):
			return "[3]: entry not found.\n", true
		case strings.HasPrefix(line, "del map /m.map missing"):
			return "[3]: Key not found.\n", true
		case strings.HasPrefix(line, "add map /m.map full"):
			return "[3]: out of memory.\n", true
		}
		return "", true
	})
	c, _ := New(f.path, time.Second)
	ops := []Op{{Add, "a", "s1"}, {Set, "missing", "s2"}, {Del, "missing", ""}, {Add, "full", "s"}, {Del, "a", ""}}
	res, err := c.Apply(context.Background(), "/m.map", ops)
	if err != nil || len(res) != 5 {
		t.Fatalf("Apply: %v %v", res, err)
	}
	if res[0] != nil || res[4] != nil {
		t.Errorf("success replies: %v %v", res[0], res[4])
	}
	if !errors.Is(res[1], ErrNotFound) || !errors.Is(res[2], ErrNotFound) {
		t.Errorf("not-found replies: %v %v", res[1], res[2])
	}
	if res[3] == nil || errors.Is(res[3], ErrNotFound) || !strings.Contains(res[3].Error(), "out of memory") || !strings.Contains(res[3].Error(), "add map /m.map full") {
		t.Errorf("other error reply: %v", res[3])
	}
	want := "prompt\nset severity-output number\nadd map /m.map a s1\nset map /m.map missing s2\ndel map /m.map missing\nadd map /m.map full s\ndel map /m.map a\n"
	if got := f.received(); got != want {
		t.Errorf("sent %q, want %q", got, want)
	}
	// The same connection is reused for the next batch.
	if _, err := c.Apply(context.Background(), "/m.map", []Op{{Add, "b", "s"}}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(f.received(), "prompt\n"); n != 1 {
		t.Errorf("%d prompt handshakes, want 1 (one connection)", n)
	}
}

func TestApplyConnectionClosedMidReply(t *testing.T) {
	f := newFakeSocket(t, func(line string) (string, bool) {
		if strings.Contains(line, " b ") {
			return "[3]: half a rep", false
		}
		return "", true
	})
	c, _ := New(f.path, time.Second)
	res, err := c.Apply(context.Background(), "/m.map", []Op{{Add, "a", "s"}, {Add, "b", "s"}, {Add, "c", "s"}})
	if err == nil || !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "add on /m.map: reply 2 of 3") {
		t.Fatalf("err = %v, want ErrTruncated naming the command", err)
	}
	if len(res) != 1 || res[0] != nil {
		t.Fatalf("results before the failure: %v", res)
	}
}

func TestDumpTruncatedIsAnError(t *testing.T) {
	full := newFakeSocket(t, func(string) (string, bool) { return "0x1 a s1\n0x2 b s2\n", true })
	c, _ := New(full.path, time.Second)
	var got []string
	if err := c.Dump(context.Background(), "/m.map", func(k, v string) error { got = append(got, k+"="+v); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "a=s1,b=s2" {
		t.Fatalf("dump: %v", got)
	}
	cut := newFakeSocket(t, func(string) (string, bool) { return "0x1 a s1\n0x2 b", false })
	c, _ = New(cut.path, time.Second)
	err := c.Dump(context.Background(), "/m.map", func(k, v string) error { return nil })
	if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "show map /m.map") {
		t.Fatalf("cut dump: %v, want ErrTruncated naming the command", err)
	}
	bad := newFakeSocket(t, func(string) (string, bool) { return "Unknown map identifier.\n", true })
	c, _ = New(bad.path, time.Second)
	if err := c.Dump(context.Background(), "/m.map", func(k, v string) error { return nil }); err == nil {
		t.Fatal("error reply taken for a dump")
	}
}

func TestDumpTimesOut(t *testing.T) {
	hang := newFakeSocket(t, func(string) (string, bool) {
		time.Sleep(2 * time.Second)
		return "", true
	})
	c, _ := New(hang.path, 100*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Dump(ctx, "/m.map", func(k, v string) error { return nil }); err == nil {
		t.Fatal("a hung dump returned no error")
	}
}

func TestParseEntryCount(t *testing.T) {
	out := "# id (file) description\n2 (/x/users.map) pattern loaded from file '/x/users.map' used by map at file 'h.cfg' line 11. curr_ver=0 next_ver=2 entry_cnt=6\n"
	if n, err := parseEntryCount(out, "/x/users.map"); n != 6 || err != nil {
		t.Fatalf("%d %v", n, err)
	}
	if _, err := parseEntryCount(out, "/y.map"); err == nil {
		t.Fatal("missing map: no error")
	}
}

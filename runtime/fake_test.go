package runtime

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// model answers Runtime API commands the way HAProxy 2.6 does for one map,
// /m.map, with versions (as measured: commit drops older versions only,
// clear of an unknown version succeeds, entry_cnt counts every version).
type model struct {
	mu         sync.Mutex
	curr, next uint32
	vers       map[uint32][]Entry
}

func newModel(live ...Entry) *model {
	return &model{vers: map[uint32][]Entry{0: live}}
}

const unknownMap = "Unknown map identifier. Please use #<id> or <file>.\n\n"

func (m *model) count() int {
	n := 0
	for _, es := range m.vers {
		n += len(es)
	}
	return n
}

// reply returns the whole reply as HAProxy sends it in non-interactive
// mode (body, then the empty line); del server has no empty line.
func (m *model) reply(cmd string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	first, payload, _ := strings.Cut(cmd, "\n")
	f := strings.Fields(first)
	ver := func(s string) (uint32, bool) {
		n, err := strconv.ParseUint(strings.TrimPrefix(s, "@"), 10, 32)
		return uint32(n), err == nil && strings.HasPrefix(s, "@")
	}
	switch {
	case first == "show info":
		return "Name: HAProxy\nVersion: 2.6.12\nPid: 42\nUptime: 0d 0h00m05s\nUptime_sec: 5\n\n"
	case first == "show backend":
		return "# name\nshard0\nshard1\n\n"
	case first == "show map":
		return fmt.Sprintf("# id (file) description\n2 (/m.map) pattern loaded from file '/m.map' used by map at file 'h.cfg' line 12. curr_ver=%d next_ver=%d entry_cnt=%d\n\n", m.curr, m.next, m.count())
	case first == "set severity-output number":
		return "\n"
	case first == "show stat":
		return "# pxname,svname,scur,status,addr\nfe,FRONTEND,0,OPEN,\nshard0,s1,3,UP,127.0.0.1:1\nshard0,BACKEND,0,UP,\n\n"
	case strings.HasPrefix(first, "add server "):
		return "New server registered.\n\n"
	case strings.HasPrefix(first, "enable ") || strings.HasPrefix(first, "set server "):
		return "\n"
	case strings.HasPrefix(first, "del server "):
		return "Server deleted.\n"
	case len(f) < 3 || f[1] != "map":
		return "Unknown command.\n\n"
	}
	// map commands: "<verb> map [@V] /m.map ..."
	args := f[2:]
	v, versioned := ver(args[0])
	if versioned {
		args = args[1:]
	}
	if len(args) == 0 || args[0] != "/m.map" {
		return unknownMap
	}
	switch f[0] {
	case "show":
		var b strings.Builder
		for i, e := range m.vers[m.curr] {
			fmt.Fprintf(&b, "0x%x %s %s\n", 0x1000+i, e.Key, e.Value)
		}
		return b.String() + "\n"
	case "prepare":
		m.next++
		return fmt.Sprintf("New version created: %d\n\n", m.next)
	case "commit":
		if v <= m.curr || v > m.next {
			return "Version number out of range.\n\n"
		}
		for k := range m.vers {
			if k < v {
				delete(m.vers, k)
			}
		}
		m.curr = v
		return "\n"
	case "clear":
		if !versioned {
			v = m.curr
		}
		delete(m.vers, v)
		return "\n"
	case "add":
		if !versioned {
			v = m.curr
		}
		if len(args) == 2 && args[1] == "<<" {
			for _, l := range strings.Split(strings.TrimSuffix(payload, "\n"), "\n") {
				k, val, _ := strings.Cut(l, " ")
				m.vers[v] = append(m.vers[v], Entry{k, val})
			}
			return "\n"
		}
		m.vers[v] = append(m.vers[v], Entry{args[1], args[2]})
		return "\n"
	case "set", "del":
		found := false
		for ver, es := range m.vers {
			for i := 0; i < len(es); i++ {
				if es[i].Key == args[1] {
					found = true
					if f[0] == "set" {
						es[i].Value = args[2]
					} else {
						es = append(es[:i], es[i+1:]...)
						i--
					}
				}
			}
			m.vers[ver] = es
		}
		if !found && f[0] == "set" {
			return "[3]: entry not found.\n\n"
		}
		if !found {
			return "[3]: Key not found.\n\n"
		}
		return "\n"
	}
	return "Unknown command.\n\n"
}

func (m *model) live() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, e := range m.vers[m.curr] {
		out = append(out, e.Key+"="+e.Value)
	}
	sort.Strings(out)
	return out
}

// fake is a Unix socket speaking HAProxy's CLI framing: one command per
// connection (a "<<" command with its payload up to an empty line), or
// prompt mode after "prompt", where each reply is preceded by "> ".
type fake struct {
	path  string
	reply func(cmd string) string

	mu    sync.Mutex
	cmds  []string // every command received, payloads included
	outs  []int    // bytes written per connection, in accept order
	conns int
	// cutConn/cutAt: the cutConn-th connection (from 0) writes only its
	// first cutAt bytes, then closes; -1 for none.
	cutConn, cutAt int

	received, answered atomic.Int64 // command bytes read, and answered
	maxInflight        atomic.Int64
}

func newFake(t testing.TB, reply func(string) string) *fake {
	return newCutFake(t, reply, -1, 0)
}

// newCutFake is a fake whose conn-th connection (from 0) writes only its
// first at bytes and then closes.
func newCutFake(t testing.TB, reply func(string) string, conn, at int) *fake {
	f := &fake{path: filepath.Join(t.TempDir(), "s.sock"), reply: reply, cutConn: conn, cutAt: at}
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
			f.mu.Lock()
			n := f.conns
			f.conns++
			f.outs = append(f.outs, 0)
			budget := -1
			if n == f.cutConn {
				budget = f.cutAt
			}
			f.mu.Unlock()
			go f.serve(c, n, budget)
		}
	}()
	return f
}

func (f *fake) serve(c net.Conn, n, budget int) {
	defer c.Close()
	// Read eagerly, as HAProxy does, so that bytes in flight are counted
	// as soon as the client writes them.
	pr, pw := io.Pipe()
	go func() {
		buf := make([]byte, 64*1024)
		for {
			k, err := c.Read(buf)
			if k > 0 {
				in := f.received.Add(int64(k)) - f.answered.Load()
				for {
					old := f.maxInflight.Load()
					if in <= old || f.maxInflight.CompareAndSwap(old, in) {
						break
					}
				}
				if _, werr := pw.Write(buf[:k]); werr != nil {
					return
				}
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
	}()
	defer pr.Close()
	write := func(s string) bool {
		if budget >= 0 && len(s) >= budget {
			c.Write([]byte(s[:budget]))
			f.mu.Lock()
			f.outs[n] += budget
			f.mu.Unlock()
			return false
		}
		if budget >= 0 {
			budget -= len(s)
		}
		f.mu.Lock()
		f.outs[n] += len(s)
		f.mu.Unlock()
		_, err := c.Write([]byte(s))
		return err == nil
	}
	rd := bufio.NewReader(pr)
	prompt := false
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return
		}
		size := len(line)
		cmd := strings.TrimSuffix(line, "\n")
		if strings.HasSuffix(cmd, "<<") {
			for {
				l, err := rd.ReadString('\n')
				if err != nil {
					return
				}
				size += len(l)
				if l == "\n" {
					break
				}
				cmd += "\n" + strings.TrimSuffix(l, "\n")
			}
		}
		f.mu.Lock()
		f.cmds = append(f.cmds, cmd)
		f.mu.Unlock()
		if cmd == "prompt" {
			prompt = true
			f.answered.Add(int64(size))
			if !write("\n") {
				return
			}
			continue
		}
		out := f.reply(cmd)
		if prompt {
			out = "> " + out
		}
		f.answered.Add(int64(size))
		if !write(out) || !prompt {
			return
		}
	}
}

func (f *fake) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

func (f *fake) written() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int(nil), f.outs...)
}

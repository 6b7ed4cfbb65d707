package runtime

import (
	"bufio"
	"strings"
	"testing"

	"github.com/shardmap/shardmap/maps"
)

// The prompt-mode reply reader never panics, and a reply it returns never
// holds the empty line that ends a reply.
func FuzzReadPromptReply(f *testing.F) {
	for _, seed := range []string{"> \n", "> [3]: entry not found.\n\n", "> a\nb\n\n> \n", "", "> ", ">x\n\n", "> [9]: ?\n\n"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rd := bufio.NewReader(strings.NewReader(s))
		for i := 0; i < 100; i++ {
			body, err := readPromptReply(rd)
			if err != nil {
				return
			}
			if strings.Contains(body, "\n\n") || strings.HasSuffix(body, "\n") {
				t.Fatalf("reply body %q holds a reply end", body)
			}
			_ = replyError(Op{Kind: Set, Key: "k", Value: "v"}, "/m.map", body)
		}
	})
}

// The "show map" list parser never panics, and what it accepts has the
// three numbers and a path.
func FuzzParseMaps(f *testing.F) {
	for _, seed := range []string{
		"# id (file) description\n2 (/x/users.map) pattern loaded from file '/x/users.map' used by map at file 'h.cfg' line 11. curr_ver=0 next_ver=2 entry_cnt=6",
		"# id (file) description", "", "# id (file)\n()", "# id (file)\n2 (/a) curr_ver= next_ver=1 entry_cnt=1",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		list, err := parseMaps(s)
		for _, m := range list {
			if err == nil && m.Path == "" {
				t.Fatalf("accepted a map without a path: %q", s)
			}
		}
	})
}

// The "show info" parser never panics and never accepts a reply without a
// positive Pid.
func FuzzParseInfo(f *testing.F) {
	for _, seed := range []string{"Name: HAProxy\nPid: 1\nUptime_sec: 5", "Pid: ", "Pid", "Pid: -1", ":", "Uptime_sec: x\nPid: 2"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		i, err := parseInfo(s)
		if err == nil && i.Pid <= 0 {
			t.Fatalf("accepted %q: %+v", s, i)
		}
	})
}

// Every user and shard the domain accepts is a safe runtime word.
func FuzzValidUsersAreSafeWords(f *testing.F) {
	for _, seed := range []string{"alice", "a<", "#x", "x<<", "a;b", "~!$%&'()*+-./:<=>?@[]^_`{|}"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, w string) {
		if maps.ValidateUser(w) == nil && CheckWord(w) != nil {
			t.Fatalf("valid user %q refused by CheckWord: %v", w, CheckWord(w))
		}
		if maps.ValidateShard(w) == nil && CheckWord(w) != nil {
			t.Fatalf("valid shard %q refused by CheckWord: %v", w, CheckWord(w))
		}
	})
}

// The "show stat" parser never panics, and what it accepts has named
// backends with no more servers up than non-negative counts allow.
func FuzzParseBackendStats(f *testing.F) {
	for _, seed := range []string{
		"# pxname,svname,scur,stot,status,act,bck,rate,req_tot\nshard0,s1,0,0,UP,1,0,0,0\nshard0,BACKEND,0,3,UP,1,0,0,3",
		"# pxname,svname,scur,stot,status,act,bck\n", "", "# pxname,svname,\n,,", "# pxname,svname,scur,stot,status,act,bck\na,BACKEND,\"1,2\",0,UP,1,0",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		list, err := parseBackendStats(s)
		if err != nil {
			return
		}
		for _, b := range list {
			if b.Name == "" || b.ServersUp < 0 || b.Sessions < 0 || b.RequestsTotal < 0 || b.SessionsTotal < 0 {
				t.Fatalf("accepted %+v", b)
			}
		}
	})
}

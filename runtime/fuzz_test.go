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

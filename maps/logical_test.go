package maps

import "testing"

func TestLogicalPrefixKeepsTheHashTag(t *testing.T) {
	for _, c := range []struct{ prefix, want string }{
		{"", "{shardmap}:logical"},
		{"{app}", "{app}:logical"},
		{"plain", "plain:logical"},
	} {
		if got := LogicalPrefix(c.prefix); got != c.want {
			t.Errorf("LogicalPrefix(%q) = %q, want %q", c.prefix, got, c.want)
		}
	}
	s := NewStore(nil, LogicalPrefix(""))
	if got := s.UsersKey(); got != "{shardmap}:logical:users" {
		t.Errorf("logical users key %q", got)
	}
}

package maps

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateUser(t *testing.T) {
	good := []string{"alice", "0", "u-1_2.3", "a#b", "x<", "<<x", strings.Repeat("a", 256), "~!$%&'()*+-./:<=>?@[]^_`{|}"}
	for _, u := range good {
		if err := ValidateUser(u); err != nil {
			t.Errorf("ValidateUser(%q) = %v, want nil", u, err)
		}
	}
	bad := map[string]string{
		"":                            "length 0",
		strings.Repeat("a", 257):      "length 257",
		"#0x55aa":                     "starts with '#'",
		"a b":                         "byte 0x20 at 1",
		"a\tb":                        "byte 0x09 at 1",
		"a\nclear map /x.map":         "byte 0x0a at 1",
		"a\r":                         "byte 0x0d at 1",
		"a;clear map /x.map":          "byte ';' at 1",
		"a\\ b":                       "byte '\\\\' at 1",
		`a"b`:                         `byte '"' at 1`,
		"a,b":                         "byte ',' at 1",
		"x<<":                         `ends in "<<"`,
		"\x00":                        "byte 0x00 at 0",
		"caf\xc3\xa9":                 "byte 0xc3 at 3",
		"a\n\nshow map":               "byte 0x0a at 1",
		"\x7f":                        "byte 0x7f at 0",
		"user\nadd map /x.map evil 1": "byte 0x0a at 4",
	}
	for u, why := range bad {
		err := ValidateUser(u)
		if err == nil {
			t.Errorf("ValidateUser(%q) = nil, want error", u)
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), "users are") {
			t.Errorf("ValidateUser(%q) = %q, want ErrInvalid naming %q and the rule", u, err, why)
		}
	}
}

func TestValidateShard(t *testing.T) {
	for _, s := range []string{"shard0", "be_eu-1", "a.b:c", strings.Repeat("s", 64)} {
		if err := ValidateShard(s); err != nil {
			t.Errorf("ValidateShard(%q) = %v", s, err)
		}
	}
	if err := ValidateShard("sh\xc3rd"); err == nil || !strings.Contains(err.Error(), "byte 0xc3 at 2") {
		t.Errorf("a non-ASCII byte is not shown in hex: %v", err)
	}
	for _, s := range []string{"", strings.Repeat("s", 65), "a b", "a;b", "a\nb", "a/b", "shard#1", "ünï"} {
		err := ValidateShard(s)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "backend names") {
			t.Errorf("ValidateShard(%q) = %v, want ErrInvalid with the rule", s, err)
		}
	}
}

package cli

import (
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"redis://:s3cret@127.0.0.1:1/0":              "redis://:xxxxx@127.0.0.1:1/0",
		"redis://bob:s3cret@127.0.0.1:1/0":           "redis://bob:xxxxx@127.0.0.1:1/0",
		"redis://127.0.0.1:6379/0":                   "redis://127.0.0.1:6379/0",
		"redis://:s3 cr%zzet@127.0.0.1:1/0":          "redis://xxxxx@127.0.0.1:1/0",
		"redis://:a@b%zz@127.0.0.1:1/0":              "redis://xxxxx@127.0.0.1:1/0",
		"::s3cret@127.0.0.1":                         "xxxxx@127.0.0.1",
		"redis://:s3cret@[::1:6379/0":                "redis://xxxxx@[::1:6379/0",
		"not a url at all %zz":                       hidden,
		"s3cretpw":                                   hidden,
		"127.0.0.1:6379?password=s3cret":             hidden,
		"redis://127.0.0.1:1/0?password=s3cret&db=1": "redis://127.0.0.1:1/0?db=xxxxx&password=xxxxx",
		"redis://:pw@127.0.0.1:1/0#frag":             "redis://:xxxxx@127.0.0.1:1/0",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRedisErrorHidesPassword(t *testing.T) {
	for _, u := range []string{
		"redis://:s3cret@127.0.0.1:1/0/extra",
		"redis://:s3cret@127.0.0.1:1/x",
		"redis://:s3cret@127.0.0.1:port/0",
		"redis://:s3cret%zz@127.0.0.1:1/0",
		"redis://:s3cret@[::1:6379/0",
		"http://:s3cret@127.0.0.1:1/0",
	} {
		_, err := Redis(u, true, TLSFiles{})
		if err == nil {
			t.Errorf("Redis(%q) accepted a malformed URL", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Redis(%q) error shows the password: %v", u, err)
		}
	}
}

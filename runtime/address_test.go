package runtime

import (
	"errors"
	"testing"
)

func TestParseAddress(t *testing.T) {
	for _, c := range []struct{ in, network, addr string }{
		{"/run/haproxy/admin.sock", "unix", "/run/haproxy/admin.sock"},
		{"unix@/run/haproxy/admin.sock", "unix", "/run/haproxy/admin.sock"},
		{"ipv4@127.0.0.1:9999", "tcp", "127.0.0.1:9999"},
		{"ipv6@[::1]:9999", "tcp", "[::1]:9999"},
		{"127.0.0.1:9999", "tcp", "127.0.0.1:9999"},
		{"haproxy-1.internal:9999", "tcp", "haproxy-1.internal:9999"},
	} {
		n, a, err := ParseAddress(c.in)
		if err != nil || n != c.network || a != c.addr {
			t.Errorf("ParseAddress(%q) = %q, %q, %v; want %q, %q", c.in, n, a, err, c.network, c.addr)
		}
	}
	for _, in := range []string{"", "unix@relative.sock", "tcp@127.0.0.1:1", "127.0.0.1", ":9999", "ipv4@[::1]:1", "ipv6@::1:1", "host:"} {
		if _, _, err := ParseAddress(in); !errors.Is(err, ErrBadAddress) {
			t.Errorf("ParseAddress(%q): err %v, want ErrBadAddress", in, err)
		}
	}
}

package runtime

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// ErrBadAddress: a Runtime API address that is neither a Unix socket path
// nor a TCP address in one of the forms HAProxy's "stats socket" takes.
var ErrBadAddress = errors.New("bad runtime API address")

// ParseAddress reads a Runtime API address the way HAProxy's own "stats
// socket" line spells it: an absolute path or "unix@PATH" for a Unix
// socket; "ipv4@HOST:PORT", "ipv6@[HOST]:PORT" or "HOST:PORT" for TCP. It
// returns the network ("unix" or "tcp") and the address to dial. Errors
// wrap ErrBadAddress and name the address and the rule.
func ParseAddress(addr string) (network, address string, err error) {
	bad := func(rule string) (string, string, error) {
		return "", "", fmt.Errorf("%w %q: %s", ErrBadAddress, addr, rule)
	}
	switch {
	case addr == "":
		return bad("empty")
	case strings.HasPrefix(addr, "unix@"):
		p := strings.TrimPrefix(addr, "unix@")
		if !strings.HasPrefix(p, "/") {
			return bad("a unix@ socket path must be absolute")
		}
		return "unix", p, nil
	case strings.HasPrefix(addr, "/"):
		return "unix", addr, nil
	}
	hostPort, family := addr, ""
	if i := strings.Index(addr, "@"); i >= 0 {
		family, hostPort = addr[:i], addr[i+1:]
		if family != "ipv4" && family != "ipv6" {
			return bad("the prefix must be unix@, ipv4@ or ipv6@")
		}
	}
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil || host == "" || port == "" {
		return bad("want an absolute socket path, unix@PATH, ipv4@HOST:PORT, ipv6@[HOST]:PORT or HOST:PORT")
	}
	if family == "ipv4" && strings.Contains(host, ":") {
		return bad("ipv4@ takes an IPv4 address or a host name")
	}
	if family == "ipv6" && !strings.Contains(hostPort, "[") {
		return bad("ipv6@ takes the address in brackets: ipv6@[::1]:9999")
	}
	return "tcp", net.JoinHostPort(host, port), nil
}

package haproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ErrSyncerConfig is wrapped by every error about a syncer configuration
// file of its own (one without shards:). The syncer: section of a topology
// and a file a topology points to with syncer_config: are topology errors
// (ErrTopology) too.
var ErrSyncerConfig = errors.New("invalid syncer configuration")

// SyncerConfig is the syncer's configuration as a file holds it: the
// syncer: section of a topology, a file the topology names with
// syncer_config:, or a file of its own with these keys at the top. The zero
// value of a field means "not set here": the command's flags, environment
// and defaults decide (flag > environment > file > default). Durations are
// Go durations ("200ms", "1m").
type SyncerConfig struct {
	// Targets are the HAProxy Runtime API addresses the syncer drives: an
	// absolute unix socket path, unix@PATH, ipv4@HOST:PORT,
	// ipv6@[HOST]:PORT or HOST:PORT (see CheckRuntimeAddr). In a topology,
	// unset means [socket].
	Targets []string `yaml:"targets,omitempty"`
	// Map is the map's path as HAProxy knows it (in haproxy.cfg). In a
	// topology, unset means the topology's map, and a different value from
	// the topology's map is an error: the rendered haproxy.cfg and the
	// syncer must name the same map.
	Map string `yaml:"map,omitempty"`
	// MapFile is the file the syncer writes; unset means Map. It differs
	// from Map when the syncer sees HAProxy's file under another path (a
	// container, a chroot).
	MapFile string `yaml:"map_file,omitempty"`
	// LogicalMap is the logical map of routing: ids as HAProxy knows it:
	// when set, the syncer also keeps it equal to the logical map in Redis
	// (maps.LogicalPrefix), with a second syncer. In a topology with
	// routing: ids, unset means the topology's logical map, and a different
	// value is an error; with routing: users it must be unset.
	LogicalMap string `yaml:"logical_map,omitempty"`
	// LogicalMapFile is the logical map file the syncer writes; unset means
	// LogicalMap (as MapFile is to Map).
	LogicalMapFile string `yaml:"logical_map_file,omitempty"`
	Redis          string `yaml:"redis,omitempty"`      // Redis URL; may hold a password
	RedisCA        string `yaml:"redis_ca,omitempty"`   // PEM file of the CA that signed Redis's certificate
	RedisCert      string `yaml:"redis_cert,omitempty"` // PEM client certificate for Redis
	RedisKey       string `yaml:"redis_key,omitempty"`  // PEM key of RedisCert
	Prefix         string `yaml:"prefix,omitempty"`     // Redis key prefix
	Listen         string `yaml:"listen,omitempty"`     // HOST:PORT for /healthz, /readyz and /metrics
	Name           string `yaml:"name,omitempty"`       // how the syncer reports itself in Redis

	FlushDelay     time.Duration `yaml:"flush_delay,omitempty"`
	ReconcileEvery time.Duration `yaml:"reconcile_every,omitempty"`
	RuntimeTimeout time.Duration `yaml:"runtime_timeout,omitempty"`
	ReplaceAbove   int           `yaml:"replace_above,omitempty"`
	DeltaMax       int           `yaml:"delta_max,omitempty"`
	// MaxDeleteShare is a pointer because 0 is a setting (refuse any
	// reconcile that deletes more than 5 entries), not "unset".
	MaxDeleteShare *float64 `yaml:"max_delete_share,omitempty"`
	FileMode       string   `yaml:"file_mode,omitempty"` // octal, e.g. "0640" (YAML's 0640 works too)
	LogFormat      string   `yaml:"log_format,omitempty"`
	LogLevel       string   `yaml:"log_level,omitempty"`
}

// Validate checks each field that is set. It does not parse Redis (its
// URL may hold a password, which errors here would show; the command
// checks it and redacts it).
func (c *SyncerConfig) Validate() error {
	seen := map[string]bool{}
	for _, a := range c.Targets {
		if err := CheckRuntimeAddr(a); err != nil {
			return fmt.Errorf("targets: %w", err)
		}
		if seen[a] {
			return fmt.Errorf("targets: %q is listed twice", a)
		}
		seen[a] = true
	}
	for _, p := range []struct{ name, v string }{{"map", c.Map}, {"map_file", c.MapFile}, {"logical_map", c.LogicalMap}, {"logical_map_file", c.LogicalMapFile}} {
		if p.v != "" && !cfgPath(p.v) {
			return fmt.Errorf("%s %q: want an absolute path without blanks, quotes, '#', ',', ';', '(' or ')'", p.name, p.v)
		}
	}
	for _, p := range []struct{ name, v string }{{"redis_ca", c.RedisCA}, {"redis_cert", c.RedisCert}, {"redis_key", c.RedisKey}} {
		if p.v != "" && strings.ContainsAny(p.v, "\x00\r\n") {
			return fmt.Errorf("%s %q: want a file path", p.name, p.v)
		}
	}
	if c.LogicalMapFile != "" && c.LogicalMap == "" {
		return errors.New("logical_map_file needs logical_map")
	}
	if c.LogicalMap != "" && c.LogicalMap == c.Map {
		return fmt.Errorf("logical_map %q: must differ from map", c.LogicalMap)
	}
	if (c.RedisCert == "") != (c.RedisKey == "") {
		return errors.New("redis_cert and redis_key go together: set both or neither")
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return fmt.Errorf("listen %q: want HOST:PORT (%v)", c.Listen, err)
		}
	}
	if strings.ContainsAny(c.Name, "\x00\r\n") {
		return fmt.Errorf("name %q: want one line", c.Name)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"flush_delay", c.FlushDelay}, {"reconcile_every", c.ReconcileEvery}, {"runtime_timeout", c.RuntimeTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("%s %s: want a positive duration", d.name, d.v)
		}
	}
	if c.DeltaMax < 0 {
		return fmt.Errorf("delta_max %d: want a positive number of entries", c.DeltaMax)
	}
	if c.ReplaceAbove < 0 {
		return fmt.Errorf("replace_above %d: want a positive number of changes", c.ReplaceAbove)
	}
	if s := c.MaxDeleteShare; s != nil && (*s < 0 || *s > 1) {
		return fmt.Errorf("max_delete_share %v: want a share from 0 to 1", *s)
	}
	if c.FileMode != "" {
		if _, err := ParseFileMode(c.FileMode); err != nil {
			return fmt.Errorf("file_mode: %w", err)
		}
	}
	switch c.LogFormat {
	case "", "text", "json", "auto":
	default:
		return fmt.Errorf("log_format %q: want text, json or auto", c.LogFormat)
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}

// ParseFileMode reads an octal file mode such as "0640" or "640".
func ParseFileMode(s string) (os.FileMode, error) {
	m, err := strconv.ParseUint(strings.TrimPrefix(s, "0o"), 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("%q: want an octal mode such as 0640", s)
	}
	return os.FileMode(m), nil
}

// cfgPath reports whether p is an absolute path that haproxy.cfg can hold
// unquoted.
func cfgPath(p string) bool {
	return strings.HasPrefix(p, "/") && !strings.ContainsAny(p, " \t\r\n;\\#,()'\"")
}

// CheckRuntimeAddr checks a Runtime API address in one of the forms
// HAProxy's own "stats socket" takes: an absolute unix socket path,
// unix@PATH (PATH absolute), ipv4@HOST:PORT (HOST an IPv4 address or a
// name), ipv6@[HOST]:PORT (HOST an IPv6 address) or HOST:PORT (an IPv6
// HOST in brackets). PORT is 1..65535. The error names the address and the
// rule it breaks.
func CheckRuntimeAddr(a string) error {
	const forms = "an absolute unix path, unix@PATH, ipv4@HOST:PORT, ipv6@[HOST]:PORT or HOST:PORT"
	if a == "" {
		return fmt.Errorf("runtime address \"\": want %s", forms)
	}
	if strings.ContainsAny(a, " \t\r\n\x00,;#'\"\\") {
		return fmt.Errorf("runtime address %q: no blanks, ',', ';', '#', quotes or '\\'", a)
	}
	family, rest, hasFamily := strings.Cut(a, "@")
	if !hasFamily {
		if strings.HasPrefix(a, "/") {
			return nil
		}
		if !strings.Contains(a, ":") {
			return fmt.Errorf("runtime address %q: a unix socket path must be absolute (want %s)", a, forms)
		}
		return checkHostPort(a, a, "")
	}
	switch family {
	case "unix":
		if !strings.HasPrefix(rest, "/") {
			return fmt.Errorf("runtime address %q: unix@ wants an absolute path", a)
		}
		return nil
	case "ipv4":
		return checkHostPort(a, rest, "ipv4")
	case "ipv6":
		if !strings.HasPrefix(rest, "[") {
			return fmt.Errorf("runtime address %q: ipv6@ wants [HOST]:PORT", a)
		}
		return checkHostPort(a, rest, "ipv6")
	}
	return fmt.Errorf("runtime address %q: unknown prefix %q (want %s)", a, family+"@", forms)
}

// checkHostPort checks hp, the HOST:PORT part of address a, for family
// "ipv4", "ipv6" or "" (any).
func checkHostPort(a, hp, family string) error {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("runtime address %q: want HOST:PORT (%v)", a, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("runtime address %q: port must be 1..65535", a)
	}
	if host == "" {
		return fmt.Errorf("runtime address %q: empty host", a)
	}
	ip := net.ParseIP(host)
	switch {
	case family == "ipv4" && (strings.Contains(host, ":") || ip != nil && ip.To4() == nil):
		return fmt.Errorf("runtime address %q: ipv4@ wants an IPv4 address or a host name", a)
	case family == "ipv6" && (ip == nil || ip.To4() != nil && !strings.Contains(host, ":")):
		return fmt.Errorf("runtime address %q: ipv6@ wants an IPv6 address in brackets", a)
	case ip == nil && !hostName(host):
		return fmt.Errorf("runtime address %q: host %q is neither an IP address nor a host name", a, host)
	}
	return nil
}

// hostName reports whether h is a DNS host name: dot-separated labels of
// [A-Za-z0-9-], not starting or ending with '-'.
func hostName(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// LoadSyncerConfig reads the syncer's configuration from path, which is
// either a topology (a file with shards:) or a syncer file of its own.
//
// From a topology: its syncer: section, or the file its syncer_config:
// names, with Map defaulting to the topology's map and Targets to its
// socket; the whole topology is validated, and errors wrap ErrTopology.
// From a syncer file: its keys, validated; errors wrap ErrSyncerConfig.
// Unknown keys are errors naming the key and the file. A missing file is
// an error wrapping os.ErrNotExist.
func LoadSyncerConfig(path string) (*SyncerConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var probe map[string]yaml.Node
	if err := yaml.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", path, ErrSyncerConfig, err)
	}
	if _, isTopology := probe["shards"]; !isTopology {
		c, err := parseSyncerFile(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %v", path, ErrSyncerConfig, err)
		}
		return c, nil
	}
	t, err := LoadTopology(path)
	if err != nil {
		return nil, err
	}
	c := *t.Syncer // resolved by ParseTopology: never nil
	c.Targets = append([]string(nil), c.Targets...)
	return &c, nil
}

// syncerKeys are the keys of a syncer configuration, in file order.
var syncerKeys = func() []string {
	var keys []string
	t := reflect.TypeFor[SyncerConfig]()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		keys = append(keys, name)
	}
	return keys
}()

// checkSyncerNode checks the keys of a syncer configuration before it is
// decoded, so that an unknown key or a duration that is not a Go duration
// is named in the error with its line, which yaml's own errors do not do
// as plainly.
func checkSyncerNode(n *yaml.Node) error {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return nil // yaml's decoder names what it got instead
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !slices.Contains(syncerKeys, k.Value) {
			return fmt.Errorf("line %d: unknown key %q (known: %s)", k.Line, k.Value, strings.Join(syncerKeys, ", "))
		}
		switch k.Value {
		case "flush_delay", "reconcile_every", "runtime_timeout":
			if _, err := time.ParseDuration(v.Value); v.Kind != yaml.ScalarNode || err != nil {
				return fmt.Errorf("line %d: %s %q: want a Go duration such as 200ms, 3s or 1m", v.Line, k.Value, v.Value)
			}
		}
	}
	return nil
}

// parseSyncerFile decodes a syncer file of its own (unknown keys are
// errors) and validates it. An empty file is an empty configuration.
func parseSyncerFile(data []byte) (*SyncerConfig, error) {
	var n yaml.Node
	if err := yaml.Unmarshal(data, &n); err != nil {
		return nil, err
	}
	if err := checkSyncerNode(&n); err != nil {
		return nil, err
	}
	var c SyncerConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// resolveSyncer fills t.Syncer: the syncer: section, or the file named by
// syncer_config (relative to dir), or an empty section; then applies the
// topology's defaults (map, socket) and checks that the two agree. It runs
// before Validate, so that a map set only in the syncer section is the
// topology's map too.
func (t *Topology) resolveSyncer(dir string) error {
	if t.Syncer != nil && t.SyncerConfig != "" {
		return bad("set syncer: or syncer_config:, not both")
	}
	if t.SyncerConfig != "" {
		p := t.SyncerConfig
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return bad("syncer_config: %v", err)
		}
		var probe map[string]yaml.Node
		if yaml.Unmarshal(data, &probe) == nil {
			if _, ok := probe["shards"]; ok {
				return bad("syncer_config %s: is a topology (it has shards:); want a file of syncer keys", p)
			}
		}
		c, err := parseSyncerFile(data)
		if err != nil {
			return bad("syncer_config %s: %v", p, err)
		}
		t.Syncer = c
	} else if t.Syncer == nil {
		t.Syncer = &SyncerConfig{}
	} else if err := t.Syncer.Validate(); err != nil {
		return bad("syncer: %v", err)
	}
	s := t.Syncer
	switch {
	case t.Map == "":
		t.Map = s.Map
	case s.Map == "":
		s.Map = t.Map
	case s.Map != t.Map:
		return bad("syncer map %q differs from the topology's map %q: haproxy.cfg and the syncer must name the same map (map_file sets the file the syncer writes)", s.Map, t.Map)
	}
	if len(s.Targets) == 0 && t.Socket != "" {
		s.Targets = []string{t.Socket}
	}
	if t.Routing != RoutingIDs {
		if s.LogicalMap != "" {
			return bad("syncer logical_map %q: only for routing: ids (routing is %s)", s.LogicalMap, t.EffectiveRouting())
		}
		return nil
	}
	switch lm := t.EffectiveLogicalMap(); {
	case s.LogicalMap == "":
		s.LogicalMap = lm
	case s.LogicalMap != lm:
		return bad("syncer logical_map %q differs from the topology's logical map %q: haproxy.cfg and the syncer must name the same map (logical_map_file sets the file the syncer writes)", s.LogicalMap, lm)
	}
	return nil
}

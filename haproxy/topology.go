// Package haproxy holds shardmap's view of the HAProxy configuration: the
// topology file (logical shards and their physical servers) and the
// haproxy.cfg rendered from it.
package haproxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/shardmap/shardmap/ids"
	"github.com/shardmap/shardmap/maps"
)

// ErrTopology is wrapped by every topology validation error.
var ErrTopology = errors.New("invalid topology")

// Topology is the one file that describes a sharded deployment: the shards
// (HAProxy backends) and their servers, and where HAProxy listens.
type Topology struct {
	Cookie       string `yaml:"cookie"`                 // request cookie holding the user (default "user")
	DefaultShard string `yaml:"default_shard"`          // shard for users without a cookie or not in the map
	Map          string `yaml:"map"`                    // map path as HAProxy knows it (unset: the syncer section's map)
	Frontend     string `yaml:"frontend"`               // address:port the users connect to
	Stats        string `yaml:"stats"`                  // address:port of the stats page (/stats)
	Socket       string `yaml:"socket"`                 // Runtime API socket path (level admin)
	HealthCheck  string `yaml:"health_check,omitempty"` // HTTP check for servers with check: true, e.g. "GET /healthz"
	// StatsTimeout is how long HAProxy keeps an idle Runtime API connection
	// open (its "stats timeout"): 0 means the default, 30s; otherwise whole
	// milliseconds from 1ms to 24h.
	StatsTimeout time.Duration `yaml:"stats_timeout,omitempty"`
	// SocketGroup, when set, is the group the Runtime API socket belongs to,
	// with mode 660 (say haproxy, so that the packaged syncer, which runs in
	// that group, can use it). Unset: mode 600, for the user HAProxy runs as.
	// The group must exist where HAProxy starts, or it refuses the config.
	SocketGroup string `yaml:"socket_group,omitempty"`
	// Routing is how a request finds its shard: "users" (the default; the
	// cookie is looked up in Map) or "ids" (the cookie is an ID of package
	// ids: an entry in Map, the moved IDs, wins; otherwise the logical shard
	// the ID carries is looked up in LogicalMap). See docs/IDS.md.
	Routing string `yaml:"routing,omitempty"`
	// LogicalMap is the logical shard -> shard map file of routing: ids
	// (default: logical.map beside Map). Only with routing: ids.
	LogicalMap string `yaml:"logical_map,omitempty"`
	// DeltaMap makes the rendered config consult a small delta map
	// (maps.DeltaPath of Map, "users.delta.map") before Map. The syncer
	// then writes changes to the delta and folds it into Map by a swap now
	// and then, on HAProxy before 2.9, whose set and del walk the whole map
	// (46 ms a change at 1M users on 2.6). Costs one more lookup per
	// request; see docs/BENCHMARKS.md. Only with routing: users.
	DeltaMap bool `yaml:"delta_map,omitempty"`
	// IDs is the ID layout of routing: ids (zero fields: ids.Default's).
	// Only with routing: ids.
	IDs ids.Layout `yaml:"ids,omitempty"`
	// HoldRetryAfter is the Retry-After, in whole seconds, of the holding
	// backend maps.HoldShard ("shardmap_hold") that Render always adds:
	// a backend without servers that answers every request with 503, this
	// header and a short text body. `mapctl move --freeze` routes a user
	// there while their data is copied. 0 means DefaultHoldRetryAfter;
	// otherwise 1 to 3600. The syncer publishes every HAProxy backend as a
	// known shard, so the holding backend is one too (a user may be routed
	// to it), but it is not a shard of Shards, holds no data, and is never
	// the destination of a move nor counted by the rebalance planner: code
	// that lists the data shards reads Shards (ShardNames), or skips
	// maps.HoldShard in the store's known shards.
	HoldRetryAfter int              `yaml:"hold_retry_after,omitempty"`
	Shards         map[string]Shard `yaml:"shards"`
	// Syncer is the syncer's configuration (syncer --config takes this
	// file). After ParseTopology it is never nil: the syncer: section, or
	// the file SyncerConfig names, or empty, with Map defaulting to the
	// topology's map and Targets to [Socket].
	Syncer *SyncerConfig `yaml:"syncer,omitempty"`
	// SyncerConfig names a file holding the syncer's configuration instead
	// of a syncer: section, relative to the topology's directory.
	SyncerConfig string `yaml:"syncer_config,omitempty"`
}

// Routing modes.
const (
	RoutingUsers = "users" // the cookie is a key of Map
	RoutingIDs   = "ids"   // the cookie is an ID carrying its logical shard
)

// EffectiveRouting is Routing with the default, RoutingUsers, applied.
func (t *Topology) EffectiveRouting() string {
	if t.Routing == "" {
		return RoutingUsers
	}
	return t.Routing
}

// EffectiveLogicalMap is LogicalMap with its default applied: logical.map in
// Map's directory.
func (t *Topology) EffectiveLogicalMap() string {
	if t.LogicalMap == "" {
		return path.Join(path.Dir(t.Map), "logical.map")
	}
	return t.LogicalMap
}

// IDLayout is IDs with ids.Default's values for its zero fields.
func (t *Topology) IDLayout() ids.Layout { return t.IDs.WithDefaults() }

// DefaultStatsTimeout is the Runtime API idle timeout rendered when the
// topology does not set stats_timeout.
const DefaultStatsTimeout = 30 * time.Second

// DefaultHoldRetryAfter is the holding backend's Retry-After, in seconds,
// when the topology does not set hold_retry_after.
const DefaultHoldRetryAfter = 5

// EffectiveHoldRetryAfter is HoldRetryAfter with the default applied.
func (t *Topology) EffectiveHoldRetryAfter() int {
	if t.HoldRetryAfter == 0 {
		return DefaultHoldRetryAfter
	}
	return t.HoldRetryAfter
}

// EffectiveStatsTimeout is StatsTimeout with the default applied.
func (t *Topology) EffectiveStatsTimeout() time.Duration {
	if t.StatsTimeout == 0 {
		return DefaultStatsTimeout
	}
	return t.StatsTimeout
}

// Shard is one logical shard: an HAProxy backend.
type Shard struct {
	Servers []Server `yaml:"servers"`
}

// Server is one physical server of a shard.
type Server struct {
	Addr   string `yaml:"addr"`             // host:port
	Weight int    `yaml:"weight,omitempty"` // 1..256, default 100
	Check  bool   `yaml:"check,omitempty"`  // health-check it with HealthCheck
}

// Name is the server's name in HAProxy, derived from its address so that it
// is stable across renders and readable in diffs: 127.0.0.1:8000 ->
// 127.0.0.1_8000.
func (s Server) Name() string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, s.Addr)
}

// EffectiveWeight is the weight with the default applied.
func (s Server) EffectiveWeight() int {
	if s.Weight == 0 {
		return 100
	}
	return s.Weight
}

// ShardNames returns the shard names, sorted.
func (t *Topology) ShardNames() []string {
	names := make([]string, 0, len(t.Shards))
	for n := range t.Shards {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// LoadTopology reads and validates a topology file.
func LoadTopology(path string) (*Topology, error) {
	f, err := OpenTopologyFile(path)
	if err != nil {
		return nil, err
	}
	return f.Topology(), nil
}

// ParseTopology decodes YAML (unknown fields are errors) and validates it.
// A relative syncer_config path is read from the working directory; a
// topology read from a file (LoadTopology) reads it from that file's
// directory.
func ParseTopology(data []byte) (*Topology, error) {
	return parseTopology(data, "")
}

// parseTopology is ParseTopology with a relative syncer_config read from
// dir.
func parseTopology(data []byte, dir string) (*Topology, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err == nil && doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		if n := mappingValue(doc.Content[0], "syncer"); n != nil {
			if err := checkSyncerNode(n); err != nil {
				return nil, bad("syncer: %v", err)
			}
		}
	}
	var t Topology
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTopology, err)
	}
	if t.Cookie == "" {
		t.Cookie = "user"
	}
	if err := t.resolveSyncer(dir); err != nil {
		return nil, err
	}
	return &t, t.Validate()
}

func bad(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrTopology, fmt.Sprintf(format, a...))
}

// Validate checks every field against what HAProxy and shardmap accept.
func (t *Topology) Validate() error {
	if !cookieName(t.Cookie) {
		return bad("cookie %q: want 1..64 bytes of [A-Za-z0-9_-]", t.Cookie)
	}
	if len(t.Shards) == 0 {
		return bad("no shards")
	}
	if _, ok := t.Shards[t.DefaultShard]; !ok {
		return bad("default_shard %q is not one of the shards", t.DefaultShard)
	}
	switch t.Routing {
	case "", RoutingUsers:
		if t.LogicalMap != "" || t.IDs != (ids.Layout{}) {
			return bad("logical_map and ids are for routing: ids (routing is %s)", t.EffectiveRouting())
		}
	case RoutingIDs:
		if err := t.IDs.Validate(); err != nil {
			return bad("ids: %v", err)
		}
		if t.DeltaMap {
			return bad("delta_map is for routing: users")
		}
	default:
		return bad("routing %q: want users or ids", t.Routing)
	}
	paths := []struct{ name, v string }{{"map", t.Map}, {"socket", t.Socket}}
	if t.EffectiveRouting() == RoutingIDs {
		paths = append(paths, struct{ name, v string }{"logical_map", t.EffectiveLogicalMap()})
		if t.EffectiveLogicalMap() == t.Map {
			return bad("logical_map %q is the same file as map", t.Map)
		}
	}
	for _, p := range paths {
		if p.v == "" || !strings.HasPrefix(p.v, "/") || strings.ContainsAny(p.v, " \t\r\n;\\#,()'\"") {
			return bad("%s %q: want an absolute path without blanks, quotes, '#', ',', ';', '(' or ')'", p.name, p.v)
		}
	}
	for _, a := range []struct{ name, v string }{{"frontend", t.Frontend}, {"stats", t.Stats}} {
		if err := checkAddr(a.v); err != nil {
			return bad("%s: %v", a.name, err)
		}
	}
	if d := t.StatsTimeout; d != 0 && (d < time.Millisecond || d > 24*time.Hour || d%time.Millisecond != 0) {
		return bad("stats_timeout %s: want whole milliseconds from 1ms to 24h (or unset for %s)", d, DefaultStatsTimeout)
	}
	if r := t.HoldRetryAfter; r < 0 || r > 3600 {
		return bad("hold_retry_after %d: want whole seconds from 1 to 3600 (or unset for %d)", r, DefaultHoldRetryAfter)
	}
	if g := t.SocketGroup; g != "" && !groupName(g) {
		return bad("socket_group %q: want a group name, 1..32 bytes of [a-z0-9_-], starting with a letter or '_'", g)
	}
	if s := t.Syncer; s != nil {
		if err := s.Validate(); err != nil {
			return bad("syncer: %v", err)
		}
		if s.Map != "" && s.Map != t.Map {
			return bad("syncer map %q differs from the topology's map %q: haproxy.cfg and the syncer must name the same map", s.Map, t.Map)
		}
	}
	if t.HealthCheck != "" && strings.ContainsAny(t.HealthCheck, "\r\n#;\\") {
		return bad("health_check %q: one line, no '#', ';' or '\\'", t.HealthCheck)
	}
	seen := map[string]string{}
	for _, name := range t.ShardNames() {
		if err := maps.ValidateShard(name); err != nil {
			return bad("shard %q: %v", name, err)
		}
		if name == maps.HoldShard {
			return bad("shard %q: the name is reserved for the holding backend the config always has (mapctl move --freeze)", name)
		}
		sh := t.Shards[name]
		if len(sh.Servers) == 0 {
			return bad("shard %q has no servers", name)
		}
		for _, s := range sh.Servers {
			if err := CheckServer(s); err != nil {
				return bad("shard %q: %v", name, err)
			}
			if other, dup := seen[s.Name()]; dup {
				return bad("server %s is listed twice (shards %q and %q)", s.Addr, other, name)
			}
			seen[s.Name()] = name
			if s.Check && t.HealthCheck == "" {
				return bad("shard %q server %s has check: true but health_check is not set", name, s.Addr)
			}
		}
	}
	return nil
}

// CheckServer validates one server's address and weight.
func CheckServer(s Server) error {
	if err := checkAddr(s.Addr); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if s.Weight < 0 || s.Weight > 256 {
		return fmt.Errorf("server %s: weight %d, want 1..256", s.Addr, s.Weight)
	}
	return nil
}

func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("address %q: want host:port (%v)", a, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("address %q: port must be 1..65535", a)
	}
	if host == "" || strings.ContainsAny(host, " \t\r\n;#\\'\"") {
		return fmt.Errorf("address %q: bad host", a)
	}
	return nil
}

func cookieName(c string) bool {
	if c == "" || len(c) > 64 {
		return false
	}
	for _, r := range c {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// groupName reports whether g is a conventional Unix group name.
func groupName(g string) bool {
	if len(g) == 0 || len(g) > 32 || !(g[0] >= 'a' && g[0] <= 'z' || g[0] == '_') {
		return false
	}
	for i := 0; i < len(g); i++ {
		if c := g[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"github.com/shardmap/shardmap/maps"
)

// The URL schemes Redis accepts besides go-redis's own redis://, rediss://
// and unix://: Sentinel and Cluster, each with a TLS (rediss-) form.
const (
	SchemeSentinel    = "redis-sentinel"
	SchemeSentinelTLS = "rediss-sentinel"
	SchemeCluster     = "redis-cluster"
	SchemeClusterTLS  = "rediss-cluster"
)

// Environment variables of the TLS and replica-wait flags.
const (
	EnvRedisCA          = "SHARDMAP_REDIS_CA"
	EnvRedisCert        = "SHARDMAP_REDIS_CERT"
	EnvRedisKey         = "SHARDMAP_REDIS_KEY"
	EnvRedisWait        = "SHARDMAP_REDIS_WAIT_REPLICAS"
	EnvRedisWaitTimeout = "SHARDMAP_REDIS_WAIT_TIMEOUT"
)

// TLSFiles are PEM files for a TLS connection to Redis: CA, the
// certificates that sign the server's (instead of the system's); Cert and
// Key, a client certificate and its key (both or neither).
type TLSFiles struct{ CA, Cert, Key string }

func (f TLSFiles) empty() bool { return f.CA == "" && f.Cert == "" && f.Key == "" }

// Redis opens a client for rawURL without connecting yet. The forms:
//
//	redis://[USER:PASS@]HOST:PORT[/DB][?OPTIONS]    one server (rediss:// for TLS)
//	unix://[USER:PASS@]/PATH/TO/SOCKET[?db=DB]      one server on a Unix socket
//	redis-sentinel://[USER:PASS@]S1:PORT,S2:PORT/MASTER[/DB][?OPTIONS]
//	                                                 the primary the sentinels name MASTER (rediss-sentinel:// for TLS)
//	redis-cluster://[USER:PASS@]H1:PORT,H2:PORT[?OPTIONS]
//	                                                 a Redis Cluster from seed nodes (rediss-cluster:// for TLS)
//
// In the Sentinel form USER:PASS authenticates to Redis; the sentinels'
// own credentials, if any, go in ?sentinel_username=&sentinel_password=.
// go-redis's own forms work too: redis://S1:PORT?master_name=MASTER&addr=S2:PORT
// (Sentinel; there USER:PASS is the sentinels', ?username=&password= Redis's)
// and redis://H1:PORT?addr=H2:PORT (Cluster). OPTIONS are go-redis's
// (dial_timeout=, read_timeout=, ...; an unknown one is an error). files
// set up TLS and need a TLS form. With failFast, a Redis that is down fails
// the first command within about a second instead of being retried (for
// one-shot commands). The client is a *redis.Client (one server or Sentinel)
// or a *redis.ClusterClient. Errors name the URL redacted (RedactURL).
func Redis(rawURL string, failFast bool, files TLSFiles) (redis.UniversalClient, error) {
	c, err := openRedis(rawURL, failFast, files)
	if err != nil {
		// url.Parse's error quotes the whole URL, password included: keep
		// only its reason.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("--redis %q: %w", RedactURL(rawURL), err)
	}
	return c, nil
}

func openRedis(rawURL string, failFast bool, files TLSFiles) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	redis.SetLogger(quiet{})
	var dial time.Duration
	retries := 0
	if failFast {
		dial, retries = time.Second, -1
	}
	q := u.Query()
	switch {
	case u.Scheme == SchemeSentinel || u.Scheme == SchemeSentinelTLS ||
		(u.Scheme == "redis" || u.Scheme == "rediss") && q.Has("master_name"):
		var o *redis.FailoverOptions
		if strings.HasSuffix(u.Scheme, "-sentinel") {
			o, err = sentinelOptions(u, u.Scheme == SchemeSentinelTLS)
		} else {
			o, err = redis.ParseFailoverURL(rawURL)
		}
		if err != nil {
			return nil, err
		}
		o.DialTimeout, o.MaxRetries = pick(dial, o.DialTimeout), pick(retries, o.MaxRetries)
		if o.TLSConfig, o.Dialer, err = secure(o.TLSConfig, true, files, o.DialTimeout); err != nil {
			return nil, err
		}
		return redis.NewFailoverClient(o), nil
	case u.Scheme == SchemeCluster || u.Scheme == SchemeClusterTLS ||
		(u.Scheme == "redis" || u.Scheme == "rediss") && q.Has("addr"):
		var o *redis.ClusterOptions
		if strings.HasSuffix(u.Scheme, "-cluster") {
			o, err = clusterOptions(u, u.Scheme == SchemeClusterTLS)
		} else {
			o, err = redis.ParseClusterURL(rawURL)
		}
		if err != nil {
			return nil, err
		}
		o.DialTimeout, o.MaxRetries = pick(dial, o.DialTimeout), pick(retries, o.MaxRetries)
		if o.TLSConfig, o.Dialer, err = secure(o.TLSConfig, true, files, o.DialTimeout); err != nil {
			return nil, err
		}
		return redis.NewClusterClient(o), nil
	}
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	o.DialTimeout, o.MaxRetries = pick(dial, o.DialTimeout), pick(retries, o.MaxRetries)
	if o.TLSConfig, o.Dialer, err = secure(o.TLSConfig, false, files, o.DialTimeout); err != nil {
		return nil, err
	}
	return redis.NewClient(o), nil
}

var errTLSFiles = errors.New("--redis-ca, --redis-cert and --redis-key need a TLS URL (rediss://, rediss-sentinel:// or rediss-cluster://)")

// pick returns v when it is set, else def.
func pick[T comparable](v, def T) T {
	var zero T
	if v != zero {
		return v
	}
	return def
}

// secure finishes the TLS config c that go-redis parsed from the URL (nil:
// no TLS, and then files are an error): at least TLS 1.2, files added, and
// for several nodes (multi) no fixed server name, so that each node's
// certificate is checked against the address it is dialled at. It returns
// a dialer for it whose handshake errors name the address and the files.
func secure(c *tls.Config, multi bool, files TLSFiles, timeout time.Duration) (*tls.Config, func(context.Context, string, string) (net.Conn, error), error) {
	if c == nil {
		if !files.empty() {
			return nil, nil, errTLSFiles
		}
		return nil, nil, nil
	}
	c = c.Clone()
	if multi {
		c.ServerName = ""
	}
	c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
	if files.CA != "" {
		pem, err := os.ReadFile(files.CA)
		if err != nil {
			return nil, nil, fmt.Errorf("--redis-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--redis-ca %s: no PEM certificate in it", files.CA)
		}
		c.RootCAs = pool
	}
	if (files.Cert == "") != (files.Key == "") {
		return nil, nil, errors.New("--redis-cert and --redis-key go together: a client certificate needs its key")
	}
	if files.Cert != "" {
		cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
		if err != nil {
			return nil, nil, fmt.Errorf("--redis-cert %s, --redis-key %s: %w", files.Cert, files.Key, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	if timeout <= 0 {
		timeout = 5 * time.Second // go-redis's default
	}
	ca := "the system's CAs (no --redis-ca)"
	if files.CA != "" {
		ca = "--redis-ca " + files.CA
	}
	client := "no client certificate (no --redis-cert)"
	if files.Cert != "" {
		client = "--redis-cert " + files.Cert
	}
	return c, func(ctx context.Context, network, addr string) (net.Conn, error) {
		// The TCP keep-alive go-redis's own dialer uses.
		keep := net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 3}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout, KeepAliveConfig: keep}, Config: c}
		conn, err := d.DialContext(ctx, network, addr)
		if err == nil {
			return conn, nil
		}
		var ve *tls.CertificateVerificationError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("TLS to Redis at %s: its certificate does not verify against %s: %w", addr, ca, err)
		}
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return nil, err // not TLS's doing
		}
		return nil, fmt.Errorf("TLS to Redis at %s (%s, %s): %w", addr, ca, client, err)
	}, nil
}

// hosts splits the host part of a multi-host URL, "H1:PORT,H2:PORT", and
// adds the ?addr= values; each must be HOST:PORT.
func hosts(u *url.URL, q url.Values) ([]string, error) {
	var out []string
	for _, h := range append(strings.Split(u.Host, ","), q["addr"]...) {
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("address %q: want HOST:PORT", h)
		}
		out = append(out, net.JoinHostPort(host, port))
	}
	q.Del("addr")
	return out, nil
}

func scheme(useTLS bool) string {
	if useTLS {
		return "rediss"
	}
	return "redis"
}

// goRedisURL rebuilds u as go-redis's multi-address form: the first address
// as host, the others as ?addr=, and q as the other options.
func goRedisURL(scheme string, addrs []string, q url.Values) string {
	for _, a := range addrs[1:] {
		q.Add("addr", a)
	}
	return (&url.URL{Scheme: scheme, Host: addrs[0], RawQuery: q.Encode()}).String()
}

// sentinelOptions parses redis-sentinel://[USER:PASS@]S1:PORT,S2:PORT/MASTER[/DB][?OPTIONS].
func sentinelOptions(u *url.URL, useTLS bool) (*redis.FailoverOptions, error) {
	q := u.Query()
	addrs, err := hosts(u, q)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if parts[0] == "" || len(parts) > 2 {
		return nil, errors.New("want the master's name as the path: " + SchemeSentinel + "://S1:PORT,S2:PORT/MASTER[/DB]")
	}
	if q.Has("master_name") {
		return nil, errors.New("the master's name goes in the path, not ?master_name=")
	}
	q.Set("master_name", parts[0])
	if len(parts) == 2 {
		if q.Has("db") {
			return nil, errors.New("the database is given twice: in the path and as ?db=")
		}
		q.Set("db", parts[1])
	}
	su, sp := q.Get("sentinel_username"), q.Get("sentinel_password")
	q.Del("sentinel_username")
	q.Del("sentinel_password")
	o, err := redis.ParseFailoverURL(goRedisURL(scheme(useTLS), addrs, q))
	if err != nil {
		return nil, err
	}
	o.SentinelUsername, o.SentinelPassword = su, sp
	if u.User != nil {
		o.Username = u.User.Username()
		o.Password, _ = u.User.Password()
	}
	return o, nil
}

// clusterOptions parses redis-cluster://[USER:PASS@]H1:PORT,H2:PORT[?OPTIONS].
func clusterOptions(u *url.URL, useTLS bool) (*redis.ClusterOptions, error) {
	q := u.Query()
	addrs, err := hosts(u, q)
	if err != nil {
		return nil, err
	}
	if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
		return nil, fmt.Errorf("path %q: Redis Cluster has database 0 only", u.Path)
	}
	if q.Has("db") {
		return nil, errors.New("?db=: Redis Cluster has database 0 only")
	}
	o, err := redis.ParseClusterURL(goRedisURL(scheme(useTLS), addrs, q))
	if err != nil {
		return nil, err
	}
	if u.User != nil {
		o.Username = u.User.Username()
		o.Password, _ = u.User.Password()
	}
	return o, nil
}

// RedisFlags are the flags that say how to reach Redis, shared by the
// syncer and mapctl.
type RedisFlags struct {
	URL string
	TLS TLSFiles
	// WaitReplicas and WaitTimeout are mapctl's --redis-wait-replicas and
	// --redis-wait-timeout (zero unless AddWaitFlags registered them).
	WaitReplicas int
	WaitTimeout  time.Duration

	envErr error // a bad wait value in the environment
}

// AddRedisFlags registers --redis, --redis-ca, --redis-cert and --redis-key
// on fs, with their defaults from SHARDMAP_REDIS, SHARDMAP_REDIS_CA,
// SHARDMAP_REDIS_CERT and SHARDMAP_REDIS_KEY. --help shows the --redis
// default redacted.
func AddRedisFlags(fs *pflag.FlagSet) *RedisFlags {
	f := &RedisFlags{}
	fs.StringVar(&f.URL, "redis", Env(EnvRedis, DefaultRedis), "Redis URL: redis://, rediss://, unix://, redis-sentinel://S1:PORT,S2:PORT/MASTER or redis-cluster://H1:PORT,H2:PORT (env "+EnvRedis+"; see the README)")
	// The default shown by --help must not carry the password that
	// SHARDMAP_REDIS may hold: show it redacted, keep the real value.
	fs.Lookup("redis").DefValue = RedactURL(fs.Lookup("redis").DefValue)
	fs.StringVar(&f.TLS.CA, "redis-ca", Env(EnvRedisCA, ""), "PEM file of the CA certificates that sign Redis's, for rediss URLs (env "+EnvRedisCA+"; default the system's)")
	fs.StringVar(&f.TLS.Cert, "redis-cert", Env(EnvRedisCert, ""), "PEM client certificate for Redis, with --redis-key (env "+EnvRedisCert+")")
	fs.StringVar(&f.TLS.Key, "redis-key", Env(EnvRedisKey, ""), "PEM key of --redis-cert (env "+EnvRedisKey+")")
	return f
}

// AddWaitFlags registers --redis-wait-replicas (env
// SHARDMAP_REDIS_WAIT_REPLICAS, default 0: no wait) and
// --redis-wait-timeout (env SHARDMAP_REDIS_WAIT_TIMEOUT, default 2s) on fs,
// for commands that write assignments. A bad value in the environment is
// reported by Store.
func (f *RedisFlags) AddWaitFlags(fs *pflag.FlagSet) {
	n, d := 0, 2*time.Second
	// Parsed by the flag set, so a bad value is the flag's usage error.
	fs.IntVar(&f.WaitReplicas, "redis-wait-replicas", n, "after each assignment write, WAIT until this many replicas have it, and fail if fewer did within --redis-wait-timeout (env "+EnvRedisWait+")")
	fs.DurationVar(&f.WaitTimeout, "redis-wait-timeout", d, "how long --redis-wait-replicas waits (env "+EnvRedisWaitTimeout+")")
	for _, fe := range [][2]string{{"redis-wait-replicas", EnvRedisWait}, {"redis-wait-timeout", EnvRedisWaitTimeout}} {
		name, env := fe[0], fe[1]
		if v := Env(env, ""); v != "" {
			fl := fs.Lookup(name)
			if err := fl.Value.Set(v); err != nil {
				f.envErr = errors.Join(f.envErr, fmt.Errorf("%s=%q: %w", env, v, err))
				continue
			}
			fl.DefValue = v
		}
	}
}

// Store opens the client (see Redis) and the store under prefix. On a
// Cluster it refuses a prefix without a hash tag (maps.CheckPrefix). With
// WaitReplicas > 0 the store's assignment writes wait for that many
// replicas (maps.Store.WithReplicaWait). Every error is the caller's: a
// UsageError. The caller closes the client.
func (f *RedisFlags) Store(failFast bool, prefix string) (redis.UniversalClient, *maps.Store, error) {
	if f.envErr != nil {
		return nil, nil, UsageError{f.envErr}
	}
	if f.WaitReplicas < 0 {
		return nil, nil, Usagef("--redis-wait-replicas %d: want 0 (no wait) or more", f.WaitReplicas)
	}
	if f.WaitReplicas > 0 && f.WaitTimeout <= 0 {
		return nil, nil, Usagef("--redis-wait-timeout %s: want a positive duration (WAIT 0 would wait for ever)", f.WaitTimeout)
	}
	rdb, err := Redis(f.URL, failFast, f.TLS)
	if err != nil {
		return nil, nil, UsageError{err}
	}
	_, cluster := rdb.(*redis.ClusterClient)
	if err := maps.CheckPrefix(prefix, cluster); err != nil {
		rdb.Close()
		return nil, nil, UsageError{fmt.Errorf("--prefix: %w", err)}
	}
	st := maps.NewStore(rdb, prefix)
	if f.WaitReplicas > 0 {
		st = st.WithReplicaWait(f.WaitReplicas, f.WaitTimeout)
	}
	return rdb, st, nil
}

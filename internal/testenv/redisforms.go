package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Certs are PEM files a test made in Dir: a CA, a server certificate for
// 127.0.0.1 and a client certificate, both signed by the CA, and OtherCA, a
// CA that signed neither.
type Certs struct {
	Dir                                              string
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
	OtherCA                                          string
	pool                                             *x509.CertPool
	client                                           tls.Certificate
}

// MakeCerts makes Certs with Go's crypto (ECDSA P-256, valid for a day).
func MakeCerts(t testing.TB) *Certs {
	t.Helper()
	dir := t.TempDir()
	c := &Certs{Dir: dir}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	serial := int64(1)
	issue := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key, der, kder
	}
	caTmpl := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	}
	ca, caKey, caDER, _ := issue(caTmpl("shardmap test CA"), nil, nil)
	c.CA = write("ca.pem", "CERTIFICATE", caDER)
	_, _, otherDER, _ := issue(caTmpl("some other CA"), nil, nil)
	c.OtherCA = write("other-ca.pem", "CERTIFICATE", otherDER)
	_, _, sDER, sKey := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, ca, caKey)
	c.ServerCert, c.ServerKey = write("server.pem", "CERTIFICATE", sDER), write("server.key", "PRIVATE KEY", sKey)
	_, _, cDER, cKey := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "shardmap client"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
	c.ClientCert, c.ClientKey = write("client.pem", "CERTIFICATE", cDER), write("client.key", "PRIVATE KEY", cKey)
	c.pool = x509.NewCertPool()
	c.pool.AddCert(ca)
	var err error
	if c.client, err = tls.LoadX509KeyPair(c.ClientCert, c.ClientKey); err != nil {
		t.Fatal(err)
	}
	return c
}

// ClientTLS is a TLS config that trusts the CA and shows the client
// certificate.
func (c *Certs) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: c.pool, Certificates: []tls.Certificate{c.client}, MinVersion: tls.VersionTLS12}
}

// ErrNoTLS means redis-server was built without TLS.
var ErrNoTLS = errors.New("redis-server was built without TLS support")

// StartRedisTLS starts redis-server listening on TLS only (--port 0,
// --tls-port on a free port) with c's server certificate, requiring client
// certificates signed by c's CA, and waits until it answers PING over TLS.
// Its URL is rediss://127.0.0.1:PORT/0. A redis-server without TLS skips
// the test, saying so.
func StartRedisTLS(t testing.TB, c *Certs, extra ...string) *Redis {
	t.Helper()
	bin := Need(t, "redis-server")
	port := FreePort(t)
	r := &Redis{Port: port, Dir: t.TempDir(), URL: fmt.Sprintf("rediss://127.0.0.1:%d/0", port), TLS: c.ClientTLS()}
	r.Proc = Start(t, "redis-server", append([]string{bin, "--bind", "127.0.0.1", "--dir", r.Dir, "--save", "",
		"--appendonly", "no", "--protected-mode", "yes", "--port", "0", "--tls-port", strconv.Itoa(port),
		"--tls-cert-file", c.ServerCert, "--tls-key-file", c.ServerKey, "--tls-ca-cert-file", c.CA,
		"--tls-auth-clients", "yes"}, extra...))
	rc := r.Client(t)
	WaitFor(t, 10*time.Second, "redis-server to answer over TLS", func() error {
		if r.Exited() {
			// A build without TLS refuses the TLS options at start.
			if out := r.Output(); strings.Contains(strings.ToLower(out), "tls") {
				t.Skipf("%v: redis-server exited: %s", ErrNoTLS, out)
			}
			t.Fatalf("redis-server exited: %s", r.Output())
		}
		return rc.Ping(context.Background()).Err()
	})
	return r
}

// Sentinel is a redis-server --sentinel run by a test.
type Sentinel struct {
	*Proc
	Port int
	Dir  string
}

// StartSentinel starts a sentinel on a free port that monitors the primary
// at 127.0.0.1:primaryPort as master with quorum, declares it down after
// 1 s, and waits until it answers with the primary's address.
func StartSentinel(t testing.TB, master string, primaryPort, quorum int) *Sentinel {
	t.Helper()
	bin := Need(t, "redis-server")
	s := &Sentinel{Port: FreePort(t), Dir: t.TempDir()}
	conf := filepath.Join(s.Dir, "sentinel.conf") // sentinel rewrites it: its own dir
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d %d\n"+
		"sentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 10000\nsentinel parallel-syncs %s 1\n",
		s.Port, s.Dir, master, primaryPort, quorum, master, master, master)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Proc = Start(t, "sentinel", []string{bin, conf, "--sentinel"})
	c := s.Client(t)
	WaitFor(t, 10*time.Second, "sentinel to answer", func() error {
		if s.Exited() {
			t.Fatalf("sentinel exited: %s", s.Output())
		}
		return c.GetMasterAddrByName(context.Background(), master).Err()
	})
	return s
}

// Client returns a sentinel client, closed when the test ends.
func (s *Sentinel) Client(t testing.TB) *redis.SentinelClient {
	c := redis.NewSentinelClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.Port)})
	t.Cleanup(func() { c.Close() })
	return c
}

// Cluster is a Redis Cluster of primaries only, run by a test.
type Cluster struct {
	Nodes []*Redis
	// URL is redis-cluster://H1:P1,H2:P2,... for shardmap's commands.
	URL string
}

// StartCluster starts n redis-server primaries with cluster-enabled (each
// in its dir, with its bus on a free port), joins them with redis-cli
// --cluster create, and waits until every node reports cluster_state:ok.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	cli := Need(t, "redis-cli")
	c := &Cluster{}
	var addrs []string
	for range n {
		r := StartRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(FreePort(t)), "--cluster-node-timeout", "5000")
		c.Nodes = append(c.Nodes, r)
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", r.Port))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, append(append([]string{"--cluster", "create"}, addrs...), "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, r := range c.Nodes {
		rc := r.Client(t)
		WaitFor(t, 30*time.Second, "cluster_state:ok on "+strconv.Itoa(r.Port), func() error {
			info, err := rc.ClusterInfo(context.Background()).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return errors.New(info)
			}
			return nil
		})
	}
	c.URL = "redis-cluster://" + strings.Join(addrs, ",")
	return c
}

// Client returns a cluster client for c, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	var addrs []string
	for _, r := range c.Nodes {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", r.Port))
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { cc.Close() })
	return cc
}

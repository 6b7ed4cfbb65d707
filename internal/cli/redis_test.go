package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"
)

func TestRedisURLForms(t *testing.T) {
	open := func(u string) redis.UniversalClient {
		t.Helper()
		c, err := Redis(u, true, TLSFiles{})
		if err != nil {
			t.Fatalf("Redis(%q): %v", u, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	if c, ok := open("redis://:pw@127.0.0.1:6379/3").(*redis.Client); !ok || c.Options().Addr != "127.0.0.1:6379" || c.Options().DB != 3 || c.Options().TLSConfig != nil {
		t.Errorf("redis://: %#v", c)
	}
	if c, ok := open("rediss://127.0.0.1:6380/0").(*redis.Client); !ok || c.Options().TLSConfig == nil {
		t.Errorf("rediss:// without TLS")
	}
	if c, ok := open("unix:///run/redis.sock?db=2").(*redis.Client); !ok || c.Options().Network != "unix" || c.Options().DB != 2 {
		t.Errorf("unix://: %#v", c)
	}
	for _, u := range []string{
		"redis-cluster://127.0.0.1:7000,127.0.0.1:7001?addr=127.0.0.1:7002",
		"redis-cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/0",
		"redis://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002",
	} {
		c, ok := open(u).(*redis.ClusterClient)
		if !ok || len(c.Options().Addrs) != 3 || c.Options().Addrs[2] != "127.0.0.1:7002" {
			t.Errorf("%s: %#v", u, c)
		}
	}
	if c, ok := open("rediss-cluster://bob:pw@127.0.0.1:7000").(*redis.ClusterClient); !ok || c.Options().TLSConfig == nil || c.Options().TLSConfig.ServerName != "" || c.Options().Username != "bob" || c.Options().Password != "pw" {
		t.Errorf("rediss-cluster://: %#v", c)
	}
	for _, u := range []string{
		"redis-sentinel://bob:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/2?sentinel_password=spw",
		"redis-sentinel://bob:pw@127.0.0.1:26379/mymaster?db=2&addr=127.0.0.1:26380",
	} {
		c, ok := open(u).(*redis.Client)
		if !ok || c.Options().DB != 2 || c.Options().Username != "bob" || c.Options().Password != "pw" {
			t.Errorf("%s: %#v", u, c.Options())
		}
	}
	if c, ok := open("rediss-sentinel://127.0.0.1:26379/m?skip_verify=true").(*redis.Client); !ok || !c.Options().TLSConfig.InsecureSkipVerify {
		t.Errorf("rediss-sentinel:// ?skip_verify=true lost")
	}
	if c, ok := open("rediss://127.0.0.1:6380/0").(*redis.Client); !ok || c.Options().TLSConfig.ServerName != "127.0.0.1" || c.Options().Dialer == nil {
		t.Errorf("rediss:// server name or dialer: %#v", c.Options())
	}
	if c, ok := open("redis://127.0.0.1:26379?master_name=mymaster&addr=127.0.0.1:26380").(*redis.Client); !ok || c.Options().Addr != "FailoverClient" {
		t.Errorf("go-redis sentinel form: %#v", c.Options())
	}
}

func TestRedisURLErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	for _, tc := range []struct {
		url   string
		files TLSFiles
		want  string
	}{
		{"redis-sentinel://:s3cret@127.0.0.1:26379", TLSFiles{}, "master's name as the path"},
		{"redis-sentinel://:s3cret@127.0.0.1:26379/m/1?db=2", TLSFiles{}, "database is given twice"},
		{"redis-sentinel://:s3cret@127.0.0.1:26379/m?master_name=n", TLSFiles{}, "not ?master_name="},
		{"redis-sentinel://:s3cret@127.0.0.1/m", TLSFiles{}, `"127.0.0.1": want HOST:PORT`},
		{"redis-cluster://:s3cret@127.0.0.1:7000/3", TLSFiles{}, "database 0 only"},
		{"redis-cluster://:s3cret@127.0.0.1:7000,:7001", TLSFiles{}, `":7001": want HOST:PORT`},
		{"redis-cluster://:s3cret@127.0.0.1:7000?bogus=1", TLSFiles{}, "unexpected option: bogus"},
		{"redis://:s3cret@127.0.0.1:6379/0", TLSFiles{CA: notPEM}, "need a TLS URL"},
		{"redis-cluster://:s3cret@127.0.0.1:7000", TLSFiles{CA: notPEM}, "need a TLS URL"},
		{"rediss://:s3cret@127.0.0.1:6379/0", TLSFiles{CA: notPEM}, "no PEM certificate"},
		{"rediss://:s3cret@127.0.0.1:6379/0", TLSFiles{CA: filepath.Join(dir, "none.pem")}, "--redis-ca: open"},
		{"rediss-sentinel://:s3cret@127.0.0.1:26379/m", TLSFiles{Cert: notPEM}, "go together"},
		{"rediss://:s3cret@127.0.0.1:6379/0", TLSFiles{Cert: notPEM, Key: notPEM}, "--redis-cert " + notPEM},
	} {
		_, err := Redis(tc.url, true, tc.files)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--redis ") || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Redis(%q, %+v) = %v, want an error with %q, naming --redis, without the password", tc.url, tc.files, err, tc.want)
		}
	}
}

func TestRedisFlags(t *testing.T) {
	t.Setenv(EnvRedisCA, "/etc/ca.pem")
	t.Setenv(EnvRedisWait, "x")
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	f := AddRedisFlags(fs)
	f.AddWaitFlags(fs)
	if err := fs.Parse([]string{"--redis", "redis://127.0.0.1:1/0", "--prefix-not-here"}); err == nil {
		t.Fatal("unknown flag accepted")
	}
	if f.TLS.CA != "/etc/ca.pem" {
		t.Errorf("CA from env: %q", f.TLS.CA)
	}
	_, _, err := f.Store(true, "")
	var u UsageError
	if err == nil || !strings.Contains(err.Error(), EnvRedisWait) || !errors.As(err, &u) {
		t.Errorf("bad env wait value: %v", err)
	}
	f.envErr, f.TLS = nil, TLSFiles{}
	f.WaitReplicas, f.WaitTimeout = 1, 0
	if _, _, err := f.Store(true, ""); err == nil || !strings.Contains(err.Error(), "--redis-wait-timeout") {
		t.Errorf("zero wait timeout: %v", err)
	}
	f.WaitReplicas = 0
	f.URL = "redis-cluster://127.0.0.1:7000"
	if _, _, err := f.Store(true, "shardmap"); err == nil || !strings.Contains(err.Error(), "hash tag") {
		t.Errorf("untagged prefix on a cluster: %v", err)
	}
	rdb, st, err := f.Store(true, "{x}")
	if err != nil || st == nil {
		t.Fatalf("tagged prefix: %v", err)
	}
	rdb.Close()
}

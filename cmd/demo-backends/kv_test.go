package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// kvCall sends one request as user to srv and decodes the JSON answer.
func kvCall(t *testing.T, srv *httptest.Server, method, path, user, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if user != "" {
		req.AddCookie(&http.Cookie{Name: "user", Value: user})
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: not JSON: %q", method, path, b)
	}
	return resp.StatusCode, out
}

// The servers of one shard share its data, other shards do not see it; the
// hooks copy it to another shard (an exact copy), verify it and delete it
// on the old one, through the admin endpoint, driven by mapctl move's
// environment variables.
func TestKVAndHooks(t *testing.T) {
	kv := newKVStore([]string{"shard0", "shard1"})
	a0 := httptest.NewServer(server{shard: "shard0", index: 0, kv: kv})
	defer a0.Close()
	a1 := httptest.NewServer(server{shard: "shard0", index: 1, kv: kv})
	defer a1.Close()
	b0 := httptest.NewServer(server{shard: "shard1", index: 0, kv: kv})
	defer b0.Close()
	admin := httptest.NewServer(adminHandler(kv))
	defer admin.Close()

	if code, _ := kvCall(t, a0, "GET", "/kv/note", "", ""); code != 401 {
		t.Errorf("no cookie: %d, want 401", code)
	}
	if code, out := kvCall(t, a0, "PUT", "/kv/note", "3", "hello"); code != 200 || out["shard"] != "shard0" || out["value"] != "hello" {
		t.Fatalf("PUT: %d %v", code, out)
	}
	kvCall(t, b0, "PUT", "/kv/stale", "3", "old data on shard1")
	if code, out := kvCall(t, a1, "GET", "/kv/note", "3", ""); code != 200 || out["value"] != "hello" || out["server"] != 1.0 {
		t.Errorf("GET on the shard's other server: %d %v, want hello from server 1", code, out)
	}
	if _, out := kvCall(t, b0, "GET", "/kv/note", "3", ""); out["found"] != false {
		t.Errorf("GET on another shard: %v, want not found", out)
	}

	hook := func(verb string, env ...string) (int, string) {
		t.Helper()
		for i := 0; i+1 < len(env); i += 2 {
			t.Setenv(env[i], env[i+1])
		}
		var out, errb bytes.Buffer
		code := hookMain(verb, []string{"--admin", strings.TrimPrefix(admin.URL, "http://")}, &out, &errb)
		return code, out.String() + errb.String()
	}
	move := []string{"SHARDMAP_USER", "3", "SHARDMAP_FROM", "shard0", "SHARDMAP_TO", "shard1"}
	if code, out := hook("verify", move...); code != 1 || !strings.Contains(out, "missing on shard1: note") {
		t.Errorf("verify before copy: %d %q, want 1, note missing on shard1", code, out)
	}
	if code, out := hook("copy", move...); code != 0 {
		t.Fatalf("copy: %d %s", code, out)
	}
	if _, out := kvCall(t, b0, "GET", "/kv", "3", ""); len(out["data"].(map[string]any)) != 1 || out["data"].(map[string]any)["note"] != "hello" {
		t.Errorf("after copy, user 3 on shard1: %v, want exactly note=hello", out)
	}
	kvCall(t, b0, "PUT", "/kv/note", "3", "written on shard1 after the flip")
	if code, out := hook("verify", move...); code != 0 {
		t.Errorf("verify after copy and a newer write on the new shard: %d %s", code, out)
	}
	if code, out := hook("cleanup", move...); code != 0 {
		t.Fatalf("cleanup: %d %s", code, out)
	}
	if _, out := kvCall(t, a0, "GET", "/kv/note", "3", ""); out["found"] != false {
		t.Errorf("after cleanup, on shard0: %v, want not found", out)
	}
	if _, out := kvCall(t, b0, "GET", "/kv/note", "3", ""); out["value"] != "written on shard1 after the flip" {
		t.Errorf("after cleanup, on shard1: %v, want the newer write kept", out)
	}

	if code, out := hook("copy", "SHARDMAP_USER", "3", "SHARDMAP_FROM", "shard0", "SHARDMAP_TO", "shard9"); code != 1 || !strings.Contains(out, "shard9") {
		t.Errorf("copy to an unknown shard: %d %q, want 1 naming shard9", code, out)
	}
	if code, out := hook("copy", "SHARDMAP_USER", ""); code != 2 || !strings.Contains(out, "SHARDMAP_USER") {
		t.Errorf("copy without SHARDMAP_USER: %d %q, want 2 naming it", code, out)
	}
	var errb bytes.Buffer
	if code := hookMain("copy", []string{"--admin", "10.0.0.1:80"}, io.Discard, &errb); code != 2 || !strings.Contains(errb.String(), "loopback") {
		t.Errorf("admin off loopback: %d %q, want 2", code, errb.String())
	}
}

package config_test

import (
	"bytes"
	"context"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aggd/aggd/internal/config"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

func write(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var env = map[string]string{"KEY": "secret", "TOKEN": "t0k"}

func getenv(k string) string { return env[k] }

func TestLoadExpandsSecretsAndRefusesUnknownKeys(t *testing.T) {
	f, err := config.Load(write(t, "a.toml", `
default_upstreams = ["dd"]
[[upstream]]
name = "dd"
type = "datadog"
api_key = "${KEY}"
timeout = "3s"
[[upstream]]
name = "collector"
type = "otlp"
headers = { x = "a-${TOKEN}" }
`), getenv)
	if err != nil {
		t.Fatal(err)
	}
	u := f.Upstreams[0]
	if u.APIKey != "secret" || f.Upstreams[1].Headers["x"] != "a-t0k" || u.Timeout.String() != "3s" || f.DefaultUpstreams[0] != "dd" {
		t.Fatalf("got %+v", f)
	}
	if _, err := config.Load(write(t, "b.toml", "[[upstream]]\nname = \"x\"\napi_kee = \"typo\"\n"), getenv); err == nil || !strings.Contains(err.Error(), "api_kee") {
		t.Fatalf("unknown key: %v", err)
	}
	ts, err := config.LoadTenants(write(t, "t.toml", `
[[tenant]]
id = "acme"
tokens = ["0123456789abcdef", "${TOKEN}-from-the-environment"]
upstreams = ["dd"]
[tenant.credentials.dd]
api_key = "${KEY}-acme"
`), getenv)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := config.Routes(ts)
	if err != nil || routes["acme"].Credentials["dd"].APIKey != "secret-acme" {
		t.Fatalf("routes %v %v", routes, err)
	}
	if st := config.ServiceTenants(ts); st[0].ID != "acme" || st[0].Tokens[0] != "0123456789abcdef" || st[0].Tokens[1] != "t0k-from-the-environment" {
		t.Fatalf("service tenants %+v", st)
	}
	if _, err := config.Routes([]config.Tenant{{TenantConfig: service.TenantConfig{ID: "x"}, TenantRoute: upstream.TenantRoute{Credentials: map[string]config.Credentials{"dd": {}}}}}); err == nil {
		t.Fatal("credentials without upstreams accepted")
	}
}

func TestBuild(t *testing.T) {
	sh := config.Shared{Histogram: upstream.DefaultHistogramConfig(), Metrics: &upstreamtest.Metrics{}, Log: slog.New(slog.DiscardHandler), Stdout: &bytes.Buffer{}}
	for _, tc := range []struct {
		u  config.Upstream
		ok bool
	}{
		{config.Upstream{Name: "a", Type: "datadog"}, true},
		{config.Upstream{Name: "a", Type: "datadog", URL: "ftp://x"}, false},
		{config.Upstream{Name: "a", Type: "datadog", Compression: "lz4"}, false},
		{config.Upstream{Name: "b", Type: "otlp", Endpoint: "127.0.0.1:1", Insecure: true}, true},
		{config.Upstream{Name: "b", Type: "otlp"}, false},
		{config.Upstream{Name: "b", Type: "otlp", Endpoint: "x:1", Compression: "zstd"}, false},
		{config.Upstream{Name: "c", Type: "jsonlines"}, true},
		{config.Upstream{Name: "c", Type: "jsonlines", Path: filepath.Join(t.TempDir(), "o.jsonl")}, true},
		{config.Upstream{Name: "d", Type: "kafka"}, false},
		{config.Upstream{Type: "jsonlines"}, false},
		{config.Upstream{Name: "e", Type: "datadog", CAFile: "/nonexistent"}, false},
		{config.Upstream{Name: "a", Type: "datadog", Senders: -1}, false},
	} {
		u, closer, err := tc.u.Build(sh)
		if (err == nil) != tc.ok {
			t.Errorf("%+v: err %v", tc.u, err)
			continue
		}
		if err == nil {
			u.Shutdown(context.Background())
			closer()
		}
	}
}

func TestCAFileVerifiesTheIntake(t *testing.T) {
	intake := upstreamtest.NewDatadogIntakeTLS(t)
	ca := write(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: intake.Certificate().Raw})))
	sh := config.Shared{Histogram: upstream.DefaultHistogramConfig(), Metrics: &upstreamtest.Metrics{}, Log: slog.New(slog.DiscardHandler)}
	u, _, err := config.Upstream{Name: "dd", Type: "datadog", URL: intake.URL, APIKey: "k", CAFile: ca}.Build(sh)
	if err != nil {
		t.Fatal(err)
	}
	u.Start(context.Background())
	sh2 := window.NewShard(window.DefaultConfig())
	tn := window.NewTenant("acme")
	s := window.Sample{Name: "c", Type: window.TypeCount, Value: 1, SampleRate: 1}
	s.Prepare(tn, nil)
	sh2.Add(tn, &s, 1e18)
	f := &window.Flush{Time: 1e18, Buckets: sh2.Drain(1e18, true, nil)}
	if err := u.Export(context.Background(), f, func(*window.Tenant) (upstream.Credentials, bool) { return upstream.Credentials{}, true }); err != nil {
		t.Fatal(err)
	}
	u.Shutdown(context.Background())
	if n := len(intake.Series()); n != 1 {
		t.Fatalf("TLS intake got %d points", n)
	}
}

package main

import (
	"io"
	"strings"
	"testing"

	configpkg "github.com/aggd/aggd/internal/config"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/upstream"
)

// TestEffectiveConfigRedactsEverySecret: the admin service's view of the
// configuration names every setting but shows no secret: flag tokens,
// upstream API keys and header values, tenant tokens and credentials.
func TestEffectiveConfigRedactsEverySecret(t *testing.T) {
	secrets := map[string]string{
		"admin token":              "admin-s3cret",
		"peer token":               "peer-s3cret",
		"upstream API key":         "dd-api-key-s3cret",
		"upstream header":          "header-s3cret",
		"OTLP header":              "otlp-header-s3cret",
		"tenant token":             "tenant-token-s3cret",
		"tenant API key":           "tenant-api-key-s3cret",
		"tenant credential header": "tenant-header-s3cret",
	}
	cfg, err := parseConfig([]string{"--admin-token", secrets["admin token"], "--peer-token", secrets["peer token"]},
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	file := &configpkg.File{
		DefaultUpstreams: []string{"dd"},
		Upstreams: []configpkg.Upstream{
			{Name: "dd", Type: "datadog", URL: "https://intake.example", APIKey: secrets["upstream API key"],
				Headers: map[string]string{"X-Auth": secrets["upstream header"]}},
			{Name: "otel", Type: "otlp", Endpoint: "collector:4317", Headers: map[string]string{"Authorization": secrets["OTLP header"]}},
		},
	}
	tenants := []configpkg.Tenant{{
		TenantConfig: service.TenantConfig{ID: "acme", Tokens: []string{secrets["tenant token"]}},
		TenantRoute: upstream.TenantRoute{Upstreams: []string{"dd"},
			Credentials: map[string]configpkg.Credentials{"dd": {APIKey: secrets["tenant API key"], Headers: map[string]string{"X-Auth": secrets["tenant credential header"]}}}},
	}}
	got := effectiveConfig(cfg, file, tenants)
	for what, secret := range secrets {
		if strings.Contains(got, secret) {
			t.Errorf("the %s is shown:\n%s", what, got)
		}
	}
	// What is not secret is still there, and the redacted settings are
	// named as such.
	for _, want := range []string{
		`"admin-token": "<redacted>"`, `"peer-token": "<redacted>"`, `"APIKey": "<redacted>"`,
		`"X-Auth": "<redacted>"`, `"Authorization": "<redacted>"`,
		"https://intake.example", "collector:4317", `"ID": "acme"`, `"Tokens": 1`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %s:\n%s", want, got)
		}
	}
}

package config_test

import (
	"strings"
	"testing"

	"github.com/aggd/aggd/internal/config"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"KEY": "s3cr3t", "HOST": "collector.svc", "DOLLAR": "a$b"}
	getenv := func(k string) string { return env[k] }
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "plain", want: "plain"},
		{in: "${KEY}", want: "s3cr3t"},
		{in: "${env:KEY}", want: "s3cr3t"}, // the Collector's form
		{in: "${env:HOST}:4317", want: "collector.svc:4317"},
		{in: "pre-${KEY}-${env:HOST}", want: "pre-s3cr3t-collector.svc"},
		{in: "ab$cd", want: "ab$cd"}, // a $ in a secret stays
		{in: "abc$", want: "abc$"},
		{in: "$$", want: "$"}, // a literal dollar
		{in: "$${KEY}", want: "${KEY}"},
		{in: "$$$${KEY}", want: "$${KEY}"},
		{in: "${DOLLAR}", want: "a$b"}, // values are not expanded again
		{in: "$KEY", want: "$KEY"},     // only the braced forms
		{in: "${UNSET}", err: "variable UNSET is not set"},
		{in: "${env:UNSET}", err: "variable UNSET is not set"},
		{in: "${KEY", err: "without a closing }"},
		{in: "${file:/etc/x}", err: "only ${env:NAME} and ${NAME}"},
		{in: "${}", err: "is not a variable name"},
		{in: "${1X}", err: "is not a variable name"},
		{in: "${A-B}", err: "is not a variable name"},
	} {
		got, err := config.Expand(tc.in, getenv)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Expand(%q) = %q, %v; want an error naming %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("Expand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzExpand(f *testing.F) {
	for _, s := range []string{"${KEY}", "${env:KEY}", "$$", "a$b", "${", "$${KEY}", "${env:}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		getenv := func(string) string { return "V" }
		// Any text written with its dollars doubled comes back whole.
		if got, err := config.Expand(strings.ReplaceAll(s, "$", "$$"), getenv); err != nil || got != s {
			t.Fatalf("Expand of %q escaped = %q, %v", s, got, err)
		}
		// Without a reference, only $$ changes, and nothing fails.
		if !strings.Contains(s, "${") {
			if got, err := config.Expand(s, getenv); err != nil || got != strings.ReplaceAll(s, "$$", "$") {
				t.Fatalf("Expand(%q) = %q, %v", s, got, err)
			}
		}
	})
}

// TestLoadTraps checks the configuration mistakes that used to pass
// silently, each reported with every other in one error.
func TestLoadTraps(t *testing.T) {
	env := map[string]string{"KEY": "k$y", "HOST": "collector.svc:4317", "TOKEN": "t0k"}
	getenv := func(k string) string { return env[k] }
	f, err := config.Load(write(t, "ok.toml", `
[[upstream]]
name = "dd"
type = "datadog"
url = "https://${env:HOST}"
api_key = "${env:KEY}"
[[upstream]]
name = "collector"
type = "otlp"
endpoint = "${HOST}"
headers = { authorization = "Bearer $${literal}" }
[[upstream]]
name = "file"
type = "jsonlines"
path = "/var/log/${TOKEN}.jsonl"
`), getenv)
	if err != nil {
		t.Fatal(err)
	}
	if u := f.Upstreams; u[0].APIKey != "k$y" || u[0].URL != "https://collector.svc:4317" || u[1].Endpoint != "collector.svc:4317" ||
		u[1].Headers["authorization"] != "Bearer ${literal}" || u[2].Path != "/var/log/t0k.jsonl" {
		t.Fatalf("expanded %+v", u)
	}
	_, err = config.Load(write(t, "bad.toml", `
[[upstream]]
name = "dd"
type = "datadog"
api_key = "${DD_API_KEY}"
timeout = 10
endpoint = "x:4317"
[[upstream]]
name = "out"
type = "jsonlines"
path = "-"
senders = 4
max_backoff = 30
`), getenv)
	for _, want := range []string{
		"upstream dd.api_key: ${DD_API_KEY}: variable DD_API_KEY is not set",
		`upstream dd: timeout = 10 has no unit: write a duration such as "10s"`,
		"upstream dd: endpoint does not apply to type datadog",
		"upstream out: senders does not apply to type jsonlines",
		"upstream out: max_backoff does not apply to type jsonlines",
		"upstream out: max_backoff = 30 has no unit",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
	_, err = config.LoadTenants(write(t, "t.toml", `
[[tenant]]
id = "shop"
tokens = ["${SHOP_TOKEN}", "${env:TOKEN}"]
[tenant.credentials.dd]
api_key = "${env:SHOP_KEY}"
`), getenv)
	for _, want := range []string{"tenant shop.tokens[0]: ${SHOP_TOKEN}: variable SHOP_TOKEN is not set", "tenant shop.credentials.dd.api_key: ${env:SHOP_KEY}: variable SHOP_KEY is not set"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSizesTakeUnits(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want func(config) uint64
		n    uint64
		err  string
	}{
		{args: []string{"--memory-limit", "512MiB"}, want: func(c config) uint64 { return c.MemoryLimit }, n: 512 << 20},
		{args: []string{"--memory-limit", "4Gi"}, want: func(c config) uint64 { return c.MemoryLimit }, n: 4 << 30},
		{args: []string{"--memory-limit", "1GB"}, want: func(c config) uint64 { return c.MemoryLimit }, n: 1e9},
		{args: []string{"--memory-limit", "4294967296"}, want: func(c config) uint64 { return c.MemoryLimit }, n: 4 << 30}, // the downward API's bytes
		{env: map[string]string{"AGGD_QUEUE_MAX_BYTES": "2GiB"}, want: func(c config) uint64 { return uint64(c.QueueMaxBytes) }, n: 2 << 30},
		{args: []string{"--sampling-max-bytes", "1.5GiB"}, want: func(c config) uint64 { return uint64(c.Sampling.MaxBytes) }, n: 3 << 29},
		{args: []string{"--max-recv-msg-size", "32MiB"}, want: func(c config) uint64 { return uint64(c.MaxRecvMsgSize) }, n: 32 << 20},
		{args: []string{"--dogstatsd-receive-buffer", "16MiB"}, want: func(c config) uint64 { return uint64(c.DogStatsD.ReceiveBuffer) }, n: 16 << 20},
		{args: []string{}, want: func(c config) uint64 { return uint64(c.QueueMaxBytes) }, n: 1 << 30},
		{args: []string{"--memory-limit", "lots"}, err: `"lots" is not a size`},
		{args: []string{"--memory-limit", "512 furlongs"}, err: "is not a size"},
		{args: []string{"--max-recv-msg-size", "100EiB"}, err: "is not a size"},
	} {
		c, err := parseConfig(tc.args, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: error %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil || tc.want(c) != tc.n {
			t.Errorf("%v %v: %d, %v; want %d", tc.args, tc.env, tc.want(c), err, tc.n)
		}
	}
}

func TestMistypedVariable(t *testing.T) {
	err := checkEnviron([]string{"AGGD_MAX_TAGS=10", "AGGD_MAX_TAG=5", "HOME=/root", "AGGD_COMPLETELY_UNKNOWN=1", "AGGD_INTERVAL=10s"})
	for _, want := range []string{"AGGD_MAX_TAG is not an aggd variable (AGGD_MAX_TAGS?)", "AGGD_COMPLETELY_UNKNOWN is not an aggd variable"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
	if err != nil && (strings.Contains(err.Error(), "AGGD_MAX_TAGS ") || strings.Contains(err.Error(), "HOME")) {
		t.Errorf("a valid variable reported: %v", err)
	}
	// aggd does not start with one.
	t.Setenv("AGGD_MAX_TAG", "5")
	err = run(context.Background(), []string{"--listen", "127.0.0.1:0", "--admin-listen", "", "--pprof-listen", ""}, func(string) string { return "" }, &bytes.Buffer{}, &bytes.Buffer{}, nil)
	if err == nil || !strings.Contains(err.Error(), "AGGD_MAX_TAG is not an aggd variable") {
		t.Errorf("aggd started with a mistyped variable: %v", err)
	}
}

// TestValidate runs aggd validate on a good configuration and on one with
// a problem in every file, which it must list together.
func TestValidate(t *testing.T) {
	dir := t.TempDir()
	file := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o600)
		return p
	}
	env := map[string]string{"DD_API_KEY": "k", "SHOP_TOKEN": "0123456789abcdef"}
	getenv := func(k string) string { return env[k] }
	good := []string{
		"--config", file("aggd.toml", "default_upstreams = [\"dd\"]\n[[upstream]]\nname = \"dd\"\ntype = \"datadog\"\napi_key = \"${env:DD_API_KEY}\"\n[[upstream]]\nname = \"out\"\ntype = \"jsonlines\"\npath = \""+filepath.Join(dir, "never-created.jsonl")+"\"\n"),
		"--tenants-file", file("tenants.toml", "[[tenant]]\nid = \"shop\"\ntokens = [\"${SHOP_TOKEN}\"]\nupstreams = [\"dd\", \"out\"]\n"),
		"--sampling-file", file("sampling.toml", "version = 2\n[trace]\ndata_ttl = \"1m\"\n"),
		"--memory-limit", "512MiB",
	}
	var out bytes.Buffer
	if err := run(context.Background(), append([]string{"validate"}, good...), getenv, &out, &out, nil); err != nil || !strings.Contains(out.String(), "the configuration is valid") {
		t.Fatalf("validate: %v\n%s", err, out.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "never-created.jsonl")); err == nil {
		t.Error("validate created the JSON-lines upstream's file")
	}

	t.Setenv("AGGD_INTERVALL", "10s")
	bad := []string{
		"--config", file("bad.toml", "default_upstreams = [\"dd\", \"nowhere\"]\n[[upstream]]\nname = \"dd\"\ntype = \"datadog\"\napi_key = \"${DD_KEY}\"\ntimeout = 10\n[[upstream]]\nname = \"c\"\ntype = \"otlp\"\nendpoint = \"\"\n"),
		"--tenants-file", file("bad-tenants.toml", "[[tenant]]\nid = \"shop\"\ntokens = [\"${env:NO_TOKEN}\"]\n"),
		"--rules-file", file("aggr.toml", "this is not toml ["),
		"--sampling-file", filepath.Join(dir, "missing.toml"),
		"--tls-cert", filepath.Join(dir, "missing.pem"), "--tls-key", filepath.Join(dir, "missing-key.pem"),
		"--memory-limit", "lots",
	}
	out.Reset()
	err := run(context.Background(), append([]string{"validate"}, bad...), getenv, &out, &out, nil)
	if err == nil {
		t.Fatalf("a bad configuration validated:\n%s", out.String())
	}
	for _, want := range []string{
		"AGGD_INTERVALL is not an aggd variable (AGGD_INTERVAL?)",
		`"lots" is not a size`,
		"variable DD_KEY is not set",
		"timeout = 10 has no unit",
		"variable NO_TOKEN is not set",
		"aggr.toml",
		"missing.toml",
		"missing.pem",
	} {
		if !strings.Contains(out.String(), "error: ") || !strings.Contains(out.String(), want) {
			t.Errorf("validate's output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestSettingsInTheFile checks the [aggd] table of --config: any option by
// its flag name, below the environment and flags.
func TestSettingsInTheFile(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "aggd.toml")
	os.WriteFile(cfgFile, []byte(`
[aggd]
max-tags = 7
interval = "20s"
memory-limit = "64MiB"
histogram-percentiles = [0.5, 0.99]
admin-token = "${env:ADMIN}"
max-name-length = 150

[[upstream]]
name = "out"
type = "jsonlines"
path = "-"
`), 0o600)
	env := map[string]string{"ADMIN": "from-env-0123456789", "AGGD_INTERVAL": "30s"}
	c, err := parseConfig([]string{"--config", cfgFile, "--max-name-length", "99"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.MaxTags != 7 || c.MemoryLimit != 64<<20 || c.AdminToken != "from-env-0123456789" || len(c.Histogram.Percentiles) != 2 || c.Histogram.Percentiles[1] != 0.99 {
		t.Errorf("the file's settings were not applied: %+v", c)
	}
	if c.Window.Interval.String() != "30s" || c.Limits.MaxNameLength != 99 {
		t.Errorf("interval %v (the environment's 30s wins), max-name-length %d (the flag's 99 wins)", c.Window.Interval, c.Limits.MaxNameLength)
	}
	// Through AGGD_CONFIG too.
	env["AGGD_CONFIG"] = cfgFile
	if c, err := parseConfig(nil, func(k string) string { return env[k] }, &bytes.Buffer{}); err != nil || c.Limits.MaxTags != 7 {
		t.Errorf("AGGD_CONFIG: max-tags %d, %v", c.Limits.MaxTags, err)
	}
	os.WriteFile(cfgFile, []byte("[aggd]\nmax-tag = 7\ninterval = 10\nconfig = \"other.toml\"\nadmin-token = \"${UNSET}\"\n"), 0o600)
	_, err = parseConfig([]string{"--config", cfgFile}, func(string) string { return "" }, &bytes.Buffer{})
	for _, want := range []string{"[aggd] max-tag is not an option (max-tags?)", `[aggd] interval = "10"`, "[aggd] config: the file cannot name another", "variable UNSET is not set"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}

func TestWALCompressionFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
		err  string
	}{
		{args: []string{}, want: "s2"},
		{args: []string{"--wal-compression", "none"}, want: "none"},
		{env: map[string]string{"AGGD_WAL_COMPRESSION": "none"}, want: "none"},
		{args: []string{"--wal-compression", "zstd"}, err: `wal: compression "zstd" is not none or s2`},
	} {
		c, err := parseConfig(tc.args, func(k string) string { return tc.env[k] }, &bytes.Buffer{})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: error %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil || c.WALCompression != tc.want {
			t.Errorf("%v %v: %q, %v; want %q", tc.args, tc.env, c.WALCompression, err, tc.want)
		}
	}
}

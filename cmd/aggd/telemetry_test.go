package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/telemetry"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// syncBuffer is a bytes.Buffer safe for aggd's logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestVersion checks that aggd --version, aggd_build_info and the
// version the deployment files run agree.
func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, func(string) string { return "" }, &out, &out, nil); err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(out.String())
	b := telemetry.BuildInfo()
	if line != b.String() || !strings.HasPrefix(line, "aggd "+b.Version+" ") {
		t.Fatalf("--version printed %q", line)
	}
	in := startAggd(t)
	series := regexp.MustCompile(`(?m)^aggd_build_info\{(.*)\} 1$`).FindStringSubmatch(scrape(t, in.admin))
	if series == nil {
		t.Fatal("no aggd_build_info 1")
	}
	for _, l := range []string{`version="` + b.Version + `"`, `revision="` + b.Revision + `"`, `goversion="` + b.GoVersion + `"`} {
		if !strings.Contains(series[1], l) || !strings.Contains(line, strings.Trim(strings.SplitN(l, "=", 2)[1], `"`)) {
			t.Errorf("aggd_build_info{%s} and --version %q disagree on %s", series[1], line, l)
		}
	}
	// The chart, the manifests and the image build this version.
	var chart struct {
		AppVersion string `yaml:"appVersion"`
	}
	data, _ := os.ReadFile(filepath.Join(repo, "deploy/helm/aggd/Chart.yaml"))
	if err := yaml.Unmarshal(data, &chart); err != nil || chart.AppVersion != b.Version {
		t.Errorf("the chart's appVersion %q is not %s (%v)", chart.AppVersion, b.Version, err)
	}
	sts, _ := os.ReadFile(filepath.Join(repo, "deploy/kubernetes/statefulset.yaml"))
	if !strings.Contains(string(sts), "image: aggd:"+b.Version+"\n") {
		t.Errorf("deploy/kubernetes runs another image than aggd:%s", b.Version)
	}
	docker, _ := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if !strings.Contains(string(docker), "ARG VERSION="+b.Version+"\n") || !strings.Contains(string(docker), "telemetry.version=${VERSION}") {
		t.Errorf("the Dockerfile does not build version %s into the binary", b.Version)
	}
}

// TestSelfMetrics checks /metrics as an operator's alerts read it: send
// metrics and queue bounds from the start, no series that stay at zero for
// the Stream method, and one prefix besides DataKit's aggr_ names.
func TestSelfMetrics(t *testing.T) {
	intake := upstreamtest.NewDatadogIntake(t)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "aggd.toml")
	os.WriteFile(cfgFile, []byte(`
[[upstream]]
name = "dd"
type = "datadog"
url = "`+intake.URL+`"
api_key = "k"
[[upstream]]
name = "dd2"
type = "datadog"
url = "`+intake.URL+`"
api_key = "k"
queue_size = 77
`), 0o600)
	for _, tc := range []struct {
		name     string
		args     []string
		capacity map[string]string // series → value
	}{
		{"queue in memory", nil, map[string]string{`aggd_queue_capacity{upstream="dd"}`: "1000", `aggd_queue_capacity{upstream="dd2"}`: "77"}},
		{"queue on disk", []string{"--wal-dir", filepath.Join(dir, "wal"), "--queue-max-bytes", "5000000"},
			map[string]string{`aggd_queue_capacity_bytes{upstream="dd"}`: "5e+06", `aggd_queue_capacity_bytes{upstream="dd2"}`: "5e+06", "aggd_wal_bytes": "0", "aggd_wal_records": "0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := startAggd(t, append([]string{"--config", cfgFile}, tc.args...)...)
			text := scrape(t, in.admin)
			want := []string{
				`aggr_send_success_total{upstream="dd"} 0`, `aggr_send_points_total{upstream="dd2"} 0`,
				`aggr_send_latency_seconds_count{upstream="dd"} 0`, `aggr_queue_depth{upstream="dd"} 0`, `aggr_queue_bytes{upstream="dd2"} 0`,
				`aggr_send_failed_total{reason="queue_full",upstream="dd"} 0`, `aggr_send_failed_total{reason="timeout",upstream="dd"} 0`,
				`aggr_lost_points_total{reason="queue_full",upstream="dd2"} 0`, `aggr_lost_points_total{reason="shutdown",upstream="dd"} 0`,
				`grpc_server_handled_total{grpc_code="OK",grpc_method="Submit",grpc_service="aggd.v1.AggregatorService",grpc_type="unary"} 0`,
			}
			for s, v := range tc.capacity {
				want = append(want, s+" "+v)
			}
			for _, w := range want {
				if !strings.Contains(text, "\n"+w+"\n") {
					t.Errorf("/metrics lacks %s from the start", w)
				}
			}
			// A stream's batch: the interceptors skip Stream, so no series
			// of it exists, before or after.
			stream, err := aggdv1.NewAggregatorServiceClient(in.conn).Stream(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			stream.Send(&aggdv1.StreamRequest{Sequence: 1, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "a", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1}}}})
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			stream.CloseSend()
			text = scrape(t, in.admin)
			if strings.Contains(text, `grpc_method="Stream"`) {
				t.Error(`/metrics has grpc_method="Stream" series, which the interceptors never count`)
			}
			checkPrefixes(t, text)
		})
	}
}

// dataKitNames are the aggr_ metrics DataKit's users know; aggd's others
// are aggd_.
var dataKitNames = map[string]bool{"aggr_send_success_total": true, "aggr_send_failed_total": true, "aggr_send_points_total": true,
	"aggr_lost_points_total": true, "aggr_send_latency_seconds": true, "aggr_queue_depth": true, "aggr_queue_bytes": true}

func checkPrefixes(t *testing.T, text string) {
	t.Helper()
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) `).FindAllStringSubmatch(text, -1) {
		name := m[1]
		switch {
		case dataKitNames[name], strings.HasPrefix(name, "aggd_"),
			strings.HasPrefix(name, "go_"), strings.HasPrefix(name, "process_"), strings.HasPrefix(name, "grpc_server_"), strings.HasPrefix(name, "promhttp_"):
		default:
			t.Errorf("metric %s has neither aggd_ nor one of DataKit's aggr_ names", name)
		}
	}
}

// TestStartupLog checks that the first log line names what an operator
// checks after a deploy, with durations written as durations.
func TestStartupLog(t *testing.T) {
	intake := upstreamtest.NewDatadogIntake(t)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "aggd.toml")
	os.WriteFile(cfgFile, []byte("[[upstream]]\nname = \"dd\"\ntype = \"datadog\"\nurl = \""+intake.URL+"\"\napi_key = \"secret-key\"\n"+
		"[[upstream]]\nname = \"collector\"\ntype = \"otlp\"\nendpoint = \"127.0.0.1:1\"\ninsecure = true\n"), 0o600)
	sampling := filepath.Join(dir, "tail-sampling.toml")
	os.WriteFile(sampling, []byte("version = 2\n[trace]\ndata_ttl = \"1m\"\n"), 0o600)
	var logs syncBuffer
	in := startAggdLog(t, func(string) string { return "" }, &logs, "--config", cfgFile, "--sampling-file", sampling,
		"--wal-dir", filepath.Join(dir, "wal"), "--memory-limit", "536870912", "--log-format", "json", "--interval", "10s")
	in.stop(t)
	var serving map[string]any
	for line := range strings.Lines(logs.String()) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] == "aggd serving" {
			serving = rec
		}
		// Every duration is written as one, never as nanoseconds.
		for _, k := range []string{"interval", "took", "drain_timeout"} {
			if v, ok := rec[k]; ok {
				if s, isString := v.(string); !isString {
					t.Errorf("%s: %s is %v, not a duration", rec["msg"], k, v)
				} else if _, err := time.ParseDuration(s); err != nil {
					t.Errorf("%s: %s is %q: %v", rec["msg"], k, s, err)
				}
			}
		}
	}
	if serving == nil {
		t.Fatalf("no startup line in %s", logs.String())
	}
	text, _ := json.Marshal(serving)
	for _, want := range []string{
		`"version":"` + telemetry.BuildInfo().Version + `"`,
		`dd (datadog → ` + intake.URL + `)`, `collector (otlp → 127.0.0.1:1)`,
		`"wal":"` + filepath.Join(dir, "wal") + ` (fsync interval, compression s2)"`,
		`"memory_limit":"536870912 bytes (512 MiB)"`,
		`"watched":["` + sampling + `"]`,
		`"interval":"10s"`,
	} {
		if !strings.Contains(string(text), want) {
			t.Errorf("startup line %s lacks %s", text, want)
		}
	}
	if strings.Contains(logs.String(), "secret-key") {
		t.Error("the log shows an API key")
	}
}

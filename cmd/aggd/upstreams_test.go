package main

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestUpstreamsPerTenantEndToEnd runs aggd with a Datadog and an OTLP
// upstream on loopback: acme goes to both with its own credentials, blue to
// the default (Datadog, with the key from the environment). The Datadog
// intake fails its first series request; nothing is lost.
func TestUpstreamsPerTenantEndToEnd(t *testing.T) {
	dd := upstreamtest.NewDatadogIntake(t)
	dd.Answer = func(path string, n int) upstreamtest.Answer {
		if path == "/api/v2/series" && n == 0 {
			return upstreamtest.Answer{Status: http.StatusServiceUnavailable}
		}
		return upstreamtest.Answer{}
	}
	otel := upstreamtest.NewOTLPReceiver(t)
	dir := t.TempDir()
	cfgFile, tenantsFile, local := filepath.Join(dir, "aggd.toml"), filepath.Join(dir, "tenants.toml"), filepath.Join(dir, "local.jsonl")
	os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
default_upstreams = ["dd"]

[[upstream]]
name = "dd"
type = "datadog"
url = %q
api_key = "${TEST_DD_KEY}"
initial_backoff = "10ms"

[[upstream]]
name = "otel"
type = "otlp"
endpoint = %q
insecure = true
tenant_header = "X-Scope-OrgID"

[[upstream]]
name = "local"
type = "jsonlines"
path = %q
`, dd.URL, otel.Addr, local)), 0o600)
	os.WriteFile(tenantsFile, []byte(fmt.Sprintf(`
[[tenant]]
id = "acme"
tokens = [%q]
upstreams = ["dd", "otel"]
[tenant.credentials.dd]
api_key = "acme-key"
[tenant.credentials.otel]
headers = { authorization = "Bearer acme-otel" }

[[tenant]]
id = "blue"
tokens = [%q]
`, acmeToken, blueToken)), 0o600)

	env := map[string]string{"TEST_DD_KEY": "env-key"}
	dirOut := filepath.Join(dir, "unused.jsonl")
	in := startAggdEnv(t, func(k string) string { return env[k] }, "--config", cfgFile, "--tenants-file", tenantsFile, "--interval", "1s", "--grace", "0s", "--output", dirOut)
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	ts := time.Now().Add(-5 * time.Second).Truncate(time.Second)
	submit := func(tok string, samples ...*aggdv1.Sample) {
		for _, s := range samples {
			s.TimestampUnixNano = ts.UnixNano()
		}
		resp, err := client.Submit(withToken(tok), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: samples}})
		if err != nil || resp.Ack.Rejected != 0 {
			t.Fatalf("submit: %v %v", resp, err)
		}
	}
	submit(acmeToken, smp("c", aggdv1.MetricType_METRIC_TYPE_COUNT, 5, "env:prod"),
		&aggdv1.Sample{Name: "d", Type: aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION, Values: seq(1, 100, 1)})
	submit(blueToken, smp("g", aggdv1.MetricType_METRIC_TYPE_GAUGE, 7))

	// Wait for the tick to deliver, through the 503, then read /metrics.
	deadline := time.Now().Add(10 * time.Second)
	for len(dd.Series()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("Datadog intake got %v", dd.Series())
		}
		time.Sleep(50 * time.Millisecond)
	}
	metrics := scrape(t, in.admin)
	if v := metric(metrics, `aggr_send_failed_total{reason="http_503",upstream="dd"}`); v != 1 {
		t.Errorf("aggr_send_failed_total http_503 = %v, want 1", v)
	}
	if v := metric(metrics, `aggr_send_points_total{upstream="dd"}`); v < 3 {
		t.Errorf("aggr_send_points_total dd = %v", v)
	}
	// gRPC server metrics from go-grpc-middleware.
	if v := metric(metrics, `grpc_server_handled_total{grpc_code="OK",grpc_method="Submit",grpc_service="aggd.v1.AggregatorService",grpc_type="unary"}`); v != 2 {
		t.Errorf("grpc_server_handled_total for Submit = %v, want 2", v)
	}
	in.stop(t)
	if err := dd.Err(); err != nil {
		t.Fatal(err)
	}

	series := map[string]upstreamtest.DDPoint{}
	for _, p := range dd.Series() {
		if p.Metric == "c" && p.TS != ts.Unix() {
			if p.Value != 0 {
				t.Errorf("counter after its sample: %+v, want the Agent's zero", p)
			}
			continue // zero-filled until the counter expiry
		}
		series[p.APIKey+"/"+p.Metric+"{"+p.Tags+"}"] = p
	}
	// A count goes as the Agent sends it: a rate of sum ÷ interval.
	if p := series["acme-key/c{env:prod}"]; p.Value*float64(p.Interval) != 5 || p.Type != 2 || p.TS != ts.Unix() {
		t.Errorf("acme count at Datadog: %+v (all: %v)", p, series)
	}
	if p := series["env-key/g{}"]; p.Value != 7 || p.Type != 3 {
		t.Errorf("blue gauge at Datadog: %+v", p)
	}
	if len(series) != 2 {
		t.Errorf("Datadog series: %v", series)
	}
	sk := dd.Sketches()
	if len(sk) != 1 || sk[0].APIKey != "acme-key" || sk[0].Cnt != 100 || math.Abs(sk[0].Quantile(0.5)-50) > 1 {
		t.Errorf("sketches %+v", sk)
	}
	up := map[string]bool{}
	for _, c := range dd.Checks() {
		if c["check"] == "aggd.up" {
			up[c["api_key"].(string)] = true
		}
	}
	if !up["acme-key"] || !up["env-key"] {
		t.Errorf("aggd.up checks by key: %v", up)
	}

	var sum *metricspb.Sum
	var exp *metricspb.ExponentialHistogramDataPoint
	for _, r := range otel.Requests() {
		if r.MD.Get("x-scope-orgid")[0] != "acme" || r.MD.Get("authorization")[0] != "Bearer acme-otel" {
			t.Errorf("OTLP metadata %v", r.MD)
		}
		for _, rm := range r.Req.ResourceMetrics {
			if tn := rm.Resource.Attributes[0]; tn.Key != "aggd.tenant" || tn.Value.GetStringValue() != "acme" {
				t.Errorf("OTLP resource %v", rm.Resource)
			}
			for _, m := range rm.ScopeMetrics[0].Metrics {
				switch m.Name {
				case "c":
					if m.GetSum().DataPoints[0].GetAsDouble() != 0 { // not a zero-filled interval
						sum = m.GetSum()
					}
				case "d":
					exp = m.GetExponentialHistogram().DataPoints[0]
				default:
					t.Errorf("OTLP got %s", m.Name)
				}
			}
		}
	}
	if sum == nil || sum.DataPoints[0].GetAsDouble() != 5 || exp == nil || exp.Count != 100 || math.Abs(upstream.ExpHistogramQuantile(exp, 0.9)-90) > 1.8 {
		t.Errorf("OTLP count %v, distribution %v", sum, exp)
	}
	if data, _ := os.ReadFile(local); len(data) != 0 {
		t.Errorf("the local upstream, routed no tenant, wrote:\n%s", data)
	}
	if _, err := os.Stat(dirOut); err == nil {
		t.Error("--output was used although --config defines the upstreams")
	}
}

func scrape(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func metric(text, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		return math.NaN()
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

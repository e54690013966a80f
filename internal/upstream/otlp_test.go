package upstream_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

func newOTLP(t *testing.T, r *upstreamtest.OTLPReceiver, m upstream.PipelineMetrics, mod func(*upstream.OTLPConfig)) *upstream.OTLP {
	t.Helper()
	cfg := upstream.OTLPConfig{Pipeline: upstream.DefaultPipelineConfig("otel"), Endpoint: r.Addr, Insecure: true,
		TenantAttribute: "aggd.tenant", TenantHeader: "X-Scope-OrgID", Compression: upstream.CompressGzip,
		Headers: map[string]string{"x-static": "s"}, Histogram: upstream.DefaultHistogramConfig()}
	cfg.Pipeline.InitialBackoff = 10 * time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	o, err := upstream.NewOTLP(cfg, m, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	o.Start(context.Background())
	return o
}

// point is a flattened OTLP data point.
type point struct {
	host, kind string
	start, end uint64
	value      float64
	monotonic  bool
	summary    *metricspb.SummaryDataPoint
	exp        *metricspb.ExponentialHistogramDataPoint
	headers    string
}

func kvString(kvs []*commonpb.KeyValue) string {
	var s []string
	for _, kv := range kvs {
		s = append(s, kv.Key+"="+kv.Value.GetStringValue())
	}
	return strings.Join(s, ",")
}

// flatten indexes every data point by tenant/name{attributes}.
func flatten(t *testing.T, reqs []upstreamtest.OTLPRequest) map[string]point {
	out := map[string]point{}
	for _, r := range reqs {
		for _, rm := range r.Req.ResourceMetrics {
			var tenant, host string
			for _, a := range rm.Resource.Attributes {
				switch a.Key {
				case "aggd.tenant":
					tenant = a.Value.GetStringValue()
				case "host.name":
					host = a.Value.GetStringValue()
				}
			}
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					p := point{host: host, headers: fmt.Sprint(r.MD.Get("x-static"), r.MD.Get("x-scope-orgid"), r.MD.Get("authorization"))}
					var attrs []*commonpb.KeyValue
					switch d := m.Data.(type) {
					case *metricspb.Metric_Gauge:
						dp := d.Gauge.DataPoints[0]
						p.kind, p.value, p.end, attrs = "gauge", dp.GetAsDouble(), dp.TimeUnixNano, dp.Attributes
					case *metricspb.Metric_Sum:
						dp := d.Sum.DataPoints[0]
						p.kind, p.value, p.start, p.end, attrs = "sum", dp.GetAsDouble(), dp.StartTimeUnixNano, dp.TimeUnixNano, dp.Attributes
						p.monotonic = d.Sum.IsMonotonic
						if d.Sum.AggregationTemporality != metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA {
							p.kind = "cumulative sum"
						}
					case *metricspb.Metric_Summary:
						p.kind, p.summary, attrs = "summary", d.Summary.DataPoints[0], d.Summary.DataPoints[0].Attributes
					case *metricspb.Metric_ExponentialHistogram:
						p.kind, p.exp, attrs = "exphist", d.ExponentialHistogram.DataPoints[0], d.ExponentialHistogram.DataPoints[0].Attributes
					}
					k := tenant + "/" + m.Name + "{" + kvString(attrs) + "}"
					if _, dup := out[k]; dup {
						t.Errorf("%s exported twice", k)
					}
					out[k] = p
				}
			}
		}
	}
	return out
}

func TestOTLPEveryKind(t *testing.T) {
	r := upstreamtest.NewOTLPReceiver(t)
	m := &upstreamtest.Metrics{}
	o := newOTLP(t, r, m, nil)
	acme, blue, gray := window.NewTenant("acme"), window.NewTenant("blue"), window.NewTenant("gray")
	wide := []float64{-50, -1, 0, 0.001, 1e6}
	f := flushOf(t, map[*window.Tenant][]window.Sample{
		acme: {
			{Name: "g", Type: window.TypeGauge, Value: 4, Host: "web-1", Tags: []string{"b:2", "a:1", "bare"}},
			{Name: "c", Type: window.TypeCount, Value: 3, SampleRate: 0.5},
			{Name: "m", Type: window.TypeMonotonicCount, Values: []float64{10, 15}},
			{Name: "r", Type: window.TypeRate, Values: []float64{1}, Timestamp: (bucket + 1) * 1e9},
			{Name: "s", Type: window.TypeSet, SetMember: "x"},
			{Name: "h", Type: window.TypeHistogram, Values: []float64{1, 2, 3, 4}},
			{Name: "d", Type: window.TypeDistribution, Values: seqValues(1000)},
			{Name: "w", Type: window.TypeDistribution, Values: wide},
		},
		blue: {{Name: "c", Type: window.TypeCount, Value: 9}},
		gray: {{Name: "c", Type: window.TypeCount, Value: 1}},
	})
	routes := func(t *window.Tenant) (upstream.Credentials, bool) {
		switch t.ID {
		case "acme":
			return upstream.Credentials{Headers: map[string]string{"Authorization": "Bearer acme"}}, true
		case "blue":
			return upstream.Credentials{}, true
		}
		return upstream.Credentials{}, false
	}
	if err := o.Export(context.Background(), f, routes); err != nil {
		t.Fatal(err)
	}
	if err := o.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := flatten(t, r.Requests())
	start, end := uint64(bucket*1e9), uint64((bucket+10)*1e9)
	for k, w := range map[string]point{
		"acme/g{a=1,b=2,bare=}": {host: "web-1", kind: "gauge", value: 4, end: start},
		"acme/c{}":              {kind: "sum", value: 6, start: start, end: end},
		"acme/m{}":              {kind: "sum", value: 5, start: start, end: end, monotonic: true},
		"acme/s{}":              {kind: "gauge", value: 1, end: start},
		"blue/c{}":              {kind: "sum", value: 9, start: start, end: end},
	} {
		p, ok := got[k]
		if !ok {
			t.Errorf("%s missing from %v", k, got)
			continue
		}
		if p.host != w.host || p.kind != w.kind || p.value != w.value || p.start != w.start || p.end != w.end || p.monotonic != w.monotonic {
			t.Errorf("%s = %+v, want %+v", k, p, w)
		}
	}
	if _, ok := got["acme/r{}"]; ok {
		t.Error("a rate with one sample was exported")
	}
	if p := got["acme/g{a=1,b=2,bare=}"]; p.headers != "[s] [acme] [Bearer acme]" {
		t.Errorf("acme headers %s", p.headers)
	}
	if p := got["blue/c{}"]; p.headers != "[s] [blue] []" {
		t.Errorf("blue headers %s", p.headers)
	}
	for k := range got {
		if strings.HasPrefix(k, "gray/") {
			t.Errorf("unrouted tenant exported: %s", k)
		}
	}
	// Histograms are delta exponential histograms, as distributions are.
	h := got["acme/h{}"].exp
	if h == nil || h.Count != 4 || h.GetSum() != 10 || h.GetMin() != 1 || h.GetMax() != 4 {
		t.Fatalf("histogram %v", h)
	}
	if q := upstream.ExpHistogramQuantile(h, 0.5); math.Abs(q-2) > 0.02*2 {
		t.Errorf("histogram median %v, want 2", q)
	}
	d := got["acme/d{}"].exp
	if d == nil || d.Count != 1000 || d.GetSum() != 500500 || d.GetMin() != 1 || d.GetMax() != 1000 || d.Scale != 6 {
		t.Fatalf("exponential histogram %v", d)
	}
	for _, q := range []float64{0.01, 0.25, 0.5, 0.9, 0.99} {
		want := math.Ceil(q * 1000)
		if got := upstream.ExpHistogramQuantile(d, q); math.Abs(got-want) > 0.02*want {
			t.Errorf("exp histogram q%v = %v, want %v ±2%%", q, got, want)
		}
	}
	w := got["acme/w{}"].exp
	if w == nil || w.Count != 5 || w.ZeroCount != 1 || w.GetNegative() == nil {
		t.Fatalf("wide exponential histogram %v", w)
	}
	for i, want := range wide {
		q := float64(i+1) / float64(len(wide))
		if got := upstream.ExpHistogramQuantile(w, q); math.Abs(got-want) > 0.02*math.Abs(want) {
			t.Errorf("wide q%v = %v, want %v", q, got, want)
		}
	}
	if sent, points, _, lost := m.Snapshot(); sent != 2 || points != 8 || len(lost) != 0 {
		t.Errorf("sent %d requests with %d points, lost %v", sent, points, lost)
	}
}

func TestOTLPErrorsFollowTheSpecification(t *testing.T) {
	withRetryInfo := func(c codes.Code, d time.Duration) error {
		st, _ := status.New(c, "busy").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
		return st.Err()
	}
	tests := []struct {
		name   string
		errs   []error
		ps     *colmetricspb.ExportMetricsPartialSuccess
		calls  int
		lost   map[string]int
		failed map[string]int
		wait   time.Duration
	}{
		{"unavailable then ok", []error{status.Error(codes.Unavailable, "x"), status.Error(codes.Unavailable, "x")}, nil, 3, map[string]int{}, map[string]int{"grpc_unavailable": 2}, 0},
		{"resource exhausted with retry info", []error{withRetryInfo(codes.ResourceExhausted, time.Second)}, nil, 2, map[string]int{}, map[string]int{"grpc_resourceexhausted": 1}, time.Second},
		{"resource exhausted without retry info", []error{status.Error(codes.ResourceExhausted, "x")}, nil, 1, map[string]int{"grpc_resourceexhausted": 1}, map[string]int{}, 0},
		{"invalid argument", []error{status.Error(codes.InvalidArgument, "x")}, nil, 1, map[string]int{"grpc_invalidargument": 1}, map[string]int{}, 0},
		{"partial success", nil, &colmetricspb.ExportMetricsPartialSuccess{RejectedDataPoints: 1, ErrorMessage: "bad point"}, 1, map[string]int{"partial_success": 1}, map[string]int{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := upstreamtest.NewOTLPReceiver(t)
			r.Answer = func(n int) (*colmetricspb.ExportMetricsPartialSuccess, error) {
				if n < len(tt.errs) {
					return nil, tt.errs[n]
				}
				return tt.ps, nil
			}
			m := &upstreamtest.Metrics{}
			o := newOTLP(t, r, m, nil)
			start := time.Now()
			o.Export(context.Background(), flushOf(t, map[*window.Tenant][]window.Sample{window.NewTenant("acme"): {{Name: "c", Type: window.TypeCount, Value: 1}}}),
				func(*window.Tenant) (upstream.Credentials, bool) { return upstream.Credentials{}, true })
			o.Shutdown(context.Background())
			_, _, failed, lost := m.Snapshot()
			if r.Calls() != tt.calls || fmt.Sprint(lost) != fmt.Sprint(tt.lost) || fmt.Sprint(failed) != fmt.Sprint(tt.failed) {
				t.Fatalf("calls %d, lost %v, failed %v; want %d, %v, %v", r.Calls(), lost, failed, tt.calls, tt.lost, tt.failed)
			}
			if time.Since(start) < tt.wait {
				t.Fatalf("RetryInfo delay %v not honoured", tt.wait)
			}
		})
	}
}

func TestOTLPSplitsRequests(t *testing.T) {
	r := upstreamtest.NewOTLPReceiver(t)
	m := &upstreamtest.Metrics{}
	o := newOTLP(t, r, m, func(c *upstream.OTLPConfig) { c.MaxPayloadBytes = 10_000 })
	var ss []window.Sample
	for i := range 3000 {
		ss = append(ss, window.Sample{Name: "c", Type: window.TypeCount, Value: float64(i), Tags: []string{fmt.Sprintf("i:%d", i)}, Host: fmt.Sprintf("h%d", i%3)})
	}
	o.Export(context.Background(), flushOf(t, map[*window.Tenant][]window.Sample{window.NewTenant("acme"): ss}),
		func(*window.Tenant) (upstream.Credentials, bool) { return upstream.Credentials{}, true })
	o.Shutdown(context.Background())
	reqs := r.Requests()
	got := flatten(t, reqs)
	if len(got) != 3000 || len(reqs) < 10 {
		t.Fatalf("%d points in %d requests", len(got), len(reqs))
	}
	for k, p := range got {
		var i int
		fmt.Sscanf(k, "acme/c{i=%d}", &i)
		if p.value != float64(i) || p.host != fmt.Sprintf("h%d", i%3) {
			t.Fatalf("%s = %+v", k, p)
		}
	}
}

// TestOTLPUniqueAttributeKeys: OTLP attribute keys are unique. A tag key
// given twice becomes one array attribute; an aggd.v1 span whose
// attributes name the HTTP status as well keeps it once, as an int.
func TestOTLPUniqueAttributeKeys(t *testing.T) {
	r := upstreamtest.NewOTLPReceiver(t)
	o := newOTLP(t, r, &upstreamtest.Metrics{}, nil)
	acme := window.NewTenant("acme")
	f := flushOf(t, map[*window.Tenant][]window.Sample{acme: {{Name: "g", Type: window.TypeGauge, Value: 1, Tags: []string{"env:b", "env:a", "team:x"}}}})
	all := func(*window.Tenant) (upstream.Credentials, bool) { return upstream.Credentials{}, true }
	if err := o.Export(context.Background(), f, all); err != nil {
		t.Fatal(err)
	}
	sp := spans.Span{TraceID: [16]byte{1}, SpanID: [8]byte{2}, Service: "api", Name: "GET", Resource: "/x", Start: 1e18, Duration: 5, HTTPStatus: 502,
		Attrs: []spans.Attr{{Key: "http.response.status_code", Value: "502"}, {Key: "resource.name", Value: "/x"}, {Key: "peer", Value: "db"}}}
	if err := o.ExportTraces(context.Background(), []spans.Trace{{Tenant: acme, Spans: []spans.Span{sp}}}, all); err != nil {
		t.Fatal(err)
	}
	if err := o.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	attrs := r.Requests()[0].Req.ResourceMetrics[0].ScopeMetrics[0].Metrics[0].GetGauge().DataPoints[0].Attributes
	if len(attrs) != 2 || attrs[0].Key != "env" || len(attrs[0].Value.GetArrayValue().GetValues()) != 2 || attrs[1].Value.GetStringValue() != "x" {
		t.Errorf("metric attributes %v, want env as an array of a and b, team x", attrs)
	}
	got := r.TraceRequests()[0].Req.ResourceSpans[0].ScopeSpans[0].Spans[0].Attributes
	want := map[string]string{"http.response.status_code": "int_value:502", "resource.name": `string_value:"/x"`, "peer": `string_value:"db"`}
	if len(got) != len(want) {
		t.Fatalf("span attributes %v", got)
	}
	for _, kv := range got {
		if s := strings.ReplaceAll(kv.Value.String(), "  ", " "); s != want[kv.Key] {
			t.Errorf("span attribute %s = %s, want %s", kv.Key, s, want[kv.Key])
		}
	}
}

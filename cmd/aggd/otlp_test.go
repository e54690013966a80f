package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelmetric "go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/metadata"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// freeAddr returns a loopback address nothing listens on, for a process
// started later to listen on. Its port is below the kernel's range of
// ephemeral ports where that range is known, so that the connections and
// the ":0" listeners of the processes started meanwhile do not take it.
func freeAddr(t *testing.T) string {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	for range 200 {
		if low <= 10000 {
			break
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(10000+rand.IntN(low-10000))))
		if err == nil {
			l.Close()
			return l.Addr().String()
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// metricExporter and spanExporter are what the SDK's OTLP exporters do.
type metricExporter interface {
	Export(context.Context, *metricdata.ResourceMetrics) error
	Shutdown(context.Context) error
}

// collectAndExport collects what reader's meters hold and exports it
// through mexp.
func collectAndExport(t *testing.T, reader *sdkmetric.ManualReader, mexp metricExporter) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	if err := mexp.Export(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
}

// TestOpenTelemetrySDKExportsToAggd points the OpenTelemetry Go SDK's
// OTLP exporters at aggd: OTLP/gRPC on its gRPC port, OTLP/HTTP (gzipped
// protobuf) on --otlp-http-listen.
func TestOpenTelemetrySDKExportsToAggd(t *testing.T) {
	for _, transport := range []string{"grpc", "http"} {
		t.Run(transport, func(t *testing.T) { testSDKExport(t, transport) })
	}
}

// sdkExporters returns the SDK's OTLP exporters of transport: gRPC to
// grpcAddr, or HTTP (gzipped protobuf) to httpAddr.
func sdkExporters(t *testing.T, transport, grpcAddr, httpAddr string, headers map[string]string) (metricExporter, sdktrace.SpanExporter) {
	t.Helper()
	ctx := context.Background()
	var mexp metricExporter
	var texp sdktrace.SpanExporter
	var err, terr error
	if transport == "grpc" {
		mexp, err = otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(grpcAddr), otlpmetricgrpc.WithInsecure(), otlpmetricgrpc.WithHeaders(headers))
		texp, terr = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(grpcAddr), otlptracegrpc.WithInsecure(), otlptracegrpc.WithHeaders(headers))
	} else {
		mexp, err = otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpoint(httpAddr), otlpmetrichttp.WithInsecure(), otlpmetrichttp.WithHeaders(headers),
			otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
		texp, terr = otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(httpAddr), otlptracehttp.WithInsecure(), otlptracehttp.WithHeaders(headers),
			otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
	}
	if err != nil || terr != nil {
		t.Fatal(err, terr)
	}
	return mexp, texp
}

func testSDKExport(t *testing.T, transport string) {
	httpAddr := freeAddr(t)
	in := startAggd(t, "--interval", "1h", "--context-ttl", "3h", "--otlp-http-listen", httpAddr)
	ctx := context.Background()
	res := resource.NewSchemaless(semconv.ServiceName("checkout"), attribute.String("host.name", "node-1"), attribute.String("env", "prod"),
		attribute.String("service.instance.id", "f00d"))
	headers := map[string]string{"x-tenant-id": "otel-team"}

	mexp, texp := sdkExporters(t, transport, in.addr, httpAddr, headers)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
	meter := mp.Meter("test")
	requests, _ := meter.Int64Counter("otel.requests")
	inflight, _ := meter.Int64UpDownCounter("otel.inflight")
	latency, _ := meter.Float64Histogram("otel.latency", otelmetric.WithExplicitBucketBoundaries(10, 20, 50, 100))
	temp, _ := meter.Float64Gauge("otel.temperature")
	route := otelmetric.WithAttributes(attribute.String("route", "/pay"))
	export := func() { t.Helper(); collectAndExport(t, reader, mexp) }
	requests.Add(ctx, 3, route)
	inflight.Add(ctx, 5)
	for _, v := range []float64{5, 15, 15, 40, 70, 500} {
		latency.Record(ctx, v, route)
	}
	temp.Record(ctx, 21.5)
	export() // cumulative: the counter's first point counts from its start time
	requests.Add(ctx, 4, route)
	inflight.Add(ctx, -2)
	latency.Record(ctx, 15, route)
	temp.Record(ctx, 22)
	export() // deltas: 4 more requests, one more latency
	mexp.Shutdown(ctx)

	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(texp), sdktrace.WithResource(res))
	tracer := tp.Tracer("test")
	rctx, root := tracer.Start(ctx, "POST /pay", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attribute.String("http.route", "/pay"), attribute.Int("http.response.status_code", 502)))
	_, child := tracer.Start(rctx, "charge card", trace.WithSpanKind(trace.SpanKindClient))
	child.SetStatus(codes.Error, "declined")
	child.RecordError(errors.New("declined"))
	child.End()
	root.End()
	tp.Shutdown(ctx)

	got := map[string]map[string]any{}
	var spansSeen []map[string]any
	for _, l := range in.stop(t) {
		if l["tenant"] != "otel-team" {
			continue
		}
		switch l["kind"] {
		case "span":
			spansSeen = append(spansSeen, l)
		case "metric", "sketch":
			got[key(l)] = l
		}
	}
	want := map[string]float64{
		"otel-team/otel.requests{env:prod,route:/pay,service.name:checkout}":                                                           7,
		"otel-team/otel.inflight{env:prod,service.name:checkout}":                                                                      3,
		"otel-team/otel.temperature{env:prod,service.name:checkout}":                                                                   22,
		"otel-team/aggd.span.hits{http.status_code:502,operation:POST /pay,resource:/pay,service:checkout,span.kind:server,status:ok}": 1,
		"otel-team/aggd.span.errors{operation:charge card,resource:charge card,service:checkout,span.kind:client,status:error}":        1,
	}
	for k, w := range want {
		l := got[k]
		if l == nil || l["value"] != w {
			t.Errorf("%s = %v, want %v", k, l, w)
		}
	}
	h := got["otel-team/otel.latency{env:prod,route:/pay,service.name:checkout}"]
	if h == nil || h["count"] != 7.0 || h["host"] != "node-1" {
		t.Fatalf("latency distribution: %v", h)
	}
	// Each bucket's count is spread over its bounds: the median, 15, is
	// in (10, 20]; the sum is exact.
	if p50 := h["p50"].(float64); p50 <= 10 || p50 > 20 || h["sum"] != 660.0 {
		t.Errorf("latency p50 %v, want in (10, 20]; sum %v, want 660", p50, h["sum"])
	}
	if len(spansSeen) != 2 {
		t.Fatalf("spans exported: %v", spansSeen)
	}
}

// TestOTLPHTTPJSONThroughAggd posts OTLP/JSON as a browser or a script
// would, without an SDK.
func TestOTLPHTTPJSONThroughAggd(t *testing.T) {
	httpAddr := freeAddr(t)
	in := startAggd(t, "--interval", "1h", "--context-ttl", "3h", "--otlp-http-listen", httpAddr)
	now := time.Now().UnixNano()
	start := strconv.FormatInt(now, 10)
	for i, v := range []string{"3", "10"} {
		body := `{"resourceMetrics":[{"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"web-1"}}]},
		  "scopeMetrics":[{"metrics":[{"name":"json.hits","sum":{"aggregationTemporality":2,"isMonotonic":true,
		  "dataPoints":[{"startTimeUnixNano":"` + start + `","timeUnixNano":"` + strconv.FormatInt(now+int64(i+1)*1e9, 10) + `","asInt":"` + v + `"}]}}]}]}]}`
		req, _ := http.NewRequest(http.MethodPost, "http://"+httpAddr+"/v1/metrics", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("x-tenant-id", "js")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "{}" {
			t.Fatalf("status %d, body %s", resp.StatusCode, b)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	var got map[string]any
	for _, l := range in.stop(t) {
		if l["tenant"] == "js" && l["name"] == "json.hits" {
			got = l
		}
	}
	// The stream started after aggd did: its first point counts in full.
	if got == nil || got["value"] != 10.0 || got["host"] != "web-1" {
		t.Errorf("json.hits = %v, want 10 on web-1", got)
	}
}

// TestOTLPThroughAggdToOTLP sends with the OpenTelemetry SDK to aggd and
// out through an OTLP upstream to a receiver that holds every export to
// the data model's rules: spans go on as they came (typed attributes,
// status message, events, links, resource and scope), aggregates are
// valid points.
func TestOTLPThroughAggdToOTLP(t *testing.T) {
	for _, transport := range []string{"grpc", "http"} {
		t.Run(transport, func(t *testing.T) { testThroughToOTLP(t, transport) })
	}
}

func testThroughToOTLP(t *testing.T, transport string) {
	otel := upstreamtest.NewOTLPReceiver(t)
	cfgFile := filepath.Join(t.TempDir(), "aggd.toml")
	os.WriteFile(cfgFile, []byte(fmt.Sprintf("[[upstream]]\nname = \"otel\"\ntype = \"otlp\"\nendpoint = %q\ninsecure = true\n", otel.Addr)), 0o600)
	httpAddr := freeAddr(t)
	in := startAggd(t, "--config", cfgFile, "--interval", "1h", "--context-ttl", "3h", "--hostname", "aggd-0", "--otlp-http-listen", httpAddr)
	ctx := context.Background()
	res := resource.NewSchemaless(semconv.ServiceName("checkout"), attribute.String("host.name", "node-1"), attribute.Int("build", 42))
	headers := map[string]string{"x-tenant-id": "otel-team"}
	mexp, texp := sdkExporters(t, transport, in.addr, httpAddr, headers)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(texp), sdktrace.WithResource(res))
	tracer := tp.Tracer("shop", trace.WithInstrumentationVersion("1.2.3"))
	_, other := tracer.Start(ctx, "other")
	other.End()
	_, sp := tracer.Start(ctx, "POST /pay", trace.WithSpanKind(trace.SpanKindServer), trace.WithLinks(trace.Link{SpanContext: other.SpanContext()}),
		trace.WithAttributes(attribute.Int("http.response.status_code", 502), attribute.Bool("retried", true), attribute.Float64("ratio", 0.5)))
	sp.AddEvent("card declined", trace.WithAttributes(attribute.String("reason", "funds")))
	sp.SetStatus(codes.Error, "payment failed")
	sp.End()
	tp.Shutdown(ctx)

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
	requests, _ := mp.Meter("shop").Int64Counter("shop.requests")
	latency, _ := mp.Meter("shop").Float64Histogram("shop.latency")
	requests.Add(ctx, 3)
	for _, v := range []float64{3, 7, 7, 30, 80, 300} {
		latency.Record(ctx, v)
	}
	var rm metricdata.ResourceMetrics
	reader.Collect(ctx, &rm)
	if err := mexp.Export(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	mexp.Shutdown(ctx)
	if transport == "http" { // and OTLP/JSON, as a script would post it
		body := `{"resourceMetrics":[{"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"node-1"}}]},"scopeMetrics":[{"metrics":[
		  {"name":"json.temp","gauge":{"dataPoints":[{"timeUnixNano":"` + strconv.FormatInt(time.Now().UnixNano(), 10) + `","asDouble":21.5,
		  "attributes":[{"key":"room","value":{"intValue":"7"}}]}]}}]}]}]}`
		req, _ := http.NewRequest(http.MethodPost, "http://"+httpAddr+"/v1/metrics", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("x-tenant-id", "otel-team")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("OTLP/JSON: %v %v", resp, err)
		}
		resp.Body.Close()
		http.DefaultClient.CloseIdleConnections()
	}
	// Events and service checks go out as log records.
	if _, err := aggdv1.NewAggregatorServiceClient(in.conn).Submit(metadata.AppendToOutgoingContext(ctx, "x-tenant-id", "otel-team"), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{
		Events: []*aggdv1.Event{{Title: "deploy", Text: "v2 is out", Host: "node-1", Tags: []string{"env:a", "env:b", "aggd.title:clash"},
			AlertType: aggdv1.EventAlertType_EVENT_ALERT_TYPE_ERROR}},
		ServiceChecks: []*aggdv1.ServiceCheck{{Name: "db.can_connect", Status: aggdv1.ServiceCheckStatus_SERVICE_CHECK_STATUS_WARNING, Message: "slow"}},
	}}); err != nil {
		t.Fatal(err)
	}
	in.stop(t)

	if err := otel.Err(); err != nil {
		t.Fatalf("the receiver refused exports: %v", err)
	}
	var pay *tracepb.Span
	var payRes *resourcepb.Resource
	var payScope *commonpb.InstrumentationScope
	for _, r := range otel.TraceRequests() {
		for _, rs := range r.Req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					if s.Name == "POST /pay" {
						pay, payRes, payScope = s, rs.Resource, ss.Scope
					}
				}
			}
		}
	}
	if pay == nil {
		t.Fatal("the span did not arrive")
	}
	attrs := map[string]*commonpb.AnyValue{}
	for _, kv := range pay.Attributes {
		attrs[kv.Key] = kv.Value
	}
	if attrs["http.response.status_code"].GetIntValue() != 502 || !attrs["retried"].GetBoolValue() || attrs["ratio"].GetDoubleValue() != 0.5 {
		t.Errorf("span attributes lost their types: %v", pay.Attributes)
	}
	if pay.Status.GetMessage() != "payment failed" || len(pay.Events) != 1 || pay.Events[0].Name != "card declined" || len(pay.Links) != 1 {
		t.Errorf("span status, events or links lost: %v", pay)
	}
	resAttrs := map[string]*commonpb.AnyValue{}
	for _, kv := range payRes.GetAttributes() {
		resAttrs[kv.Key] = kv.Value
	}
	if resAttrs["build"].GetIntValue() != 42 || resAttrs["service.name"].GetStringValue() != "checkout" || resAttrs["aggd.tenant"].GetStringValue() != "otel-team" {
		t.Errorf("span resource %v", payRes)
	}
	if payScope.GetName() != "shop" || payScope.GetVersion() != "1.2.3" {
		t.Errorf("span scope %v", payScope)
	}

	m, hres := findMetric(otel, "shop.latency")
	hist := m.GetExponentialHistogram().GetDataPoints()[0]
	if transport == "http" {
		m, _ := findMetric(otel, "json.temp")
		temp := m.GetGauge().GetDataPoints()[0]
		if temp.GetAsDouble() != 21.5 || len(temp.GetAttributes()) != 1 || temp.Attributes[0].Value.GetStringValue() != "7" {
			t.Errorf("json.temp = %v, want 21.5 with room=7", temp)
		}
	}
	if hist.GetCount() != 6 || hist.GetSum() != 427 {
		t.Errorf("latency %v, want count 6, sum 427", hist)
	}
	found := false
	for _, kv := range hres.GetAttributes() {
		found = found || (kv.Key == "service.instance.id" && kv.Value.GetStringValue() == "aggd-0")
	}
	if !found {
		t.Errorf("aggregates' resource %v lacks service.instance.id aggd-0", hres)
	}
	logs := map[string]*logspb.LogRecord{}
	for _, r := range otel.LogRequests() {
		for _, rl := range r.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				for _, lr := range sl.LogRecords {
					logs[lr.Body.GetStringValue()] = lr
				}
			}
		}
	}
	if e := logs["v2 is out"]; e.GetSeverityNumber() != logspb.SeverityNumber_SEVERITY_NUMBER_ERROR || len(e.GetAttributes()) < 5 {
		t.Errorf("event as a log record: %v", e)
	}
	if c := logs["slow"]; c.GetSeverityNumber() != logspb.SeverityNumber_SEVERITY_NUMBER_WARN || c.GetSeverityText() != "warning" {
		t.Errorf("service check as a log record: %v", c)
	}
}

// findMetric returns the last metric called name the receiver took, and
// its resource.
func findMetric(otel *upstreamtest.OTLPReceiver, name string) (*metricspb.Metric, *resourcepb.Resource) {
	var found *metricspb.Metric
	var res *resourcepb.Resource
	for _, r := range otel.Requests() {
		for _, rm := range r.Req.ResourceMetrics {
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					if m.Name == name {
						found, res = m, rm.Resource
					}
				}
			}
		}
	}
	return found, res
}

// TestInstanceIDOutsideClusterMode: aggregates carry the replica's
// hostname as service.instance.id only while replicas may write the same
// series.
func TestInstanceIDOutsideClusterMode(t *testing.T) {
	alone := config{Hostname: "aggd-0"}
	cluster := alone
	cluster.Cluster.PeersDNS = "aggd-peers:8129"
	if got := instanceID(alone); got != "aggd-0" {
		t.Errorf("outside cluster mode: %q, want aggd-0", got)
	}
	if got := instanceID(cluster); got != "" {
		t.Errorf("in cluster mode: %q, want none", got)
	}
}

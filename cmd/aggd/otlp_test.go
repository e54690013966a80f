package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
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
)

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
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

// TestOpenTelemetrySDKExportsToAggd points the OpenTelemetry Go SDK's
// OTLP exporters at aggd: OTLP/gRPC on its gRPC port, OTLP/HTTP (gzipped
// protobuf) on --otlp-http-listen.
func TestOpenTelemetrySDKExportsToAggd(t *testing.T) {
	for _, transport := range []string{"grpc", "http"} {
		t.Run(transport, func(t *testing.T) { testSDKExport(t, transport) })
	}
}

func testSDKExport(t *testing.T, transport string) {
	httpAddr := freeAddr(t)
	in := startAggd(t, "--interval", "1h", "--context-ttl", "3h", "--otlp-http-listen", httpAddr)
	ctx := context.Background()
	res := resource.NewSchemaless(semconv.ServiceName("checkout"), attribute.String("host.name", "node-1"), attribute.String("env", "prod"),
		attribute.String("service.instance.id", "f00d"))
	headers := map[string]string{"x-tenant-id": "otel-team"}

	var mexp metricExporter
	var texp sdktrace.SpanExporter
	var err, terr error
	if transport == "grpc" {
		mexp, err = otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(in.addr), otlpmetricgrpc.WithInsecure(), otlpmetricgrpc.WithHeaders(headers))
		texp, terr = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(in.addr), otlptracegrpc.WithInsecure(), otlptracegrpc.WithHeaders(headers))
	} else {
		mexp, err = otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpoint(httpAddr), otlpmetrichttp.WithInsecure(), otlpmetrichttp.WithHeaders(headers),
			otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
		texp, terr = otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(httpAddr), otlptracehttp.WithInsecure(), otlptracehttp.WithHeaders(headers),
			otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
	}
	if err != nil || terr != nil {
		t.Fatal(err, terr)
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
	meter := mp.Meter("test")
	requests, _ := meter.Int64Counter("otel.requests")
	inflight, _ := meter.Int64UpDownCounter("otel.inflight")
	latency, _ := meter.Float64Histogram("otel.latency", otelmetric.WithExplicitBucketBoundaries(10, 20, 50, 100))
	temp, _ := meter.Float64Gauge("otel.temperature")
	route := otelmetric.WithAttributes(attribute.String("route", "/pay"))
	export := func() {
		t.Helper()
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		if err := mexp.Export(ctx, &rm); err != nil {
			t.Fatal(err)
		}
	}
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

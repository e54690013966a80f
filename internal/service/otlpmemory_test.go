package service_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/window"
)

// budget is a memory budget of a fixed capacity and room.
type budget struct{ capacity, room int64 }

func (b budget) Room() int64     { return b.room }
func (b budget) Capacity() int64 { return b.capacity }

// gate holds the first batch ingested until open is closed, so that its
// request stays in flight.
type gate struct {
	service.Ingester
	first         atomic.Bool
	entered, open chan struct{}
}

func (g *gate) Ingest(b *window.Batch) {
	if g.first.CompareAndSwap(false, true) {
		close(g.entered)
		<-g.open
	}
	g.Ingester.Ingest(b)
}

// manyPoints is a metrics request of n gauge points.
func manyPoints(n int) *colmetricspb.ExportMetricsServiceRequest {
	pts := make([]*metricspb.NumberDataPoint, n)
	now := uint64(time.Now().UnixNano())
	for i := range pts {
		pts[i] = &metricspb.NumberDataPoint{TimeUnixNano: now, Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: float64(i)}}
	}
	return request(&metricspb.Metric{Name: "g", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: pts}}})
}

func manySpans(n int) *coltracepb.ExportTraceServiceRequest {
	sps := make([]*tracepb.Span, n)
	for i := range sps {
		sps[i] = &tracepb.Span{TraceId: make16(1), SpanId: make16(2)[:8], Name: "s", StartTimeUnixNano: 1, EndTimeUnixNano: 2}
	}
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: sps}}}}}
}

// otlpBudgetEnv is an OTLP receiver, over gRPC and HTTP, whose first
// ingested batch waits at a gate.
type otlpBudgetEnv struct {
	metrics colmetricspb.MetricsServiceClient
	traces  coltracepb.TraceServiceClient
	hs      *httptest.Server
	gate    *gate
}

func startBudget(t *testing.T, b budget) *otlpBudgetEnv {
	t.Helper()
	tenants, _ := service.NewTenants(service.TenantsConfig{MaxTenants: 10})
	g := &gate{Ingester: flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 2}), entered: make(chan struct{}), open: make(chan struct{})}
	srv, err := service.New(service.Config{Ingest: g, Tenants: tenants, Limits: codec.DefaultLimits(), Logger: slog.New(slog.DiscardHandler),
		Spans: &spanSink{}, Memory: b})
	if err != nil {
		t.Fatal(err)
	}
	service.SetReserveWait(srv, 0) // refuse at once when there is no room
	r := srv.NewOTLP(service.DefaultOTLPConfig())
	conn := serveOTLP(t, r)
	hs := httptest.NewServer(r.Handler(16 << 20))
	t.Cleanup(hs.Close)
	return &otlpBudgetEnv{metrics: colmetricspb.NewMetricsServiceClient(conn), traces: coltracepb.NewTraceServiceClient(conn), hs: hs, gate: g}
}

func retryInfo(st *status.Status) bool {
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}

// TestOTLPRequestsReserveTheirMemory: an OTLP request, over gRPC or HTTP,
// reserves the memory converting it takes against --memory-limit as an
// aggd.v1 request does: one that could never fit is refused without
// RetryInfo (HTTP 413), one that does not fit beside the requests in
// flight is refused with RetryInfo (HTTP 429 and Retry-After).
func TestOTLPRequestsReserveTheirMemory(t *testing.T) {
	ctx := context.Background()
	big, _ := proto.Marshal(manyPoints(4000))
	bigSpans, _ := proto.Marshal(manySpans(2000))
	bigJSON, _ := protojson.Marshal(manyPoints(4000))
	small, _ := proto.Marshal(manyPoints(1))

	// 4,000 points take far more than half of 128 KiB to convert;
	// one point takes far less.
	e := startBudget(t, budget{capacity: 128 << 10, room: 128 << 10})
	close(e.gate.open) // nothing waits
	if _, err := e.metrics.Export(ctx, manyPoints(4000)); status.Code(err) != codes.ResourceExhausted || retryInfo(status.Convert(err)) ||
		!strings.Contains(err.Error(), "request larger than max") {
		t.Errorf("gRPC metrics over half the budget: %v, want ResourceExhausted without RetryInfo naming the largest request", err)
	}
	if _, err := e.traces.Export(ctx, manySpans(2000)); status.Code(err) != codes.ResourceExhausted || retryInfo(status.Convert(err)) {
		t.Errorf("gRPC traces over half the budget: %v, want ResourceExhausted without RetryInfo", err)
	}
	for _, tc := range []struct {
		path, ct string
		body     []byte
	}{
		{"/v1/metrics", "application/x-protobuf", big},
		{"/v1/metrics", "application/json", bigJSON},
		{"/v1/traces", "application/x-protobuf", bigSpans},
	} {
		if resp := post(t, e.hs, tc.path, tc.ct, "", tc.body); resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("HTTP %s %s over half the budget: %d, want 413", tc.path, tc.ct, resp.StatusCode)
		}
	}
	if _, err := e.metrics.Export(ctx, manyPoints(1)); err != nil {
		t.Errorf("gRPC small request: %v", err)
	}
	if resp := post(t, e.hs, "/v1/metrics", "application/x-protobuf", "", small); resp.StatusCode != http.StatusOK {
		t.Errorf("HTTP small request: %d, want 200", resp.StatusCode)
	}

	// A budget with no room left: the request in flight holds what it
	// reserved; the next, of any size, waits and is refused.
	e = startBudget(t, budget{capacity: 1 << 30, room: 0})
	held := make(chan error, 1)
	go func() { _, err := e.metrics.Export(ctx, manyPoints(10)); held <- err }()
	<-e.gate.entered
	if _, err := e.metrics.Export(ctx, manyPoints(1)); status.Code(err) != codes.ResourceExhausted || !retryInfo(status.Convert(err)) {
		t.Errorf("gRPC metrics with no room: %v, want ResourceExhausted with RetryInfo", err)
	}
	if _, err := e.traces.Export(ctx, manySpans(1)); status.Code(err) != codes.ResourceExhausted || !retryInfo(status.Convert(err)) {
		t.Errorf("gRPC traces with no room: %v, want ResourceExhausted with RetryInfo", err)
	}
	resp := post(t, e.hs, "/v1/metrics", "application/x-protobuf", "", small)
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !bytes.Contains(b, []byte("no room")) {
		t.Errorf("HTTP with no room: %d, Retry-After %q, %q; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	close(e.gate.open)
	if err := <-held; err != nil {
		t.Errorf("the request in flight: %v", err)
	}
	// Its reservation is given back: the budget's room is only checked
	// beside requests in flight.
	if _, err := e.metrics.Export(ctx, manyPoints(1)); err != nil {
		t.Errorf("gRPC metrics once none is in flight: %v", err)
	}
}

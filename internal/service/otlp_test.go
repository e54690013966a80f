package service_test

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/flush/flushtest"
	"github.com/aggd/aggd/internal/overload"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/window"
)

// startOTLP serves the OTLP receiver on bufconn; setup, if any, adjusts
// the server before it serves.
func startOTLP(t *testing.T, setup ...func(*service.Server)) (*grpc.ClientConn, *flush.Aggregator, *service.Tenants) {
	t.Helper()
	tenants, _ := service.NewTenants(nil, false, 10)
	agg := flush.NewAggregator(window.DefaultConfig(), 2)
	srv := service.New(agg, tenants, codec.DefaultLimits(), slog.New(slog.DiscardHandler))
	for _, f := range setup {
		f(srv)
	}
	gs := grpc.NewServer(service.ServerOptions()...)
	srv.RegisterOTLP(gs)
	lis := bufconn.Listen(1 << 20)
	go gs.Serve(lis)
	conn, _ := grpc.NewClient("passthrough:///otlp", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	t.Cleanup(func() { conn.Close(); gs.Stop() })
	return conn, agg, tenants
}

func sumPoint(start uint64, v int64) *metricspb.Metric {
	now := uint64(time.Now().UnixNano())
	return &metricspb.Metric{Name: "s", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, IsMonotonic: true,
		DataPoints: []*metricspb.NumberDataPoint{{StartTimeUnixNano: start, TimeUnixNano: now, Value: &metricspb.NumberDataPoint_AsInt{AsInt: v}}},
	}}}
}

func request(ms ...*metricspb.Metric) *colmetricspb.ExportMetricsServiceRequest {
	return &colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: ms}}}}}
}

func drained(t *testing.T, agg *flush.Aggregator, tenants *service.Tenants) *flushtest.Exporter {
	exp := &flushtest.Exporter{}
	flush.NewFlusher(agg, exp, tenants, flush.Config{Interval: time.Hour}, slog.New(slog.DiscardHandler)).Shutdown(context.Background())
	return exp
}

func TestOTLPCumulativeSumsBecomeDeltas(t *testing.T) {
	conn, agg, tenants := startOTLP(t)
	c := colmetricspb.NewMetricsServiceClient(conn)
	ctx := context.Background()
	start := uint64(time.Now().Add(-time.Minute).UnixNano())
	for _, m := range []*metricspb.Metric{
		sumPoint(start, 10),  // counts from its start time: 10
		sumPoint(start, 15),  // +5
		sumPoint(start, 3),   // dropped below: a reset, counts 3
		sumPoint(start+1, 4), // new start time: a restart, counts 4
	} {
		if _, err := c.Export(ctx, request(m)); err != nil {
			t.Fatal(err)
		}
	}
	// Without a start time the first point is a baseline only.
	noStart := sumPoint(0, 100)
	noStart.Name = "n"
	c.Export(ctx, request(noStart))
	noStart2 := sumPoint(0, 130)
	noStart2.Name = "n"
	c.Export(ctx, request(noStart2))
	got := map[string]float64{}
	for _, p := range drained(t, agg, tenants).Points() {
		got[p.Name] += p.Value
	}
	if got["s"] != 10+5+3+4 || got["n"] != 30 {
		t.Fatalf("got %v", got)
	}
}

func TestOTLPExponentialHistogramAndSummary(t *testing.T) {
	conn, agg, tenants := startOTLP(t)
	c := colmetricspb.NewMetricsServiceClient(conn)
	now := uint64(time.Now().UnixNano())
	exp := &metricspb.Metric{Name: "e", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
		DataPoints: []*metricspb.ExponentialHistogramDataPoint{{TimeUnixNano: now, Scale: 3, ZeroCount: 2,
			Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: 8, BucketCounts: []uint64{1, 0, 5}},
			Negative: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: 0, BucketCounts: []uint64{2}}}},
	}}}
	cumExp := &metricspb.Metric{Name: "ce", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE,
		DataPoints:             []*metricspb.ExponentialHistogramDataPoint{{TimeUnixNano: now}},
	}}}
	sum := &metricspb.Metric{Name: "q", Data: &metricspb.Metric_Summary{Summary: &metricspb.Summary{DataPoints: []*metricspb.SummaryDataPoint{{
		StartTimeUnixNano: now - 1e9, TimeUnixNano: now, Count: 4, Sum: 10,
		Attributes:     []*commonpb.KeyValue{{Key: "k", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "v"}}}},
		QuantileValues: []*metricspb.SummaryDataPoint_ValueAtQuantile{{Quantile: 0.5, Value: 2}, {Quantile: 0.99, Value: 4}},
	}}}}}
	req := request(exp, cumExp, sum)
	req.ResourceMetrics[0].Resource = &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "host.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "h1"}}}}}
	req.ResourceMetrics[0].ScopeMetrics[0].Scope = &commonpb.InstrumentationScope{Name: "lib",
		Attributes: []*commonpb.KeyValue{{Key: "scope", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 7}}}}}
	resp, err := c.Export(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if ps := resp.PartialSuccess; ps.GetRejectedDataPoints() != 1 || ps.GetErrorMessage() == "" {
		t.Fatalf("partial success %v: the cumulative exponential histogram must be refused", ps)
	}
	got := map[string]flushtest.Point{}
	for _, p := range drained(t, agg, tenants).Points() {
		got[p.Name+"{"+p.Tags+"}"] = p
	}
	e := got["e{scope:7}"]
	if e.Count != 10 || e.Type != window.TypeDistribution {
		t.Fatalf("exponential histogram: %+v", e)
	}
	for k, w := range map[string]float64{"q.count{k:v,scope:7}": 4, "q.sum{k:v,scope:7}": 10, "q{k:v,quantile:0.5,scope:7}": 2, "q{k:v,quantile:0.99,scope:7}": 4} {
		if got[k].Value != w {
			t.Errorf("%s = %+v, want %v", k, got[k], w)
		}
	}

}

// TestOTLPUnderMemoryPressure: the OTLP services obey the memory budget
// as the aggd.v1 ones do, answering ResourceExhausted with RetryInfo,
// which OTLP exporters retry, past the hard limit.
func TestOTLPUnderMemoryPressure(t *testing.T) {
	lv := &level{}
	conn, _, _ := startOTLP(t, func(s *service.Server) { s.SetLoadLevel(lv) })
	metricsC, tracesC := colmetricspb.NewMetricsServiceClient(conn), coltracepb.NewTraceServiceClient(conn)
	ctx := context.Background()
	lv.l.Store(int32(overload.Hard))
	if _, err := metricsC.Export(ctx, request(sumPoint(1, 5))); status.Code(err) != codes.ResourceExhausted || len(status.Convert(err).Details()) != 1 {
		t.Fatalf("metrics past the hard limit: %v, want ResourceExhausted with RetryInfo", err)
	}
	if _, err := tracesC.Export(ctx, &coltracepb.ExportTraceServiceRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("traces past the hard limit: %v, want ResourceExhausted", err)
	}
	lv.l.Store(int32(overload.OK))
	if _, err := metricsC.Export(ctx, request(sumPoint(1, 5))); err != nil {
		t.Fatal(err)
	}
	if _, err := tracesC.Export(ctx, &coltracepb.ExportTraceServiceRequest{}); status.Code(err) == codes.ResourceExhausted {
		t.Fatalf("traces with memory to spare: %v", err)
	}
}

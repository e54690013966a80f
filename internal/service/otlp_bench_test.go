package service

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

func benchAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// OTLPLoad returns the encoded requests of an OTLP metrics load: series
// series of kind ("sum", "gauge", "histogram", "exponential" or
// "summary"), perReq points per request, each point its own series
// (attribute series), from one resource as an SDK sends them.
func OTLPLoad(kind string, series, perReq int) [][]byte {
	start := uint64(time.Now().Add(-time.Hour).UnixNano())
	now := uint64(time.Now().UnixNano())
	var out [][]byte
	res := &resourcepb.Resource{Attributes: []*commonpb.KeyValue{benchAttr("host.name", "node-1"), benchAttr("service.name", "load"),
		benchAttr("service.instance.id", "0a1b2c"), benchAttr("env", "prod")}}
	bounds := []float64{0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000}
	for r := 0; r < series/perReq; r++ {
		m := &metricspb.Metric{Name: "load." + kind, Unit: "1"}
		var sum, gauge []*metricspb.NumberDataPoint
		var hist []*metricspb.HistogramDataPoint
		var exp []*metricspb.ExponentialHistogramDataPoint
		var summ []*metricspb.SummaryDataPoint
		for i := range perReq {
			attrs := []*commonpb.KeyValue{benchAttr("route", fmt.Sprintf("/r/%d", r*perReq+i)), benchAttr("status", "200")}
			switch kind {
			case "sum":
				sum = append(sum, &metricspb.NumberDataPoint{Attributes: attrs, StartTimeUnixNano: start, TimeUnixNano: now, Value: &metricspb.NumberDataPoint_AsInt{AsInt: 1000}})
			case "gauge":
				gauge = append(gauge, &metricspb.NumberDataPoint{Attributes: attrs, TimeUnixNano: now, Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: 1.5}})
			case "histogram":
				counts := make([]uint64, len(bounds)+1)
				counts[2], counts[3], counts[6] = 3, 5, 2
				s, lo, hi := 180.0, 6.0, 90.0
				hist = append(hist, &metricspb.HistogramDataPoint{Attributes: attrs, StartTimeUnixNano: now - 1e10, TimeUnixNano: now,
					Count: 10, Sum: &s, Min: &lo, Max: &hi, BucketCounts: counts, ExplicitBounds: bounds})
			case "exponential":
				s := 180.0
				exp = append(exp, &metricspb.ExponentialHistogramDataPoint{Attributes: attrs, StartTimeUnixNano: now - 1e10, TimeUnixNano: now,
					Count: 10, Sum: &s, Scale: 3, Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: 20, BucketCounts: []uint64{2, 3, 0, 5}}})
			case "summary":
				summ = append(summ, &metricspb.SummaryDataPoint{Attributes: attrs, StartTimeUnixNano: start, TimeUnixNano: now, Count: 10, Sum: 180,
					QuantileValues: []*metricspb.SummaryDataPoint_ValueAtQuantile{{Quantile: 0.5, Value: 12}, {Quantile: 0.99, Value: 80}}})
			}
		}
		switch kind {
		case "sum":
			m.Data = &metricspb.Metric_Sum{Sum: &metricspb.Sum{AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, IsMonotonic: true, DataPoints: sum}}
		case "gauge":
			m.Data = &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: gauge}}
		case "histogram":
			m.Data = &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, DataPoints: hist}}
		case "exponential":
			m.Data = &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, DataPoints: exp}}
		case "summary":
			m.Data = &metricspb.Metric_Summary{Summary: &metricspb.Summary{DataPoints: summ}}
		}
		b, _ := proto.Marshal(&colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{Resource: res,
			ScopeMetrics: []*metricspb.ScopeMetrics{{Scope: &commonpb.InstrumentationScope{Name: "load", Version: "1"}, Metrics: []*metricspb.Metric{m}}}}}})
		out = append(out, b)
	}
	return out
}

// benchReceiver returns a receiver into an aggregator, and spans into si
// (nil: spans refused).
func benchReceiver(tb testing.TB, si SpanIngester) (*OTLP, *window.Tenant) {
	tenants, _ := NewTenants(TenantsConfig{MaxTenants: 10})
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 0})
	srv, err := New(Config{Ingest: agg, Tenants: tenants, Limits: codec.DefaultLimits(), Logger: slog.New(slog.DiscardHandler), Spans: si})
	if err != nil {
		tb.Fatal(err)
	}
	tn, _ := tenants.Resolve(tbContext(tb))
	return srv.NewOTLP(DefaultOTLPConfig()), tn
}

// BenchmarkOTLPMetrics converts and aggregates OTLP metrics requests of
// 500 points over 100k series, one kind per sub-benchmark, from their
// bytes: decoding, cumulative-to-delta, tags and the aggregator. The
// figures to watch are ns/point and allocs/point (steady state: zero).
func BenchmarkOTLPMetrics(b *testing.B) {
	for _, kind := range []string{"sum", "gauge", "histogram", "exponential", "summary"} {
		b.Run(kind, func(b *testing.B) {
			const series, perReq = 100_000, 500
			reqs := OTLPLoad(kind, series, perReq)
			r, tn := benchReceiver(b, nil)
			for _, q := range append(reqs, reqs...) { // two rounds: series, then contexts of cumulative ones
				if _, err := r.exportMetrics(context.Background(), tn, q); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := r.exportMetrics(context.Background(), tn, reqs[i%len(reqs)]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*perReq), "ns/point")
			b.ReportMetric(float64(testing.AllocsPerRun(1, func() { r.exportMetrics(context.Background(), tn, reqs[0]) }))/perReq, "allocs/point")
		})
	}
}

// BenchmarkOTLPTraces converts OTLP trace requests of 500 spans from
// their bytes, up to the span ingester (a no-op here): decoding, the
// spans' fields and attributes, and the copy of each span's encoding that
// the OTLP upstream sends on.
func BenchmarkOTLPTraces(b *testing.B) {
	const perReq = 500
	now := uint64(time.Now().UnixNano())
	req := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource:   &resourcepb.Resource{Attributes: []*commonpb.KeyValue{benchAttr("service.name", "api"), benchAttr("host.name", "node-1")}},
		ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: "http"}}}}}}
	for i := range perReq {
		req.ResourceSpans[0].ScopeSpans[0].Spans = append(req.ResourceSpans[0].ScopeSpans[0].Spans, &tracepb.Span{
			TraceId: []byte(fmt.Sprintf("%016d", i)), SpanId: []byte(fmt.Sprintf("%08d", i)), Name: "GET /items", Kind: tracepb.Span_SPAN_KIND_SERVER,
			StartTimeUnixNano: now, EndTimeUnixNano: now + 5e6,
			Attributes: []*commonpb.KeyValue{benchAttr("http.route", "/items"), {Key: "http.response.status_code", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 200}}}}})
	}
	body, _ := proto.Marshal(req)
	r, tn := benchReceiver(b, discardSpans{})
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := r.traces.exportTraces(context.Background(), tn, body); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*perReq), "ns/span")
	b.ReportMetric(testing.AllocsPerRun(1, func() { r.traces.exportTraces(context.Background(), tn, body) })/perReq, "allocs/span")
}

type discardSpans struct{}

func (discardSpans) IngestSpans(*window.Tenant, int64, []spans.Span, []window.Reason) {}

func tbContext(testing.TB) context.Context { return context.Background() }

// nopMetrics is the plainest OTLP/gRPC receiver: grpc-go decoding each
// request into the generated types, then nothing.
type nopMetrics struct {
	colmetricspb.UnimplementedMetricsServiceServer
}

func (nopMetrics) Export(context.Context, *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	return &colmetricspb.ExportMetricsServiceResponse{}, nil
}

// BenchmarkOTLPReceiver measures OTLP/gRPC receivers side by side over
// TCP loopback: 8 callers send requests of 500 cumulative sum points over
// 100k series. "aggd" is aggd's receiver, aggregating; "baseline" is the
// receiver at $AGGD_OTLP_BASELINE (such as the OpenTelemetry Collector's
// otlpreceiver with a nop consumer), else a grpc-go server that decodes
// into the generated types and drops them. Run with -count so the two
// alternate, and compare points/s within one run.
func BenchmarkOTLPReceiver(b *testing.B) {
	reqs := OTLPLoad("sum", 100_000, 500)
	b.Run("aggd", func(b *testing.B) {
		r, _ := benchReceiver(b, nil)
		gs := grpc.NewServer(ServerOptions()...)
		r.Register(gs)
		benchReceiverLoad(b, serveLoopback(b, gs), reqs, true)
	})
	b.Run("baseline", func(b *testing.B) {
		addr := os.Getenv("AGGD_OTLP_BASELINE")
		if addr == "" {
			gs := grpc.NewServer()
			colmetricspb.RegisterMetricsServiceServer(gs, nopMetrics{})
			addr = serveLoopback(b, gs)
		}
		benchReceiverLoad(b, addr, reqs, false)
	})
}

func serveLoopback(b *testing.B, gs *grpc.Server) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go gs.Serve(lis)
	b.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func benchReceiverLoad(b *testing.B, addr string, reqs [][]byte, warm bool) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec.Client())))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	send := func(q []byte) error {
		var resp colmetricspb.ExportMetricsServiceResponse
		return conn.Invoke(context.Background(), colmetricspb.MetricsService_Export_FullMethodName, codec.Raw(q), &resp)
	}
	if warm { // streams, then the contexts of their deltas
		for _, q := range append(reqs, reqs...) {
			if err := send(q); err != nil {
				b.Fatal(err)
			}
		}
	}
	var next atomic.Int64
	b.SetParallelism(8 / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := send(reqs[int(next.Add(1))%len(reqs)]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*500)/b.Elapsed().Seconds(), "points/s")
}

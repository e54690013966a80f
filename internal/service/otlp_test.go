package service_test

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"strings"
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
// the server's configuration.
func startOTLP(t *testing.T, setup ...func(*service.Config)) (*grpc.ClientConn, *flush.Aggregator, *service.Tenants) {
	t.Helper()
	return startOTLPWith(t, service.DefaultOTLPConfig(), setup...)
}

func startOTLPWith(t *testing.T, cfg service.OTLPConfig, setup ...func(*service.Config)) (*grpc.ClientConn, *flush.Aggregator, *service.Tenants) {
	t.Helper()
	tenants, _ := service.NewTenants(service.TenantsConfig{MaxTenants: 10})
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 2})
	sc := service.Config{Ingest: agg, Tenants: tenants, Limits: codec.DefaultLimits(), Logger: slog.New(slog.DiscardHandler)}
	for _, f := range setup {
		f(&sc)
	}
	srv, err := service.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	return serveOTLP(t, srv.NewOTLP(cfg)), agg, tenants
}

// serveOTLP serves r over OTLP/gRPC on bufconn.
func serveOTLP(t *testing.T, r *service.OTLP) *grpc.ClientConn {
	t.Helper()
	gs := grpc.NewServer(service.ServerOptions()...)
	r.Register(gs)
	lis := bufconn.Listen(1 << 20)
	go gs.Serve(lis)
	conn, _ := grpc.NewClient("passthrough:///otlp", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	t.Cleanup(func() { conn.Close(); gs.Stop() })
	return conn
}

func sumPoint(start uint64, v int64) *metricspb.Metric {
	return sumPointFlags(start, v, 0)
}

func sumPointFlags(start uint64, v int64, flags uint32) *metricspb.Metric {
	now := uint64(time.Now().UnixNano())
	return &metricspb.Metric{Name: "s", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, IsMonotonic: true,
		DataPoints: []*metricspb.NumberDataPoint{{StartTimeUnixNano: start, TimeUnixNano: now, Flags: flags, Value: &metricspb.NumberDataPoint_AsInt{AsInt: v}}},
	}}}
}

func histPoint(temporality metricspb.AggregationTemporality, start uint64, bounds []float64, counts []uint64, sum float64) *metricspb.Metric {
	var n uint64
	for _, c := range counts {
		n += c
	}
	return &metricspb.Metric{Name: "h", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
		AggregationTemporality: temporality,
		DataPoints: []*metricspb.HistogramDataPoint{{StartTimeUnixNano: start, TimeUnixNano: uint64(time.Now().UnixNano()),
			ExplicitBounds: bounds, BucketCounts: counts, Count: n, Sum: &sum}},
	}}}
}

func expPoint(start uint64, scale int32, zero uint64, offset int32, counts []uint64, sum float64) *metricspb.Metric {
	n := zero
	for _, c := range counts {
		n += c
	}
	return &metricspb.Metric{Name: "e", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE,
		DataPoints: []*metricspb.ExponentialHistogramDataPoint{{StartTimeUnixNano: start, TimeUnixNano: uint64(time.Now().UnixNano()),
			Scale: scale, ZeroCount: zero, Count: n, Sum: &sum,
			Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: offset, BucketCounts: counts}}},
	}}}
}

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func request(ms ...*metricspb.Metric) *colmetricspb.ExportMetricsServiceRequest {
	return &colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: ms}}}}}
}

// onResource puts req's metrics on a resource with attrs.
func onResource(req *colmetricspb.ExportMetricsServiceRequest, attrs ...*commonpb.KeyValue) *colmetricspb.ExportMetricsServiceRequest {
	req.ResourceMetrics[0].Resource = &resourcepb.Resource{Attributes: attrs}
	return req
}

func drained(t *testing.T, agg *flush.Aggregator, tenants *service.Tenants) *flushtest.Exporter {
	exp := &flushtest.Exporter{}
	{
		fl, err := flush.NewFlusher(agg, exp, tenants, flush.Config{Interval: time.Hour}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		fl.Shutdown(context.Background())
	}
	return exp
}

// TestOTLPCumulativeToDelta holds the cumulative-to-delta rules of the
// OpenTelemetry Collector's cumulativetodelta processor; each case names
// the function whose behaviour it reproduces. before is a start time
// earlier than the receiver's start, after one later.
func TestOTLPCumulativeToDelta(t *testing.T) {
	type reqs = []*colmetricspb.ExportMetricsServiceRequest
	const hist = metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE
	bounds := []float64{10, 100}
	tests := []struct {
		name, follows string
		send          func(before, after uint64) reqs
		want          map[string]float64 // name{host} → COUNT value, or distribution count
		wantSum       map[string]float64 // distribution sums
		wantRejected  int64
	}{{
		name:    "two hosts are two streams",
		follows: "tracking.MetricIdentity.Write (resource attributes are part of the identity)",
		send: func(before, _ uint64) reqs {
			var rs reqs
			for i := range int64(3) {
				rs = append(rs, onResource(request(sumPoint(before, 100+10*i)), strAttr("host.name", "a")),
					onResource(request(sumPoint(before, 1000+10*i)), strAttr("host.name", "b")))
			}
			return rs
		},
		want: map[string]float64{"s{a}": 20, "s{b}": 20},
	}, {
		name:    "instances that share their tags are still two streams",
		follows: "tracking.MetricIdentity.Write",
		send: func(before, _ uint64) reqs {
			var rs reqs
			for i := range int64(2) {
				rs = append(rs, onResource(request(sumPoint(before, 100+10*i)), strAttr("service.instance.id", "1")),
					onResource(request(sumPoint(before, 7+i)), strAttr("service.instance.id", "2")))
			}
			return rs
		},
		want: map[string]float64{"s{}": 11},
	}, {
		name:    "a stream that started before aggd is a baseline first",
		follows: "tracking.MetricTracker.Convert (initial_value auto)",
		send:    func(before, _ uint64) reqs { return reqs{request(sumPoint(before, 50)), request(sumPoint(before, 60))} },
		want:    map[string]float64{"s{}": 10},
	}, {
		name:    "a stream that started after aggd counts in full",
		follows: "tracking.MetricTracker.Convert (initial_value auto)",
		send:    func(_, after uint64) reqs { return reqs{request(sumPoint(after, 5)), request(sumPoint(after, 8))} },
		want:    map[string]float64{"s{}": 8},
	}, {
		name:    "a drop without a new start time is a reset, not counted",
		follows: "tracking.MetricTracker.Convert (ReasonReset)",
		send: func(before, _ uint64) reqs {
			return reqs{request(sumPoint(before, 100)), request(sumPoint(before, 110)), request(sumPoint(before, 3)), request(sumPoint(before, 5))}
		},
		want: map[string]float64{"s{}": 10 + 2},
	}, {
		name:    "a new start time after aggd's start counts in full",
		follows: "tracking.MetricIdentity.Write (the start time is part of the identity) and Convert",
		send: func(before, after uint64) reqs {
			return reqs{request(sumPoint(before, 100)), request(sumPoint(before, 110)), request(sumPoint(after, 4))}
		},
		want: map[string]float64{"s{}": 10 + 4},
	}, {
		name:    "points without a recorded value are skipped silently",
		follows: "cumulativeToDeltaProcessor.convertNumberDataPoints (NoRecordedValue)",
		send: func(before, _ uint64) reqs {
			return reqs{request(sumPoint(before, 100)), request(sumPointFlags(before, 0, 1)), request(sumPoint(before, 130))}
		},
		want: map[string]float64{"s{}": 30},
	}, {
		name:    "one stream whatever the order its attributes come in",
		follows: "tracking.MetricIdentity.Write (pdatautil.MapHash hashes the attributes in key order)",
		send: func(before, _ uint64) reqs {
			ab := []*commonpb.KeyValue{strAttr("a", "1"), strAttr("b", "2")}
			ba := []*commonpb.KeyValue{ab[1], ab[0]}
			var rs reqs
			// The second order comes once the stream is known by the first:
			// each order's encoding then names the same stream.
			for i, attrs := range [][]*commonpb.KeyValue{ab, ab, ab, ba, ba, ab, ba} {
				m := sumPoint(before, 100+int64(10*i))
				m.GetSum().DataPoints[0].Attributes = attrs
				rs = append(rs, request(m))
			}
			return rs
		},
		want: map[string]float64{"s{}": 60},
	}, {
		name:    "integer and double points are two streams",
		follows: "tracking.MetricIdentity.Write (MetricValueType is part of the identity)",
		send: func(before, _ uint64) reqs {
			double := func(v float64) *colmetricspb.ExportMetricsServiceRequest {
				m := sumPoint(before, 0)
				m.GetSum().DataPoints[0].Value = &metricspb.NumberDataPoint_AsDouble{AsDouble: v}
				return request(m)
			}
			// Each stream's first point is a baseline; the later ones
			// (known by then, so found by their attributes' encoding) add
			// their own deltas: 20 and 20, where one stream of 100, 100,
			// 110, 115, 120, 120 would count 20.
			return reqs{request(sumPoint(before, 100)), double(100), request(sumPoint(before, 110)), double(115),
				request(sumPoint(before, 120)), double(120)}
		},
		want: map[string]float64{"s{}": 20 + 20},
	}, {
		name:    "histogram deltas by bucket",
		follows: "tracking.MetricTracker.Convert (MetricTypeHistogram)",
		send: func(before, _ uint64) reqs {
			return reqs{request(histPoint(hist, before, bounds, []uint64{1, 2, 3}, 500)), request(histPoint(hist, before, bounds, []uint64{2, 4, 3}, 530))}
		},
		want:    map[string]float64{"h{}": 3},
		wantSum: map[string]float64{"h{}": 30},
	}, {
		name:    "a histogram's later deltas go to the series of its first",
		follows: "tracking.MetricTracker.Convert (MetricTypeHistogram)",
		send: func(before, _ uint64) reqs {
			var rs reqs
			counts := [][]uint64{{1, 2, 3}, {2, 4, 3}, {3, 4, 5}, {3, 6, 5}}
			for i, c := range counts {
				rs = append(rs, onResource(request(histPoint(hist, before, bounds, c, float64(500+40*i))), strAttr("host.name", "a")),
					onResource(request(histPoint(hist, before, bounds, c, float64(50+10*i))), strAttr("host.name", "b")))
			}
			return rs
		},
		want:    map[string]float64{"h{a}": 8, "h{b}": 8},
		wantSum: map[string]float64{"h{a}": 120, "h{b}": 30},
	}, {
		name:    "a histogram whose bounds change starts over",
		follows: "tracking.MetricTracker.Convert (ReasonBucketMismatch)",
		send: func(before, _ uint64) reqs {
			return reqs{request(histPoint(hist, before, bounds, []uint64{1, 2, 3}, 500)),
				request(histPoint(hist, before, []float64{20, 100}, []uint64{2, 4, 3}, 530)),
				request(histPoint(hist, before, []float64{20, 100}, []uint64{3, 4, 3}, 535))}
		},
		want:    map[string]float64{"h{}": 1},
		wantSum: map[string]float64{"h{}": 5},
	}, {
		name:    "a histogram whose count drops passes on whole",
		follows: "tracking.MetricTracker.Convert (histogram ReasonReset keeps the point)",
		send: func(before, _ uint64) reqs {
			return reqs{request(histPoint(hist, before, bounds, []uint64{1, 2, 3}, 500)), request(histPoint(hist, before, bounds, []uint64{1, 0, 0}, 4))}
		},
		want:    map[string]float64{"h{}": 1},
		wantSum: map[string]float64{"h{}": 4},
	}, {
		name:    "cumulative exponential histograms are taken",
		follows: "tracking.MetricTracker.Convert (MetricTypeExponentialHistogram)",
		send: func(before, _ uint64) reqs {
			return reqs{request(expPoint(before, 2, 1, 4, []uint64{1, 2}, 10)), request(expPoint(before, 2, 2, 4, []uint64{3, 2, 1}, 20))}
		},
		want:    map[string]float64{"e{}": 4},
		wantSum: map[string]float64{"e{}": 10},
	}, {
		name:    "an exponential histogram at a coarser scale is coarsened",
		follows: "tracking.MetricTracker.Convert (ExponentialHistogramPoint Coarsen, Diff)",
		send: func(before, _ uint64) reqs {
			// Scale 2 buckets 4..7 merge into scale 1 buckets 2..3.
			return reqs{request(expPoint(before, 2, 0, 4, []uint64{1, 1, 1, 1}, 10)), request(expPoint(before, 1, 0, 2, []uint64{3, 4}, 18))}
		},
		want:    map[string]float64{"e{}": 3},
		wantSum: map[string]float64{"e{}": 8},
	}, {
		name:    "an exponential histogram whose count drops is a reset, not counted",
		follows: "tracking.MetricTracker.Convert (exponential ReasonReset)",
		send: func(before, _ uint64) reqs {
			return reqs{request(expPoint(before, 2, 0, 4, []uint64{5}, 10)), request(expPoint(before, 2, 0, 4, []uint64{1}, 2)), request(expPoint(before, 2, 0, 4, []uint64{3}, 6))}
		},
		want:    map[string]float64{"e{}": 2},
		wantSum: map[string]float64{"e{}": 4},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, agg, tenants := startOTLP(t)
			c := colmetricspb.NewMetricsServiceClient(conn)
			after := uint64(time.Now().UnixNano())
			var rejected int64
			for _, req := range tc.send(1, after) {
				resp, err := c.Export(context.Background(), req)
				if err != nil {
					t.Fatal(err)
				}
				rejected += resp.GetPartialSuccess().GetRejectedDataPoints()
			}
			got, gotSum := map[string]float64{}, map[string]float64{}
			for _, p := range drained(t, agg, tenants).Points() {
				k := p.Name + "{" + p.Host + "}"
				if p.Type == window.TypeDistribution {
					got[k] += p.Count
					gotSum[k] += p.Sum
				} else {
					got[k] += p.Value
				}
			}
			if !maps.Equal(got, tc.want) || (tc.wantSum != nil && !maps.Equal(gotSum, tc.wantSum)) || rejected != tc.wantRejected {
				t.Errorf("following %s:\ngot %v sums %v rejected %d\nwant %v sums %v rejected %d", tc.follows, got, gotSum, rejected, tc.want, tc.wantSum, tc.wantRejected)
			}
		})
	}
}

// TestOTLPSumStreamKeepsItsSeries: from a cumulative sum stream's third
// point on, its samples take the series its earlier ones went to (the
// stream keeps their context key): same name, host and canonical tags,
// with a tag the resource and the point repeat, and a point's own
// host.name.
func TestOTLPSumStreamKeepsItsSeries(t *testing.T) {
	conn, agg, tenants := startOTLP(t)
	c := colmetricspb.NewMetricsServiceClient(conn)
	a, b := []int64{100, 110, 125, 160}, []int64{5, 6, 8, 9}
	for i := range a {
		m := sumPoint(1, a[i]) // started before aggd: the first point is a baseline
		pb := sumPoint(1, b[i]).GetSum().DataPoints[0]
		dp := m.GetSum()
		dp.DataPoints[0].Attributes = []*commonpb.KeyValue{strAttr("route", "/a"), strAttr("env", "prod")}
		pb.Attributes = []*commonpb.KeyValue{strAttr("route", "/b"), strAttr("host.name", "b")}
		dp.DataPoints = append(dp.DataPoints, pb)
		req := onResource(request(m), strAttr("host.name", "a"), strAttr("env", "prod"), strAttr("service.instance.id", "1"))
		req.ResourceMetrics[0].ScopeMetrics[0].Scope = &commonpb.InstrumentationScope{Name: "lib", Attributes: []*commonpb.KeyValue{strAttr("lib", "x")}}
		if _, err := c.Export(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]float64{}
	for _, p := range drained(t, agg, tenants).Points() {
		got[p.Name+"{"+p.Host+"}"+p.Tags] += p.Value
	}
	want := map[string]float64{"s{a}env:prod,lib:x,route:/a": 60, "s{b}env:prod,lib:x,route:/b": 4}
	if !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestOTLPHistogramsKeepExactMoments: explicit-bucket histograms become
// sketches by spreading each bucket's count over its bounds (Datadog's
// OTLP mapping, getSketchBuckets with quantile.Agent.InsertInterpolate),
// while count, sum, minimum and maximum stay the point's own.
func TestOTLPHistogramsKeepExactMoments(t *testing.T) {
	conn, agg, tenants := startOTLP(t)
	c := colmetricspb.NewMetricsServiceClient(conn)
	// 3, 7, 7, 30, 80, 300 recorded with the OTel SDK's default bounds.
	bounds := []float64{0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000}
	counts := make([]uint64, len(bounds)+1)
	counts[1], counts[2], counts[4], counts[6], counts[8] = 1, 2, 1, 1, 1
	m := histPoint(metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, 0, bounds, counts, 427)
	lo, hi := 3.0, 300.0
	m.GetHistogram().DataPoints[0].Min, m.GetHistogram().DataPoints[0].Max = &lo, &hi
	// Without min and max, the open-ended buckets sit at their bound.
	open := histPoint(metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, 0, []float64{10, 20}, []uint64{1, 0, 3}, 95)
	open.Name = "open"
	if _, err := c.Export(context.Background(), request(m, open)); err != nil {
		t.Fatal(err)
	}
	got := map[string]flushtest.Point{}
	for _, p := range drained(t, agg, tenants).Points() {
		got[p.Name] = p
	}
	if h := got["h"]; h.Count != 6 || h.Sum != 427 || h.Min != 3 || h.Max != 300 || h.P50 <= 5 || h.P50 > 10 {
		t.Errorf("h = %+v, want count 6, sum 427, min 3, max 300, median in (5, 10]", h)
	}
	if o := got["open"]; o.Count != 4 || o.Sum != 95 || o.Min != 10 || o.Max != 20 {
		t.Errorf("open = %+v, want count 4, sum 95, min 10, max 20", o)
	}
}

func TestOTLPExponentialHistogramAndSummary(t *testing.T) {
	conn, agg, tenants := startOTLP(t)
	c := colmetricspb.NewMetricsServiceClient(conn)
	now := uint64(time.Now().UnixNano())
	exp := &metricspb.Metric{Name: "e", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
		DataPoints: []*metricspb.ExponentialHistogramDataPoint{{TimeUnixNano: now, Scale: 3, ZeroCount: 2, Count: 10,
			Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: 8, BucketCounts: []uint64{1, 0, 5}},
			Negative: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: 0, BucketCounts: []uint64{2}}}},
	}}}
	badExp := &metricspb.Metric{Name: "bad", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
		DataPoints:             []*metricspb.ExponentialHistogramDataPoint{{TimeUnixNano: now, Count: 3, ZeroCount: 1}},
	}}}
	sum := &metricspb.Metric{Name: "q", Data: &metricspb.Metric_Summary{Summary: &metricspb.Summary{DataPoints: []*metricspb.SummaryDataPoint{{
		StartTimeUnixNano: now - 1e9, TimeUnixNano: now, Count: 4, Sum: 10,
		Attributes:     []*commonpb.KeyValue{strAttr("k", "v")},
		QuantileValues: []*metricspb.SummaryDataPoint_ValueAtQuantile{{Quantile: 0.5, Value: 2}, {Quantile: 0.99, Value: 4}},
	}}}}}
	req := onResource(request(exp, badExp, sum), strAttr("host.name", "h1"), strAttr("service.instance.id", "x"), strAttr("env", "prod"))
	req.ResourceMetrics[0].ScopeMetrics[0].Scope = &commonpb.InstrumentationScope{Name: "lib",
		Attributes: []*commonpb.KeyValue{{Key: "scope", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 7}}}}}
	resp, err := c.Export(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if ps := resp.PartialSuccess; ps.GetRejectedDataPoints() != 1 || !strings.Contains(ps.GetErrorMessage(), "count is 3") {
		t.Fatalf("partial success %v: the exponential histogram whose buckets miss its count must be refused", ps)
	}
	got := map[string]flushtest.Point{}
	for _, p := range drained(t, agg, tenants).Points() {
		got[p.Name+"{"+p.Tags+"}"] = p
	}
	e := got["e{env:prod,scope:7}"]
	if e.Count != 10 || e.Type != window.TypeDistribution || e.Host != "h1" {
		t.Fatalf("exponential histogram: %+v in %v", e, got)
	}
	// A cumulative summary that started before the receiver is a baseline:
	// only its quantiles count.
	for k, w := range map[string]float64{"q{env:prod,k:v,quantile:0.5,scope:7}": 2, "q{env:prod,k:v,quantile:0.99,scope:7}": 4} {
		if got[k].Value != w {
			t.Errorf("%s = %+v, want %v", k, got[k], w)
		}
	}
	if _, ok := got["q.count{env:prod,k:v,scope:7}"]; ok {
		t.Errorf("a summary's first point must be a baseline: %v", got)
	}
}

// TestOTLPResourceAttributesAsTags: the allow and deny lists choose which
// resource attributes become tags.
func TestOTLPResourceAttributesAsTags(t *testing.T) {
	attrs := []*commonpb.KeyValue{strAttr("host.name", "n1"), strAttr("env", "prod"), strAttr("service.name", "api"),
		strAttr("service.instance.id", "abc"), strAttr("process.pid", "12"), strAttr("k8s.pod.uid", "u"), strAttr("k8s.namespace.name", "ns")}
	tests := []struct {
		name string
		cfg  service.OTLPConfig
		want string
	}{
		{"default drops per-process identity", service.DefaultOTLPConfig(), "env:prod,k8s.namespace.name:ns,service.name:api"},
		{"allow list", service.OTLPConfig{ResourceTags: []string{"service.name", "k8s.*"}}, "k8s.namespace.name:ns,k8s.pod.uid:u,service.name:api"},
		{"allow and deny", service.OTLPConfig{ResourceTags: []string{"k8s.*", "env"}, DropResourceTags: []string{"k8s.pod.uid"}}, "env:prod,k8s.namespace.name:ns"},
		{"everything", service.OTLPConfig{}, "env:prod,k8s.namespace.name:ns,k8s.pod.uid:u,process.pid:12,service.instance.id:abc,service.name:api"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, agg, tenants := startOTLPWith(t, tc.cfg)
			g := &metricspb.Metric{Name: "g", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: []*metricspb.NumberDataPoint{
				{TimeUnixNano: uint64(time.Now().UnixNano()), Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: 1}}}}}}
			if _, err := colmetricspb.NewMetricsServiceClient(conn).Export(context.Background(), onResource(request(g), attrs...)); err != nil {
				t.Fatal(err)
			}
			ps := drained(t, agg, tenants).Points()
			if len(ps) != 1 || ps[0].Tags != tc.want || ps[0].Host != "n1" {
				t.Errorf("got %+v, want tags %s on host n1", ps, tc.want)
			}
		})
	}
}

// TestOTLPUnderMemoryPressure: the OTLP services obey the memory budget
// as the aggd.v1 ones do, answering ResourceExhausted with RetryInfo,
// which OTLP exporters retry, past the hard limit.
func TestOTLPUnderMemoryPressure(t *testing.T) {
	lv := &level{}
	conn, _, _ := startOTLP(t, func(c *service.Config) { c.Load = lv })
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

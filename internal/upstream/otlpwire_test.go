package upstream

import (
	"context"
	"io"
	"log/slog"
	"testing"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

// refMetric builds m as a tree of generated messages: what the wire
// encoder must write.
func refMetric(m *window.Metric) *metricspb.Metric {
	start := uint64(m.Timestamp)
	end := uint64(m.Timestamp + m.Interval)
	attrs := tagAttrs(m.Tags)
	gauge := func(unit string, v float64) *metricspb.Metric {
		return &metricspb.Metric{Name: m.Name, Unit: unit, Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{
			DataPoints: []*metricspb.NumberDataPoint{{Attributes: attrs, TimeUnixNano: start, Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: v}}},
		}}}
	}
	switch m.Type {
	case window.TypeCount, window.TypeMonotonicCount:
		return &metricspb.Metric{Name: m.Name, Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
			IsMonotonic:            m.Type == window.TypeMonotonicCount,
			DataPoints: []*metricspb.NumberDataPoint{{Attributes: attrs, StartTimeUnixNano: start, TimeUnixNano: end,
				Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: m.Value}}},
		}}}
	case window.TypeRate:
		return gauge("1/s", m.Value)
	case window.TypeHistogram, window.TypeTiming, window.TypeDistribution:
		dp := expHistogram(m)
		dp.Attributes, dp.StartTimeUnixNano, dp.TimeUnixNano = attrs, start, end
		return &metricspb.Metric{Name: m.Name, Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
			AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
			DataPoints:             []*metricspb.ExponentialHistogramDataPoint{dp},
		}}}
	}
	return gauge("", m.Value) // GAUGE, SET
}

// TestOTLPWireMetricIsTheTree encodes aggregates of every type with the
// wire encoder and checks each against the tree of generated messages
// built for it, as proto.Equal sees them once decoded.
func TestOTLPWireMetricIsTheTree(t *testing.T) {
	tn := window.NewTenant("acme")
	base := window.Metric{Tenant: tn, Name: "svc.m", Host: "h1", Timestamp: 1_700_000_000e9, Interval: 10e9}
	with := func(mod func(m *window.Metric)) *window.Metric {
		m := base
		mod(&m)
		return &m
	}
	cases := []struct {
		name string
		m    *window.Metric
	}{
		{"gauge", with(func(m *window.Metric) {
			m.Type, m.Value, m.Tags = window.TypeGauge, 1.5, []string{"env:prod", "service:api"}
		})},
		{"gauge of zero, no tags", with(func(m *window.Metric) { m.Type = window.TypeGauge })},
		{"set", with(func(m *window.Metric) { m.Type, m.Value = window.TypeSet, 3 })},
		{"count", with(func(m *window.Metric) { m.Type, m.Value, m.Tags = window.TypeCount, 42, []string{"a:1"} })},
		{"monotonic count", with(func(m *window.Metric) { m.Type, m.Value = window.TypeMonotonicCount, 7 })},
		{"rate", with(func(m *window.Metric) { m.Type, m.Value = window.TypeRate, 0.25 })},
		{"bare, empty and repeated tag keys", with(func(m *window.Metric) {
			m.Type, m.Value, m.Tags = window.TypeGauge, -2, []string{"bare", "k:1", "empty:", "k:2", ":novalue", "k:3", "bare", "x:y:z"}
		})},
		{"late count", with(func(m *window.Metric) { m.Type, m.Value, m.Late = window.TypeCount, 1, true })},
		{"histogram", with(func(m *window.Metric) {
			m.Type, m.Tags = window.TypeHistogram, []string{"k:1", "k:2"}
			m.Exact, m.ExactWeights = []float64{-3, 0, 0.5, 2, 2, 1e6}, []float64{1, 2, 1, 1, 0.5, 1}
			m.Min, m.Max, m.Sum, m.Count = -3, 1e6, 1e6+1.5+3, 6.5
		})},
		{"distribution too wide for scale 6", with(func(m *window.Metric) {
			m.Type, m.Exact, m.ExactWeights = window.TypeDistribution, []float64{-1e300, -1e-10, 1e-300, 3, 1e10}, []float64{1, 1, 2, 1, 1}
			m.Min, m.Max, m.Sum, m.Count = -1e300, 1e10, -1e300, 6
		})},
		{"distribution of one value", with(func(m *window.Metric) {
			m.Type, m.Exact, m.ExactWeights = window.TypeDistribution, []float64{5}, []float64{1}
			m.Min, m.Max, m.Sum, m.Count = 5, 5, 5, 1
		})},
		{"timing", with(func(m *window.Metric) {
			m.Type, m.Exact, m.ExactWeights = window.TypeTiming, []float64{0.001, 0.002}, []float64{1, 1}
			m.Min, m.Max, m.Sum, m.Count = 0.001, 0.002, 0.003, 2
		})},
	}
	var e otlpEncoder
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got metricspb.Metric
			if err := proto.Unmarshal(e.encode(c.m), &got); err != nil {
				t.Fatal(err)
			}
			if want := refMetric(c.m); !proto.Equal(&got, want) {
				t.Errorf("wire encoding decodes to\n%v\nwant\n%v", &got, want)
			}
		})
	}
}

// TestOTLPWireRequestIsTheTree exports a flush of several hosts through an
// OTLP upstream that is not started, and checks the requests queued, cut
// by size or not, against the tree of generated messages: one resource
// per host in order of arrival, scope aggd, the aggregates in order.
func TestOTLPWireRequestIsTheTree(t *testing.T) {
	var samples []window.Sample
	types := []window.MetricType{window.TypeGauge, window.TypeCount, window.TypeHistogram, window.TypeDistribution, window.TypeSet}
	for i := range 300 {
		samples = append(samples, window.Sample{Name: "load.metric", Type: types[i%len(types)], Values: []float64{float64(i), 1},
			Host: []string{"", "web-1", "web-2"}[i%3], Tags: []string{"ctx:" + string(rune('a'+i%26)) + string(rune('a'+i/26)), "env:prod"}, SetMember: "u"})
	}
	f := flushOf(t, 0, samples...)
	f.Events, f.Checks = nil, nil
	for _, limit := range []int{0, 4096} {
		cfg := OTLPConfig{Pipeline: DefaultPipelineConfig("otel"), Endpoint: "127.0.0.1:1", Insecure: true,
			TenantAttribute: "aggd.tenant", InstanceID: "i-1", MaxPayloadBytes: limit}
		o, err := NewOTLP(cfg, &upstreamtest.Metrics{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		for range 2 { // the second export reuses the first one's buffers
			if err := o.Export(context.Background(), f, all); err != nil {
				t.Fatal(err)
			}
			var got []*metricspb.Metric
			var hosts []string
			for len(o.pipe.queue) > 0 {
				pl := <-o.pipe.queue
				var req colmetricspb.ExportMetricsServiceRequest
				if err := proto.Unmarshal(pl.Body, &req); err != nil {
					t.Fatal(err)
				}
				if limit > 0 && len(pl.Body) > limit {
					t.Errorf("payload of %d bytes past the limit of %d", len(pl.Body), limit)
				}
				n := 0
				for _, rm := range req.ResourceMetrics {
					host := ""
					for _, a := range rm.Resource.Attributes {
						if a.Key == "host.name" {
							host = a.Value.GetStringValue()
						}
					}
					want := &resourcepb.Resource{Attributes: o.resourceAttrs(window.NewTenant("acme"), host)}
					if !proto.Equal(rm.Resource, want) {
						t.Errorf("resource %v, want %v", rm.Resource, want)
					}
					if len(rm.ScopeMetrics) != 1 || !proto.Equal(rm.ScopeMetrics[0].Scope, &commonpb.InstrumentationScope{Name: "aggd"}) {
						t.Fatalf("scope metrics %v, want one of scope aggd", rm.ScopeMetrics)
					}
					for _, m := range rm.ScopeMetrics[0].Metrics {
						got = append(got, m)
						hosts = append(hosts, host)
						n++
					}
				}
				if n != pl.Points {
					t.Errorf("payload says %d points, holds %d", pl.Points, n)
				}
			}
			// Each host's aggregates come in the flush's order.
			want := map[string][]*metricspb.Metric{}
			total := 0
			for m := range f.Metrics() {
				want[m.Host] = append(want[m.Host], refMetric(m))
				total++
			}
			byHost := map[string][]*metricspb.Metric{}
			for i, m := range got {
				byHost[hosts[i]] = append(byHost[hosts[i]], m)
			}
			if len(got) != total {
				t.Errorf("limit %d: %d aggregates sent, want %d", limit, len(got), total)
			}
			for host, ms := range want {
				for i, w := range ms {
					if i >= len(byHost[host]) || !proto.Equal(byHost[host][i], w) {
						t.Fatalf("limit %d, host %q, aggregate %d: got %v, want %v", limit, host, i, byHost[host][i:min(i+1, len(byHost[host]))], w)
					}
				}
			}
		}
		o.conn.Close()
	}
}

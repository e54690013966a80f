package upstream_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

// mixFlush is one flush of n contexts in aggload's default type mix: gauge
// 30, count 40, histogram 10, distribution 10, set 10.
func mixFlush(b testing.TB, n int) *window.Flush {
	types := []window.MetricType{}
	for t, w := range map[window.MetricType]int{window.TypeGauge: 3, window.TypeCount: 4, window.TypeHistogram: 1, window.TypeDistribution: 1, window.TypeSet: 1} {
		for range w {
			types = append(types, t)
		}
	}
	ss := make([]window.Sample, 0, n)
	for i := range n {
		typ := types[i%len(types)]
		ss = append(ss, window.Sample{Name: fmt.Sprintf("load.metric.%d", i%500), Type: typ, Values: []float64{float64(i % 97), float64(i % 13)},
			Host: fmt.Sprintf("host-%d", i%50), Tags: []string{fmt.Sprintf("ctx:%d", i/500), "env:prod", "service:api"}, SetMember: "u"})
	}
	return flushOf(b, map[*window.Tenant][]window.Sample{window.NewTenant("acme"): ss})
}

func routed(*window.Tenant) (upstream.Credentials, bool) { return upstream.Credentials{}, true }

// BenchmarkDatadogFlush100k encodes, compresses (zstd) and sends one flush
// of 100k contexts to a loopback intake. At a 10 s interval, ns/op / 1e10
// is the share of one core it takes.
func BenchmarkDatadogFlush100k(b *testing.B) {
	intake := upstreamtest.NewDatadogIntake(b)
	no := false
	intake.Answer = func(string, int) upstreamtest.Answer { return upstreamtest.Answer{Store: &no} }
	f := mixFlush(b, 100_000)
	cfg := upstream.DatadogConfig{Pipeline: upstream.DefaultPipelineConfig("dd"), URL: intake.URL, APIKey: "k",
		Compression: upstream.CompressZstd, Histogram: upstream.DefaultHistogramConfig()}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := upstream.NewDatadog(cfg, &upstreamtest.Metrics{}, discard)
		d.Start(context.Background())
		if err := d.Export(context.Background(), f, routed); err != nil {
			b.Fatal(err)
		}
		d.Shutdown(context.Background())
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e10*100, "%core@10s")
}

// BenchmarkOTLPFlush100k does the same through OTLP/gRPC with gzip.
func BenchmarkOTLPFlush100k(b *testing.B) {
	r := upstreamtest.NewOTLPReceiver(b)
	f := mixFlush(b, 100_000)
	cfg := upstream.OTLPConfig{Pipeline: upstream.DefaultPipelineConfig("otel"), Endpoint: r.Addr, Insecure: true,
		TenantAttribute: "aggd.tenant", Compression: upstream.CompressGzip, Histogram: upstream.DefaultHistogramConfig()}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		o, err := upstream.NewOTLP(cfg, &upstreamtest.Metrics{}, discard)
		if err != nil {
			b.Fatal(err)
		}
		o.Start(context.Background())
		if err := o.Export(context.Background(), f, routed); err != nil {
			b.Fatal(err)
		}
		o.Shutdown(context.Background())
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e10*100, "%core@10s")
}

var discard = slog.New(slog.DiscardHandler)

package upstream_test

import (
	"context"
	"io"
	"math"
	"runtime"
	"testing"

	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

// encoders are the upstreams whose encoding the allocation tests and
// benchmarks measure, each made fresh and not started: payloads wait in
// the queue, so only encoding, compression and queuing are counted.
var encoders = []struct {
	name string
	new  func(testing.TB) upstream.Upstream
	// maxBytes bounds what one flush allocates per context once the
	// encoder's buffers have grown, from measurements with a margin:
	// the payloads queued (compressed), not buffers grown anew each flush.
	maxBytes float64
}{
	{"jsonlines", func(testing.TB) upstream.Upstream {
		return upstream.NewJSONLines("json", io.Discard, upstream.JSONLinesConfig{Histogram: upstream.DefaultHistogramConfig()})
	}, 1},
	{"datadog-zstd", func(t testing.TB) upstream.Upstream { return unstartedDatadog(t, upstream.CompressZstd) }, 150},
	{"datadog-gzip", func(t testing.TB) upstream.Upstream { return unstartedDatadog(t, upstream.CompressGzip) }, 150},
	// The request's body, uncompressed (gRPC compresses it as it sends):
	// 136 bytes per context and no object, against 1,354 bytes and 17
	// objects when the request was a tree of generated messages.
	{"otlp", unstartedOTLP, 300},
}

func unstartedOTLP(t testing.TB) upstream.Upstream {
	cfg := upstream.OTLPConfig{Pipeline: upstream.DefaultPipelineConfig("otel"), Endpoint: "127.0.0.1:1", Insecure: true,
		TenantAttribute: "aggd.tenant", Compression: upstream.CompressGzip, Histogram: upstream.DefaultHistogramConfig()}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	o, err := upstream.NewOTLP(cfg, &upstreamtest.Metrics{}, discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Shutdown(context.Background()) })
	return o
}

func unstartedDatadog(t testing.TB, c upstream.Compression) upstream.Upstream {
	cfg := upstream.DatadogConfig{Pipeline: upstream.DefaultPipelineConfig("dd"), URL: "http://127.0.0.1:1", APIKey: "k",
		Compression: c, Histogram: upstream.DefaultHistogramConfig()}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return upstream.NewDatadog(cfg, &upstreamtest.Metrics{}, discard)
}

// exportAllocs returns the bytes and objects one Export of f into u
// allocates per context of f (n of them), once the encoder has buffers of
// the flush's size: the least of four exports after a first. The race
// detector makes sync.Pool drop a share of what is put back at random, so
// that one export in a few makes a compressor anew; the least is what the
// encoder itself allocates.
func exportAllocs(t testing.TB, u upstream.Upstream, f *window.Flush, n int) (bytes, objects float64) {
	export := func() {
		if err := u.Export(context.Background(), f, routed); err != nil {
			t.Fatal(err)
		}
	}
	export()
	bytes, objects = math.Inf(1), math.Inf(1)
	for range 4 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		export()
		runtime.ReadMemStats(&after)
		bytes = min(bytes, float64(after.TotalAlloc-before.TotalAlloc)/float64(n))
		objects = min(objects, float64(after.Mallocs-before.Mallocs)/float64(n))
	}
	return bytes, objects
}

// TestFlushAllocatesLittlePerAggregate bounds what encoding a flush of the
// load generator's mix allocates per context, so that a large flush does
// not drive garbage collections whose assists land on the goroutines
// acking batches.
func TestFlushAllocatesLittlePerAggregate(t *testing.T) {
	const n = 20_000
	f := mixFlush(t, n)
	for _, e := range encoders {
		t.Run(e.name, func(t *testing.T) {
			bytes, objects := exportAllocs(t, e.new(t), f, n)
			t.Logf("%.1f bytes and %.3f objects per context", bytes, objects)
			if bytes > e.maxBytes {
				t.Errorf("a flush allocated %.1f bytes per context, want at most %v", bytes, e.maxBytes)
			}
		})
	}
}

// BenchmarkFlushEncode reports what encoding one flush of 100k contexts of
// the mix allocates per context (B/context, allocs/context), its
// buffers grown by an earlier flush, and its time.
func BenchmarkFlushEncode(b *testing.B) {
	const n = 100_000
	f := mixFlush(b, n)
	for _, e := range encoders {
		b.Run(e.name, func(b *testing.B) {
			var bytes, objects float64
			for b.Loop() {
				bb, oo := exportAllocs(b, e.new(b), f, n)
				bytes, objects = bytes+bb, objects+oo
			}
			b.ReportMetric(bytes/float64(b.N), "B/context")
			b.ReportMetric(objects/float64(b.N), "allocs/context")
		})
	}
}

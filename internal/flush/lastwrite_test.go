package flush_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

// lastWriteIntake starts the real Datadog upstream, behind a router, into
// a test intake that keeps the last write per series and timestamp.
func lastWriteIntake(t *testing.T) (*upstreamtest.DatadogIntake, *upstream.Router) {
	t.Helper()
	intake := upstreamtest.NewDatadogIntake(t)
	dcfg := upstream.DatadogConfig{Pipeline: upstream.DefaultPipelineConfig("dd"), URL: intake.URL, APIKey: "k",
		Compression: upstream.CompressZstd, Histogram: upstream.DefaultHistogramConfig()}
	dd := upstream.NewDatadog(dcfg, &upstreamtest.Metrics{}, slog.New(slog.DiscardHandler))
	router, err := upstream.NewRouter([]upstream.Upstream{dd}, []string{"dd"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := router.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return intake, router
}

// stopIntake shuts router down, sending what it holds, and fails t if the
// intake found a payload wrong.
func stopIntake(t *testing.T, intake *upstreamtest.DatadogIntake, router *upstream.Router) {
	t.Helper()
	if err := router.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := intake.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestLastWriteIntakeHoldsTrueTotals drives late samples over several ticks
// and a tenant past its context bound over every shard through the real
// Datadog upstream into an intake that keeps the last write per series and
// timestamp: what it holds must be the true aggregate of every accepted
// sample.
func TestLastWriteIntakeHoldsTrueTotals(t *testing.T) {
	const base = int64(1_700_000_000) // unix seconds, a multiple of 10
	at := func(s int64) int64 { return (base + s) * int64(time.Second) }
	cfg := window.DefaultConfig() // interval 10s, grace 2s, max lateness 1h
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: cfg, Shards: 4})
	acme, tight := window.NewTenant("acme"), window.NewTenant("tight")
	tight.MaxContexts.Store(4)

	intake, router := lastWriteIntake(t)
	fl, err := flush.NewFlusher(agg, router, tenants{acme, tight}, flush.Config{Interval: cfg.Interval}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	ingest := func(tn *window.Tenant, now int64, ss ...window.Sample) {
		t.Helper()
		b := window.Batch{Tenant: tn, Now: now}
		for _, s := range ss {
			s.SampleRate = 1
			s.Prepare(tn, nil)
			b.Samples = append(b.Samples, s)
			b.Results = append(b.Results, window.Accepted)
		}
		agg.Ingest(&b)
		for i, r := range b.Results {
			if r != window.Accepted {
				t.Fatalf("%s at %d: %v", ss[i].Name, now, r)
			}
		}
	}
	// overflowed makes n contexts of tight's that fold past its bound.
	overflowed := func(from, n int, ts int64) []window.Sample {
		var ss []window.Sample
		for i := from; i < from+n; i++ {
			ss = append(ss, window.Sample{Name: fmt.Sprintf("o.%d", i), Type: window.TypeCount, Value: 1, Timestamp: ts})
		}
		return ss
	}

	// On time: the bucket [base, base+10) fills and is flushed at +20.
	ingest(acme, at(3),
		window.Sample{Name: "c", Type: window.TypeCount, Value: 1},
		window.Sample{Name: "c", Type: window.TypeCount, Value: 2, Timestamp: at(3)},
		window.Sample{Name: "g", Type: window.TypeGauge, Value: 5, Timestamp: at(2)},
		window.Sample{Name: "d", Type: window.TypeDistribution, Values: []float64{1, 2, 3}, Timestamp: at(1)},
		window.Sample{Name: "h", Type: window.TypeHistogram, Values: []float64{10, 20}, Timestamp: at(1)},
		window.Sample{Name: "s", Type: window.TypeSet, SetMember: "a", Timestamp: at(1)},
		window.Sample{Name: "s", Type: window.TypeSet, SetMember: "b", Timestamp: at(1)},
	)
	ingest(tight, at(3), overflowed(0, 64, at(1))...)
	fl.Flush(time.Unix(0, at(20)), false)

	// Late, flushed at +30: the gauge sample is older than the one held.
	ingest(acme, at(21),
		window.Sample{Name: "c", Type: window.TypeCount, Value: 4, Timestamp: at(5)},
		window.Sample{Name: "g", Type: window.TypeGauge, Value: 9, Timestamp: at(1)},
		window.Sample{Name: "d", Type: window.TypeDistribution, Value: 4, Timestamp: at(4)},
		window.Sample{Name: "h", Type: window.TypeHistogram, Value: 30, Timestamp: at(4)},
		window.Sample{Name: "s", Type: window.TypeSet, SetMember: "b", Timestamp: at(4)},
		window.Sample{Name: "s", Type: window.TypeSet, SetMember: "c", Timestamp: at(4)},
	)
	ingest(tight, at(21), overflowed(64, 16, at(5))...)
	fl.Flush(time.Unix(0, at(30)), false)

	// Late again, flushed at +40: this gauge sample is the newest.
	ingest(acme, at(31),
		window.Sample{Name: "c", Type: window.TypeCount, Value: 8, Timestamp: at(6)},
		window.Sample{Name: "g", Type: window.TypeGauge, Value: 7, Timestamp: at(8)},
		window.Sample{Name: "d", Type: window.TypeDistribution, Value: 5, Timestamp: at(7)},
		window.Sample{Name: "h", Type: window.TypeHistogram, Value: 40, Timestamp: at(7)},
		window.Sample{Name: "s", Type: window.TypeSet, SetMember: "d", Timestamp: at(7)},
	)
	ingest(tight, at(31), overflowed(0, 8, at(6))...)
	fl.Flush(time.Unix(0, at(40)), false)
	fl.Flush(time.Unix(0, at(50)), true)
	stopIntake(t, intake, router)

	got := map[string]float64{}
	var tightTotal float64
	for _, p := range intake.Series() {
		if p.TS != base {
			// Counters are flushed with 0 in the later intervals, as the
			// Agent does until dogstatsd_expiry_seconds.
			if p.Value != 0 || p.Type != 2 {
				t.Errorf("%s at %d: %v type %d, want only counters' zeros after %d", p.Metric, p.TS, p.Value, p.Type, base)
			}
			continue
		}
		if p.Metric == window.OverflowPrefix+"count" || strings.HasPrefix(p.Metric, "o.") {
			tightTotal += p.Held()
			continue
		}
		got[p.Metric] = p.Held()
	}
	want := map[string]float64{"c": 15, "g": 7, "s": 4, "h.count": 4, "h.max": 40, "h.avg": 25}
	for k, w := range want {
		if g, ok := got[k]; !ok || math.Abs(g-w) > 1e-9 {
			t.Errorf("intake holds %s = %v (present %v), want %v", k, g, ok, w)
		}
	}
	// Every o.* sample: 64 + 16 new contexts, and 8 again of the first.
	if tightTotal != 88 {
		t.Errorf("intake holds %v for the tenant past its bound, want 88", tightTotal)
	}
	sk := intake.Sketches()
	if len(sk) != 1 || sk[0].Cnt != 5 || sk[0].Sum != 15 || sk[0].Min != 1 || sk[0].Max != 5 {
		t.Errorf("intake holds sketches %+v, want one of count 5, sum 15, min 1, max 5", sk)
	}
}

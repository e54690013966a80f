package upstream_test

import (
	"context"
	"math"
	"testing"

	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

// exportedSeries aggregates samples into one bucket, exports them through
// a Datadog upstream and returns what the intake holds, decoded by field
// number, by metric name.
func exportedSeries(t *testing.T, mod func(*upstream.DatadogConfig), samples ...window.Sample) (map[string]upstreamtest.DDPoint, []upstreamtest.DDSketch) {
	t.Helper()
	intake := upstreamtest.NewDatadogIntake(t)
	d := newDatadog(t, intake, &upstreamtest.Metrics{}, mod)
	tn := window.NewTenant("acme")
	if err := d.Export(context.Background(), flushOf(t, map[*window.Tenant][]window.Sample{tn: samples}), routeAll(map[string]string{"acme": "k"})); err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := intake.Err(); err != nil {
		t.Fatal(err)
	}
	got := map[string]upstreamtest.DDPoint{}
	for _, p := range intake.Series() {
		got[p.Metric] = p
	}
	return got, intake.Sketches()
}

// TestAgentGoldenSeries checks each series against what the Datadog Agent's
// own function sends for the same input (the function is named in each
// case): value, series type (1 count, 2 rate, 3 gauge) and interval, read
// from the payload by field number. The bucket is 10 s wide, the Agent's
// DogStatsD interval.
func TestAgentGoldenSeries(t *testing.T) {
	type point struct {
		value    float64
		typ      int
		interval int64
	}
	vals := func(vs ...float64) []float64 { return vs }
	seq := func(n int) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = float64(i + 1)
		}
		return out
	}
	tests := []struct {
		name    string
		agent   string // the Agent's function giving the want values
		raw     bool   // RawCounts
		samples []window.Sample
		want    map[string]point
	}{
		{"counter: rate of the sum over the interval", "pkg/metrics Counter.flush (time_sampler_test: 1 → 0.1, APIRateType, interval 10)", false,
			[]window.Sample{{Name: "c", Type: window.TypeCount, Value: 1}},
			map[string]point{"c": {0.1, 2, 10}}},
		{"counter: sample rate weights the value", "pkg/metrics Counter.addSample (value × 1/rate) and Counter.flush", false,
			[]window.Sample{{Name: "c", Type: window.TypeCount, Value: 3, SampleRate: 0.5}, {Name: "c", Type: window.TypeCount, Value: 4}},
			map[string]point{"c": {1, 2, 10}}},
		{"counter with raw counts on request", "none: aggd's raw_counts option sends the sum as a count", true,
			[]window.Sample{{Name: "c", Type: window.TypeCount, Value: 7}},
			map[string]point{"c": {7, 1, 10}}},
		{"rate: last two samples, as a gauge", "pkg/metrics Rate.flush ((v − v_prev)/(t − t_prev), APIGaugeType)", false,
			[]window.Sample{{Name: "r", Type: window.TypeRate, Value: 10, Timestamp: bucket*1e9 + 1e9}, {Name: "r", Type: window.TypeRate, Value: 30, Timestamp: bucket*1e9 + 5e9}},
			map[string]point{"r": {5, 3, 10}}},
		{"monotonic count: 2, 3, 6, 7 counts 5", "pkg/metrics MonotonicCount.flush (its doc: 2, 3, 6, 7 → 5, APICountType)", false,
			[]window.Sample{{Name: "m", Type: window.TypeMonotonicCount, Values: vals(2, 3, 6, 7)}},
			map[string]point{"m": {5, 1, 10}}},
		{"monotonic count: a drop adds nothing", "pkg/metrics MonotonicCount.addSample (negative diff ignored)", false,
			[]window.Sample{{Name: "m", Type: window.TypeMonotonicCount, Values: vals(5, 8, 2, 4)}},
			map[string]point{"m": {5, 1, 10}}},
		{"set: distinct members as a gauge", "pkg/metrics Set.flush (len(values), APIGaugeType)", false,
			[]window.Sample{{Name: "s", Type: window.TypeSet, SetMember: "a"}, {Name: "s", Type: window.TypeSet, SetMember: "b"}, {Name: "s", Type: window.TypeSet, SetMember: "a"}},
			map[string]point{"s": {2, 3, 10}}},
		{"histogram: 100.5, 200.7, 300.9", "pkg/metrics Histogram.flush (median target (3−1)/2 = 1, p95 target (95·3−1)/100 = 2; count 3 ÷ 10 APIRateType)", false,
			[]window.Sample{{Name: "h", Type: window.TypeHistogram, Values: vals(300.9, 100.5, 200.7)}},
			map[string]point{"h.max": {300.9, 3, 10}, "h.median": {200.7, 3, 10}, "h.avg": {200.7, 3, 10}, "h.count": {0.3, 2, 10}, "h.95percentile": {300.9, 3, 10}}},
		{"histogram: 1…100", "pkg/metrics Histogram.flush (median target 49 → 50, p95 target 94 → 95)", false,
			[]window.Sample{{Name: "h", Type: window.TypeTiming, Values: seq(100)}},
			map[string]point{"h.max": {100, 3, 10}, "h.median": {50, 3, 10}, "h.avg": {50.5, 3, 10}, "h.count": {10, 2, 10}, "h.95percentile": {95, 3, 10}}},
		{"histogram: 1…4, even count", "pkg/metrics Histogram.flush (median target (4−1)/2 = 1 → 2)", false,
			[]window.Sample{{Name: "h", Type: window.TypeHistogram, Values: vals(4, 3, 2, 1)}},
			map[string]point{"h.max": {4, 3, 10}, "h.median": {2, 3, 10}, "h.avg": {2.5, 3, 10}, "h.count": {0.4, 2, 10}, "h.95percentile": {4, 3, 10}}},
		{"histogram at sample rate 0.3: a documented departure", "pkg/metrics Histogram.addSample weighs int64(1/0.3) = 3, so the Agent sends .count 0.3 and .avg 10; aggd weighs 1/0.3", false,
			[]window.Sample{{Name: "h", Type: window.TypeHistogram, Value: 10, SampleRate: 0.3}},
			map[string]point{"h.max": {10, 3, 10}, "h.median": {10, 3, 10}, "h.avg": {10, 3, 10}, "h.count": {1 / 0.3 / 10, 2, 10}, "h.95percentile": {10, 3, 10}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := exportedSeries(t, func(c *upstream.DatadogConfig) { c.RawCounts = tt.raw }, tt.samples...)
			if len(got) != len(tt.want) {
				t.Errorf("got series %v, want %v (%s)", keys(got), tt.want, tt.agent)
			}
			for name, w := range tt.want {
				p, ok := got[name]
				if !ok {
					t.Errorf("%s missing (%s)", name, tt.agent)
					continue
				}
				if math.Abs(p.Value-w.value) > 1e-9*math.Abs(w.value) || p.Type != w.typ || p.Interval != w.interval || p.TS != bucket {
					t.Errorf("%s = %v type %d interval %d ts %d, want %v type %d interval %d ts %d (%s)",
						name, p.Value, p.Type, p.Interval, p.TS, w.value, w.typ, w.interval, bucket, tt.agent)
				}
			}
		})
	}
}

// TestAgentGoldenResources checks that device: and dd.internal.resource:
// tags become series resources, not tags, as the Agent's serializer makes
// them (Serie.PopulateDeviceField, Serie.PopulateResources).
func TestAgentGoldenResources(t *testing.T) {
	got, _ := exportedSeries(t, nil, window.Sample{Name: "g", Type: window.TypeGauge, Value: 1, Host: "web-1",
		Tags: []string{"env:prod", "device:sda1", "dd.internal.resource:database_instance:db-1", "dd.internal.resource:bad"}})
	p := got["g"]
	if p.Host != "web-1" || p.Resources != "database_instance:db-1,device:sda1" || p.Tags != "dd.internal.resource:bad,env:prod" {
		t.Fatalf("host %q resources %q tags %q", p.Host, p.Resources, p.Tags)
	}
}

func keys(m map[string]upstreamtest.DDPoint) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// agentQuantileKey is pkg/quantile's Config.key under its Default config
// (eps 1/128, min 1e-9), restated from its definition: γ = 1 + 2·eps, bias
// = 1 − floor(log_γ(1e-9)) = 1338, key = round-to-even(log_γ v) + bias.
func agentQuantileKey(v float64) int32 {
	lnGamma := math.Log1p(2.0 / 128)
	bias := 1 - int(math.Floor(math.Log(1e-9)/lnGamma))
	return int32(int(math.RoundToEven(math.Log(v)/lnGamma)) + bias)
}

// TestAgentGoldenSketchKeys checks a distribution's sketch against the bins
// the Agent's pkg/quantile (Agent.Insert, then Sketch.insert) builds from
// the same values: one key per value by Config.key, counts summed per key,
// keys increasing. 1, 2, … 1500 spread over a few hundred keys.
func TestAgentGoldenSketchKeys(t *testing.T) {
	if k := agentQuantileKey(1); k != 1338 {
		t.Fatalf("key of 1 is %d, want 1338 (the bias of the default config)", k)
	}
	values := make([]float64, 1000)
	for i := range values {
		values[i] = float64(i+1) * 1.5
	}
	_, sk := exportedSeries(t, nil, window.Sample{Name: "d", Type: window.TypeDistribution, Values: values})
	if len(sk) != 1 {
		t.Fatalf("got %d sketches, want 1", len(sk))
	}
	want := map[int32]uint32{}
	for _, v := range values {
		want[agentQuantileKey(v)]++
	}
	got := sk[0]
	if len(got.K) != len(want) {
		t.Errorf("got %d bins, want %d", len(got.K), len(want))
	}
	moved := 0
	for i, k := range got.K {
		if i > 0 && k <= got.K[i-1] {
			t.Errorf("keys not increasing at %d: %d after %d", i, k, got.K[i-1])
		}
		if want[k] != got.N[i] {
			moved++
		}
	}
	if moved != 0 {
		t.Errorf("%d of %d bins differ from the Agent's", moved, len(got.K))
	}
	if got.Cnt != 1000 || got.Min != 1.5 || got.Max != 1500 || got.Sum != 750750 || got.Avg != 750.75 {
		t.Errorf("cnt %d min %v max %v sum %v avg %v", got.Cnt, got.Min, got.Max, got.Sum, got.Avg)
	}
}

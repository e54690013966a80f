package window

import (
	"math"
	"slices"
	"testing"
)

// agentHalfBin is γ^½ − 1, the farthest a value lies from the value of its
// Agent key, relative to it.
var agentHalfBin = math.Sqrt(1+2.0/128) - 1

func TestAgentKey(t *testing.T) {
	tests := []struct {
		v    float64
		want int16
		why  string
	}{
		{1, 1338, "the bias of pkg/quantile's default config: 1 − floor(log_γ 1e-9)"},
		{agentMinMag, 1, "the smallest tracked magnitude"},
		{agentMinMag * 0.999, 0, "below it, the zero key"},
		{0, 0, "zero"},
		{-1, -1338, "negative values take the negated key"},
		{math.MaxFloat64, 32767, "past the largest finite key, Config.key returns InfKey(1)"},
		{-math.MaxFloat64, -32767, "and InfKey(-1) for the negative side"},
	}
	for _, tt := range tests {
		if got := AgentKey(tt.v); got != tt.want {
			t.Errorf("AgentKey(%v) = %d, want %d (%s)", tt.v, got, tt.want, tt.why)
		}
	}
	for _, v := range []float64{1e-9, 1e-6, 0.5, 1, 3.3, 1000, 1e12, -7, -1e-3} {
		got := AgentKeyValue(int32(AgentKey(v)))
		if math.Abs(got-v) > math.Abs(got)*agentHalfBin*(1+1e-9) {
			t.Errorf("%v: key %d maps back to %v, beyond γ^½ − 1", v, AgentKey(v), got)
		}
	}
}

// TestAppendBinsSplitsAsTheAgent checks the layout of a count past 65535:
// pkg/quantile's appendSafe puts the remainder first, then full bins.
func TestAppendBinsSplitsAsTheAgent(t *testing.T) {
	tests := []struct {
		n    uint64
		want []AgentBin
	}{
		{1, []AgentBin{{7, 1}}},
		{65535, []AgentBin{{7, 65535}}},
		{65536, []AgentBin{{7, 1}, {7, 65535}}},
		{131070, []AgentBin{{7, 65535}, {7, 65535}}},
		{200000, []AgentBin{{7, 3395}, {7, 65535}, {7, 65535}, {7, 65535}}},
	}
	for _, tt := range tests {
		if got := appendBins(nil, 7, tt.n); !slices.Equal(got, tt.want) {
			t.Errorf("%d: got %v, want %v", tt.n, got, tt.want)
		}
	}
}

// TestExactBinsEqualTheSketch checks that the bins aggd derives from exact
// samples are those the Agent's insertion builds from the same samples, in
// arrival order and sorted, with counts past 65535 per key.
func TestExactBinsEqualTheSketch(t *testing.T) {
	var vals, wts []float64
	for i := range 1000 {
		vals = append(vals, float64((i*37)%300)+0.5)
		w := 1.0
		if i%50 == 0 {
			w = 70_000 // sample rate 1/70000
		}
		wts = append(wts, w)
	}
	var d distState
	var sc sketchScratch
	for i, v := range vals {
		d.add(v, wts[i], &sc)
	}
	if d.spilled {
		t.Fatal("1000 samples of 21 keys spilled")
	}
	var arrival agentSketch
	for i, v := range vals {
		arrival.add(AgentKey(v), uint64(wts[i]), &sc)
	}
	arrival.flush(&sc)
	d.sort(&sc)
	m := Metric{Type: TypeDistribution, Exact: d.vals, ExactWeights: d.wts}
	got, total := m.AgentBins(nil)
	if !slices.Equal(got, arrival.bins) {
		t.Fatalf("exact bins %v\nsketch bins %v", got, arrival.bins)
	}
	if want := uint64(980 + 20*70_000); total != want {
		t.Fatalf("total %d, want %d", total, want)
	}
}

// TestExactBoundSpillsBeforeTheBinLimit checks that samples heavy enough to
// fill the Agent's 4096 bins leave the exact state, whose bins could not
// collapse as the Agent's do, before they do.
func TestExactBoundSpillsBeforeTheBinLimit(t *testing.T) {
	var d distState
	var sc sketchScratch
	for i := range 300 {
		d.add(float64(i+1), 1<<20, &sc) // 17 bins each
		if !d.spilled && d.exactBins > agentBinLimit {
			t.Fatalf("%d samples kept exact need up to %.0f bins", i+1, d.exactBins)
		}
	}
	if !d.spilled {
		t.Fatal("300 samples of 17 bins each stayed exact")
	}
}

// TestPercentilesPastTheExactBound checks the drift the README states for
// histogram percentiles past MaxExactSamples: each is the value of the
// Agent key holding the sample of that rank, so within γ^½ − 1 ≈ 0.78 % of
// the exact nearest-rank percentile, while the values fill fewer than the
// 4096 bins (here 9 decades, 1330 keys).
func TestPercentilesPastTheExactBound(t *testing.T) {
	sh := NewShard(testConfig())
	tn := NewTenant("t")
	const n = 100_000
	vals := make([]float64, n)
	for i := range vals {
		vals[i] = math.Pow(10, -3+9*math.Mod(float64(i)*0.6180339887498949, 1))
	}
	for _, typ := range []MetricType{TypeHistogram, TypeDistribution} {
		add(t, sh, tn, in{name: typ.String(), typ: typ, vals: vals})
	}
	sorted := slices.Sorted(slices.Values(vals))
	seen := 0
	for _, b := range sh.Drain(t0, true, nil) {
		for m := range b.Metrics() {
			seen++
			if m.Exact != nil {
				t.Fatalf("%s: %d samples kept exact", m.Name, n)
			}
			for p := 0; p <= 100; p++ {
				q := float64(p) / 100
				want := sorted[max(int(math.Ceil(q*n))-1, 0)]
				if got := m.Quantile(q); math.Abs(got-want) > want*agentHalfBin*(1+1e-9) {
					t.Errorf("%s p%d: %v, exact %v: %.3f %% off", m.Name, p, got, want, 100*(got-want)/want)
				}
			}
		}
		b.Release()
	}
	if seen != 2 {
		t.Fatalf("%d metrics", seen)
	}
}

func TestSortKeys(t *testing.T) {
	keys := []int16{5, -3, 32767, -32767, 0, 5, 1338, -1338, 256, 255, -256, 1}
	want := slices.Sorted(slices.Values(keys))
	sortKeys(keys, nil)
	if !slices.Equal(keys, want) {
		t.Fatalf("got %v, want %v", keys, want)
	}
}

// TestHistPointPastTheBound checks that the counts of a distribution
// aggregated elsewhere (an OTLP histogram point), added in one pass past
// the exact bound, give the bins of adding them one by one.
func TestHistPointPastTheBound(t *testing.T) {
	var d distState
	var sc sketchScratch
	var one agentSketch
	for i := range 2000 {
		v := float64(i%700) + 0.5
		d.add(v, 1, &sc)
		one.add(AgentKey(v), 1, &sc)
	}
	if !d.spilled {
		t.Fatal("2000 samples stayed exact")
	}
	h := HistPoint{Count: 0}
	for i := range 300 {
		v := float64(i*13%900) + 0.25
		c := float64(1 + i%5*40_000)
		h.Values, h.Counts = append(h.Values, v), append(h.Counts, c)
		h.Count += c
		one.add(AgentKey(v), uint64(c), &sc)
	}
	h.Min, h.Max = 0.25, 899.25
	d.merge(&h, &sc)
	d.sort(&sc)
	one.flush(&sc)
	if !slices.Equal(d.sketch.bins, one.bins) {
		t.Fatalf("%d bins in one pass, %d one by one", len(d.sketch.bins), len(one.bins))
	}
}

// TestTinySampleRatesKeepTheSketchBounded checks that absurd sample rates
// (a weight of 1e300 each) neither hang insertion nor grow the sketch past
// its bound: the bins count at most maxBinned.
func TestTinySampleRatesKeepTheSketchBounded(t *testing.T) {
	var d distState
	var sc sketchScratch
	for i := range 2000 {
		d.add(float64(i%300+1), 1e300, &sc)
	}
	d.sort(&sc)
	if !d.spilled || len(d.sketch.bins) > agentBinLimit+maxBinned/agentMaxBin+1 {
		t.Fatalf("spilled %v, %d bins", d.spilled, len(d.sketch.bins))
	}
	m := Metric{Type: TypeDistribution, bins: d.sketch.bins}
	if _, total := m.AgentBins(nil); total != maxBinned {
		t.Fatalf("bins count %d, want %d", total, maxBinned)
	}
}

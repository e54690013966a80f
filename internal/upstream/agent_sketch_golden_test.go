package upstream_test

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"os"
	"slices"
	"testing"

	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

// agentSketchVector is one line of testdata/agent_sketches.jsonl: the sketch
// the Datadog Agent's pkg/quantile (default config: eps 1/128, min 1e-9,
// 4096 bins of at most 65535) built from the input its name describes,
// recorded by running that package's own code on it. Agent names the
// functions.
type agentSketchVector struct {
	Name, Agent   string
	Cnt           int64
	Sum, Min, Max float64
	K             []int32
	N             []uint32
}

// The inputs of the vectors, in arrival order.
func linearSamples(n int, step float64) []window.Sample {
	out := make([]window.Sample, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, distSample(float64(i)*step, 1))
	}
	return out
}

// decadeSamples returns values i = from … from+n−1 spread over 60 decades
// (1e-15 to 1e45) in a scrambled order, every 7th from the 4th negative:
// ±10^(−15 + 60·frac(i·φ)).
func decadeSamples(from, n int) []window.Sample {
	const phi = 0.6180339887498949
	out := make([]window.Sample, 0, n)
	for i := from; i < from+n; i++ {
		v := math.Pow(10, -15+60*math.Mod(float64(i)*phi, 1))
		if i%7 == 3 {
			v = -v
		}
		out = append(out, distSample(v, 1))
	}
	return out
}

// weightedSamples returns 1 … 600 at rate 1 and, after every 15th, one of
// 100 … 106 in turn at rate 2⁻¹⁴ (a count of 16384, so that a key's count
// passes 65535 and takes several bins).
func weightedSamples() []window.Sample {
	var out []window.Sample
	for i := 1; i <= 600; i++ {
		out = append(out, distSample(float64(i), 1))
		if i%15 == 0 {
			out = append(out, distSample(float64(100+(i/15)%7), 1.0/16384))
		}
	}
	return out
}

// heavySamples returns 1.02^i, i = 0 … 2999, at rate 2⁻¹⁷ (a count of
// 131072: three bins each), with a value i at rate 1 after every 10th: far
// more bins than the limit, so the lowest collapse with full overflow bins.
func heavySamples() []window.Sample {
	var out []window.Sample
	for i := range 3000 {
		out = append(out, distSample(math.Pow(1.02, float64(i)), 1.0/131072))
		if i%10 == 0 {
			out = append(out, distSample(float64(i), 1))
		}
	}
	return out
}

func distSample(v, rate float64) window.Sample {
	return window.Sample{Name: "d", Type: window.TypeDistribution, Value: v, SampleRate: rate}
}

func loadAgentSketchVectors(t *testing.T) map[string]*agentSketchVector {
	t.Helper()
	f, err := os.Open("testdata/agent_sketches.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]*agentSketchVector{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var v agentSketchVector
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		out[v.Name] = &v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAgentGoldenSketches sends distributions through a Datadog upstream
// and compares the sketch the intake holds, decoded by field number, with
// the one the Agent's pkg/quantile builds from the same samples in the same
// order: keys and counts bin by bin (repeated keys and the order of their
// bins included), count, sum, min and max. The inputs cross the 1024 exact
// samples aggd keeps, the Agent's 4096-bin limit (with the full overflow
// bins its collapse leaves) and the 65535 count of a bin. The merge
// vectors are late corrections: a flushed bucket's sketch merged with the
// sketch of its late samples, sent again and kept by the intake in place
// of the first.
func TestAgentGoldenSketches(t *testing.T) {
	vectors := loadAgentSketchVectors(t)
	cases := []struct {
		name         string
		onTime, late []window.Sample
	}{
		{"linear 1.5·i, i = 1…1500", linearSamples(1500, 1.5), nil},
		{"decades 0…149999", decadeSamples(0, 150_000), nil},
		{"weighted", weightedSamples(), nil},
		{"heavy", heavySamples(), nil},
		{"merge decades 0…59999 with 60000…109999", decadeSamples(0, 60_000), decadeSamples(60_000, 50_000)},
		{"merge decades 0…59999 with 200000…200699", decadeSamples(0, 60_000), decadeSamples(200_000, 700)},
	}
	if len(cases) != len(vectors) {
		t.Fatalf("%d cases for %d vectors", len(cases), len(vectors))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := vectors[tc.name]
			if want == nil {
				t.Fatalf("no vector %q", tc.name)
			}
			got := exportedSketch(t, tc.onTime, tc.late)
			if got.Cnt != want.Cnt || got.Sum != want.Sum || got.Min != want.Min || got.Max != want.Max {
				t.Errorf("cnt %d sum %v min %v max %v, want %d %v %v %v (%s)", got.Cnt, got.Sum, got.Min, got.Max, want.Cnt, want.Sum, want.Min, want.Max, want.Agent)
			}
			if len(got.K) != len(want.K) || len(got.N) != len(want.N) {
				t.Fatalf("%d keys and %d counts, want %d bins (%s)", len(got.K), len(got.N), len(want.K), want.Agent)
			}
			differ := 0
			for i := range want.K {
				if got.K[i] != want.K[i] || got.N[i] != want.N[i] {
					if differ < 5 {
						t.Errorf("bin %d: %d:%d, want %d:%d", i, got.K[i], got.N[i], want.K[i], want.N[i])
					}
					differ++
				}
			}
			if differ > 0 {
				t.Errorf("%d of %d bins differ from the Agent's (%s)", differ, len(want.K), want.Agent)
			}
		})
	}
}

// exportedSketch aggregates onTime into the bucket at bucket, flushes it
// through a Datadog upstream, then, if late is given, adds it to the same
// bucket after its flush and sends the correction to the same intake. It
// returns the one sketch the intake keeps.
func exportedSketch(t *testing.T, onTime, late []window.Sample) upstreamtest.DDSketch {
	t.Helper()
	intake := upstreamtest.NewDatadogIntake(t)
	d := newDatadog(t, intake, &upstreamtest.Metrics{}, nil)
	tn := window.NewTenant("acme")
	sh := window.NewShard(window.DefaultConfig())
	start := bucket * 1e9
	add := func(ss []window.Sample, now int64) {
		var arena []byte
		for i := range ss {
			s := ss[i]
			s.Timestamp = start + 1e9
			arena = s.Prepare(tn, arena[:0])
			if r := sh.Add(tn, &s, now); r != window.Accepted {
				t.Fatalf("add %v: %v", s.Value, r)
			}
		}
	}
	export := func(tick int64) {
		f := &window.Flush{Time: tick, Buckets: sh.Drain(tick, false, nil)}
		if err := d.Export(context.Background(), f, routeAll(map[string]string{"acme": "k"})); err != nil {
			t.Fatal(err)
		}
		for _, b := range f.Buckets {
			b.Release()
		}
	}
	add(onTime, start+2e9)
	export(start + 20e9)
	if late != nil {
		add(late, start+21e9)
		export(start + 30e9)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := intake.Err(); err != nil {
		t.Fatal(err)
	}
	sk := intake.Sketches()
	if len(sk) != 1 {
		t.Fatalf("intake holds %d sketches, want 1", len(sk))
	}
	return sk[0]
}

// TestAgentSketchOrderMatters records why aggd keeps the Agent's insertion
// order past its exact bound: the same 150,000 values sorted give other
// bins than in arrival order, because the Agent collapses its lowest bins
// as each buffer of 512 goes in.
func TestAgentSketchOrderMatters(t *testing.T) {
	want := loadAgentSketchVectors(t)["decades 0…149999"]
	ss := decadeSamples(0, 150_000)
	slices.SortFunc(ss, func(a, b window.Sample) int { return cmpFloat(a.Value, b.Value) })
	got := exportedSketch(t, ss, nil)
	if slices.Equal(got.K, want.K) && slices.Equal(got.N, want.N) {
		t.Fatal("sorted values gave the bins of the arrival order")
	}
	if got.Cnt != want.Cnt {
		t.Fatalf("cnt %d, want %d", got.Cnt, want.Cnt)
	}
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

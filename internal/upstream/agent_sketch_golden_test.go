package upstream_test

import (
	"context"
	"slices"
	"testing"

	"github.com/aggd/aggd/internal/upstream/upstreamtest"
	"github.com/aggd/aggd/internal/window"
)

// TestAgentGoldenSketches sends distributions through a Datadog upstream
// and compares the sketch the intake holds, decoded by field number, with
// the one the Agent's pkg/quantile (Agent.Insert, Agent.Finish,
// Sketch.Merge; each case names its functions) builds from the same
// samples in the same order, recorded in testdata/agent_sketches.jsonl:
// keys and counts bin by bin, count, sum, min and max. The inputs cross the
// 1024 exact samples aggd keeps, the Agent's 4096-bin limit (with the full
// overflow bins its collapse leaves) and the 65535 count of a bin. The
// merge cases are late corrections: a flushed bucket's sketch merged with
// the sketch of its late samples, sent again and kept by the intake in
// place of the first.
func TestAgentGoldenSketches(t *testing.T) {
	cases, err := upstreamtest.AgentSketchCases("testdata/agent_sketches.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			got := exportedSketch(t, c.OnTime, c.Late)
			for _, d := range c.Diff(got) {
				t.Errorf("%s (%s)", d, c.Agent)
			}
		})
	}
}

// exportedSketch aggregates onTime into the bucket at bucket, flushes it
// through a Datadog upstream, then, if late is given, adds it to the same
// bucket after its flush and sends the correction to the same intake. It
// returns the one sketch the intake keeps.
func exportedSketch(t *testing.T, onTime, late []upstreamtest.AgentSample) upstreamtest.DDSketch {
	t.Helper()
	intake := upstreamtest.NewDatadogIntake(t)
	d := newDatadog(t, intake, &upstreamtest.Metrics{}, nil)
	tn := window.NewTenant("acme")
	sh := window.NewShard(window.DefaultConfig())
	start := bucket * 1e9
	add := func(ss []upstreamtest.AgentSample, now int64) {
		var arena []byte
		for _, as := range ss {
			s := window.Sample{Name: "d", Type: window.TypeDistribution, Value: as.Value, SampleRate: as.Rate, Timestamp: start + 1e9}
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
// bins than in arrival order (at the Agent too: its collapse at 4096 bins
// leaves a full overflow bin whose key depends on what came before).
func TestAgentSketchOrderMatters(t *testing.T) {
	cases, err := upstreamtest.AgentSketchCases("testdata/agent_sketches.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(cases, func(c upstreamtest.AgentSketchCase) bool { return c.Name == "decades 0…149999" })
	c := cases[i]
	sorted := slices.SortedFunc(slices.Values(c.OnTime), func(a, b upstreamtest.AgentSample) int {
		switch {
		case a.Value < b.Value:
			return -1
		case a.Value > b.Value:
			return 1
		}
		return 0
	})
	got := exportedSketch(t, sorted, nil)
	if slices.Equal(got.K, c.K) && slices.Equal(got.N, c.N) {
		t.Fatal("sorted values gave the bins of the arrival order")
	}
	if got.Cnt != c.Cnt {
		t.Fatalf("cnt %d, want %d", got.Cnt, c.Cnt)
	}
}

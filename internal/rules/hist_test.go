package rules

import (
	"testing"

	"github.com/aggd/aggd/internal/window"
)

const momentsRule = `
[[aggregate_rules]]
name = "moments"
group_by = ["service"]
[aggregate_rules.select]
category = "metric"
metric_name = ["dur_sum", "dur_count", "dur_min", "dur_max"]
[aggregate_rules.algorithms."total"]
method = "sum"
source_field = "dur_sum"
[aggregate_rules.algorithms."n"]
method = "sum"
source_field = "dur_count"
[aggregate_rules.algorithms."lo"]
method = "min"
source_field = "dur_min"
[aggregate_rules.algorithms."hi"]
method = "max"
source_field = "dur_max"
[aggregate_rules.algorithms."points"]
method = "count"
source_field = "dur_count"

`

// histRules read an OTLP histogram's fields as DataKit's OTLP input makes
// them (cliutils otlp buildHistogramPoints: one point with fields
// <name>_min, <name>_max, <name>_count and <name>_sum, the point's exact
// moments); a rule naming the histogram itself selects no field.
const histRules = momentsRule + `
[[aggregate_rules]]
name = "regex"
[aggregate_rules.select]
category = "metric"
metric_name = ["reg:^dur_s"]
condition = "{ dur_count > 1.0 }"
[aggregate_rules.algorithms."mean_sum"]
method = "avg"
source_field = "dur_sum"

[[aggregate_rules]]
name = "plain"
[aggregate_rules.select]
category = "metric"
metric_name = ["dur"]
[aggregate_rules.algorithms."dur"]
method = "avg"
`

func histSample(count, sum, lo, hi float64) *window.Sample {
	return &window.Sample{Name: "dur", Type: window.TypeDistribution, Tags: []string{"service:api"}, Timestamp: t0 + sec,
		Hist: &window.HistPoint{Values: []float64{lo, hi}, Counts: []float64{count - 1, 1}, Count: count, Sum: sum, Min: lo, Max: hi}}
}

func TestRulesReadHistogramMoments(t *testing.T) {
	e := engine(t, histRules, 2)
	tn := window.NewTenant("t")
	for i, s := range []*window.Sample{histSample(10, 55, 1, 10), histSample(5, 100, 0.5, 40), histSample(1, 7, 7, 7)} {
		if matched, r := e.ObserveSample(i%2, tn, s, t0+sec, 0); !matched || r != window.Accepted {
			t.Fatalf("histogram %d: matched %v, %v", i, matched, r)
		}
	}
	got := drain(e)
	want := map[string]float64{
		"t/total{service:api}": 162, "t/total_count{service:api}": 3,
		"t/n{service:api}": 16, "t/n_count{service:api}": 3,
		"t/lo{service:api}": 0.5, "t/lo_count{service:api}": 3,
		"t/hi{service:api}": 40, "t/hi_count{service:api}": 3,
		"t/points{service:api}": 3, "t/points_count{service:api}": 3,
		// dur_count > 1 holds for the first two; avg of their sums.
		"t/mean_sum{}": 77.5, "t/mean_sum_count{}": 2,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %v, want %v", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v: a rule naming the histogram itself selects no field", got, want)
	}
	if n := e.Counters("plain").Matched.Load(); n != 0 {
		t.Errorf("rule naming the histogram matched %d points", n)
	}
	// Without the regular expression, whose matcher allocates under the
	// race detector.
	e = engine(t, momentsRule, 1)
	s := histSample(2, 3, 1, 2)
	e.ObserveSample(0, tn, s, t0+sec, 0)
	if n := testing.AllocsPerRun(100, func() { e.ObserveSample(0, tn, s, t0+sec, 0) }); n != 0 {
		t.Errorf("%v allocations per observed histogram", n)
	}
}

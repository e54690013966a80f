package rules

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/aggd/aggd/internal/window"
)

// namedRules hold a named rule with two window widths and one reading a
// histogram point's fields; ownerRules add a rule by regular expression.
const namedRules = momentsRule + `
[[aggregate_rules]]
name = "named"
group_by = ["svc"]
[aggregate_rules.select]
category = "metric"
metric_name = ["x"]
[aggregate_rules.algorithms."x_sum"]
method = "sum"
source_field = "x"
window = "10s"
[aggregate_rules.algorithms."x_q"]
method = "quantiles"
source_field = "x"
window = "30s"
[aggregate_rules.algorithms."x_q".quantile_opts]
percentiles = [0.5]
`

const ownerRules = namedRules + `
[[aggregate_rules]]
name = "byregex"
[aggregate_rules.select]
category = "metric"
metric_name = ["reg:^x$"]
[aggregate_rules.algorithms."x_max"]
method = "max"
source_field = "x"
`

// Engines that split the rule groups between them (SetOwner) output, each
// only for its own groups, together what one engine outputs; and the
// groups AppendGroups names for a sample are those the engines were asked
// about for it.
func TestOwnersSplitRuleGroups(t *testing.T) {
	one := engine(t, ownerRules, 1)
	split, asked := splitEngines(t, ownerRules)
	tn := window.NewTenant("default")
	var smp []*window.Sample
	for i := range 60 {
		s := sample("x", float64(i), fmt.Sprintf("svc:s%d", i%7))
		s.Timestamp = t0 + int64(i)*sec
		smp = append(smp, s)
		h := &window.Sample{Name: "dur", Type: window.TypeDistribution, Tags: []string{fmt.Sprintf("service:v%d", i%3)}, Timestamp: t0 + int64(i)*sec,
			Hist: &window.HistPoint{Values: []float64{1, 2}, Counts: []float64{1, 1}, Count: 2, Sum: float64(i), Min: 1, Max: float64(i)}}
		smp = append(smp, h)
	}
	for _, s := range smp {
		one.ObserveSample(0, tn, s, s.Timestamp, 0)
		clear(asked)
		for _, e := range split {
			if m, r := e.ObserveSample(0, tn, s, s.Timestamp, 0); !m || r != window.Accepted {
				t.Fatalf("%s: matched %v, %v", s.Name, m, r)
			}
		}
		refs := split[0].AppendGroups(nil, tn, s, s.Timestamp)
		var got []GroupRef
		for r := range asked {
			got = append(got, r)
		}
		byRef := func(a, b GroupRef) int { return cmp.Or(cmp.Compare(a.Hash, b.Hash), cmp.Compare(a.Start, b.Start)) }
		slices.SortFunc(got, byRef)
		slices.SortFunc(refs, byRef)
		if !slices.Equal(got, refs) {
			t.Fatalf("%s %v: AppendGroups %v, engines asked about %v", s.Name, s.Tags, refs, got)
		}
	}
	compareSplit(t, one, split, 40)
}

// splitEngines returns two engines of rules owning the groups of even
// and of odd hashes, and the groups they are asked about.
func splitEngines(t *testing.T, rules string) ([2]*Engine, map[GroupRef]bool) {
	var split [2]*Engine
	asked := map[GroupRef]bool{}
	for i := range split {
		split[i] = engine(t, rules, 1)
		split[i].SetOwner(func(h uint64, start int64) bool {
			asked[GroupRef{h, start}] = true
			return int(h%2) == i
		})
	}
	return split, asked
}

// compareSplit checks that the engines of split, which split the rule
// groups between them, output together what one outputs, each point once
// and at least min points.
func compareSplit(t *testing.T, one *Engine, split [2]*Engine, min int) {
	t.Helper()
	drain := func(e *Engine) map[string]float64 {
		out := map[string]float64{}
		for _, m := range e.Drain(t0+3600*sec, true, func(_ int, f func()) { f() }, nil) {
			k := fmt.Sprintf("%s{%s}@%d", m.Name, strings.Join(m.Tags, ","), m.Timestamp)
			if _, dup := out[k]; dup {
				t.Errorf("%s twice", k)
			}
			out[k] = m.Value
		}
		return out
	}
	want := drain(one)
	got := drain(split[0])
	for k, v := range drain(split[1]) {
		if _, dup := got[k]; dup {
			t.Errorf("%s output by both engines", k)
		}
		got[k] = v
	}
	if len(want) < min {
		t.Fatalf("one engine output %d points", len(want))
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: split %v (present %v), one engine %v", k, g, ok, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("split engines output %d points, one engine %d", len(got), len(want))
	}
}

// Placing a sample's rule groups, and observing a sample for the groups
// this replica owns, allocate nothing once its groups are open. (Without
// the regular expression, whose matcher allocates under the race
// detector.)
func TestOwnersAllocateNothing(t *testing.T) {
	e := engine(t, namedRules, 1)
	e.SetOwner(func(h uint64, _ int64) bool { return h%2 == 0 })
	tn := window.NewTenant("default")
	smp := []*window.Sample{sample("x", 1, "svc:a"), sample("x", 2, "svc:b"), sample("x", 3, "svc:c"),
		{Name: "dur", Type: window.TypeDistribution, Tags: []string{"service:v"}, Timestamp: t0 + sec,
			Hist: &window.HistPoint{Values: []float64{1}, Counts: []float64{1}, Count: 1, Sum: 1, Min: 1, Max: 1}}}
	var refs []GroupRef
	for _, s := range smp {
		e.ObserveSample(0, tn, s, t0+sec, 0) // opens the groups
		refs = e.AppendGroups(refs[:0], tn, s, t0+sec)
	}
	if n := testing.AllocsPerRun(100, func() {
		for _, s := range smp {
			e.ObserveSample(0, tn, s, t0+sec, 0)
			refs = e.AppendGroups(refs[:0], tn, s, t0+sec)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per round", n)
	}
}

// MaxWindow is the widest algorithm window: a member list a rule group
// was placed by is kept that much longer.
func TestMaxWindow(t *testing.T) {
	for _, tt := range []struct {
		text string
		want int64
	}{{ownerRules, 30 * sec}, {xSum20s, 20 * sec}} {
		if got := engine(t, tt.text, 1).MaxWindow(); got != tt.want {
			t.Errorf("MaxWindow %v, want %v", got, tt.want)
		}
	}
	if got := NewEngine(nil, 1, window.DefaultConfig()).MaxWindow(); got != 0 {
		t.Errorf("MaxWindow without rules %v", got)
	}
}

package window

import (
	"cmp"
	"slices"
	"testing"
)

// TestUnitWeightsAreImplicit checks that a distribution keeps no weights
// while every sample's is 1 and that, whatever the order in which weighted
// and unweighted samples come, or buckets merge, its samples, weights,
// quantiles and Agent bins are those of the weights written out.
func TestUnitWeightsAreImplicit(t *testing.T) {
	type sample struct{ v, w float64 }
	tests := []struct {
		name        string
		first, late []sample // late: merged in as a late bucket's samples
		stored      bool     // weights stored (some weight is not 1)
	}{
		{"unweighted", []sample{{3, 1}, {1, 1}, {2, 1}}, nil, false},
		{"weighted first", []sample{{3, 4}, {1, 1}, {2, 1}}, nil, true},
		{"weighted in the middle", []sample{{3, 1}, {1, 2}, {2, 1}, {5, 1}}, nil, true},
		{"weighted last", []sample{{3, 1}, {1, 1}, {2, 0.5}}, nil, true},
		{"unweighted merged into unweighted", []sample{{3, 1}, {1, 1}}, []sample{{2, 1}, {0, 1}}, false},
		{"weighted merged into unweighted", []sample{{3, 1}, {1, 1}}, []sample{{2, 10}, {0, 1}}, true},
		{"unweighted merged into weighted", []sample{{3, 3}, {1, 1}}, []sample{{2, 1}, {0, 1}}, true},
		{"weighted merged into weighted", []sample{{3, 3}, {1, 1}}, []sample{{2, 1}, {0, 0.25}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sc sketchScratch
			var d, late distState
			for _, s := range tt.first {
				d.add(s.v, s.w, &sc)
			}
			for _, s := range tt.late {
				late.add(s.v, s.w, &sc)
			}
			d.mergeDist(&late, &sc)
			d.sort(&sc)
			all := append(slices.Clone(tt.first), tt.late...)
			slices.SortStableFunc(all, func(a, b sample) int { return cmp.Compare(a.v, b.v) })
			if got := len(d.wts) != 0; got != tt.stored {
				t.Errorf("weights stored: %t, want %t", got, tt.stored)
			}
			m := Metric{Type: TypeDistribution, Exact: d.vals, ExactWeights: d.wts, Count: d.count}
			want := Metric{Type: TypeDistribution, Count: d.count}
			for _, s := range all {
				want.Exact = append(want.Exact, s.v)
				want.ExactWeights = append(want.ExactWeights, s.w)
			}
			var got, exp []sample
			m.ForEach(func(v, w float64) bool { got = append(got, sample{v, w}); return false })
			want.ForEach(func(v, w float64) bool { exp = append(exp, sample{v, w}); return false })
			if !slices.Equal(got, exp) {
				t.Errorf("samples and weights %v, want %v", got, exp)
			}
			for _, q := range []float64{0, 0.25, 0.5, 0.75, 0.99, 1} {
				if g, w := m.Quantile(q), want.Quantile(q); g != w {
					t.Errorf("quantile %v = %v, want %v", q, g, w)
				}
			}
			gb, gn := m.AgentBins(nil)
			wb, wn := want.AgentBins(nil)
			if !slices.Equal(gb, wb) || gn != wn {
				t.Errorf("Agent bins %v (%d), want %v (%d)", gb, gn, wb, wn)
			}
		})
	}
}

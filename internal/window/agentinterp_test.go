package window

import (
	"math"
	"slices"
	"testing"
)

// TestAgentInterpolate compares AgentInterpolate with the bins that
// pkg/quantile's Agent.InsertInterpolate(lo, hi, n) leaves in an empty
// Agent sketch (recorded from a transcription of it): whole shares at the
// first key of each span, what is left at the last key that took a share,
// and the infinite key clamped to the largest finite one.
func TestAgentInterpolate(t *testing.T) {
	cases := []struct {
		name   string
		lo, hi float64
		n      uint64
		k      []int16
		c      []uint64
	}{
		{"past the largest key", 1e300, 1e301, 5, []int16{32766}, []uint64{5}},
		{"negative", -3, -1, 10, []int16{-1409, -1404, -1399, -1393, -1387, -1380, -1372, -1363, -1353, -1341}, []uint64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{"one value", 0.5, 0.5, 4, []int16{1293}, []uint64{4}},
		{"from zero", 0, 2e-9, 3, []int16{0, 1, 35}, []uint64{1, 1, 1}},
		{"remainders", 2, 3, 100,
			[]int16{1383, 1384, 1385, 1386, 1387, 1388, 1389, 1390, 1391, 1392, 1393, 1394, 1395, 1396, 1397, 1398, 1399, 1400, 1401, 1402, 1403, 1404, 1405, 1406, 1407, 1408, 1409},
			[]uint64{3, 3, 3, 3, 4, 3, 4, 3, 4, 3, 4, 4, 3, 4, 4, 4, 4, 4, 4, 5, 4, 4, 5, 4, 5, 4, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var k []int16
			var c []uint64
			AgentInterpolate(tc.lo, tc.hi, tc.n, func(v float64, n uint64) {
				if math.IsInf(v, 0) || math.IsNaN(v) {
					t.Errorf("value %v", v)
				}
				k, c = append(k, AgentKey(v)), append(c, n)
			})
			if !slices.Equal(k, tc.k) || !slices.Equal(c, tc.c) {
				t.Errorf("keys %v counts %v, want %v %v", k, c, tc.k, tc.c)
			}
		})
	}
}

package upstream

import (
	"math"
	"slices"

	"github.com/aggd/aggd/internal/window"
)

// The Datadog intake reads sketches in the Agent's own bin layout, not
// sketches-go's: keys are round-to-even powers of γ = 1 + 2/128, offset so
// that the smallest tracked magnitude, 1e-9, has key 1; 0 is the zero bin,
// negative values have negated keys, and 32766 is the largest key. These
// constants are those of the Agent's pkg/quantile default configuration.
var (
	agentGammaLn = math.Log1p(2.0 / 128)
	agentBias    = 1 - int(math.Floor(math.Log(1e-9)/agentGammaLn))
	agentMinMag  = math.Exp(float64(1-agentBias) * agentGammaLn)
)

// agentMaxKey is the largest finite key; larger magnitudes take the
// infinite key, one more.
const agentMaxKey = 1<<15 - 2

// agentKey returns the Agent sketch key of v, as pkg/quantile's
// Config.key computes it.
func agentKey(v float64) int32 {
	switch {
	case v < 0:
		return -agentKey(-v)
	case v < agentMinMag:
		return 0
	}
	k := int(math.RoundToEven(math.Log(v)/agentGammaLn)) + agentBias
	if k > agentMaxKey {
		return agentMaxKey + 1
	}
	return int32(max(k, 1))
}

// AgentKeyValue returns the value the intake attributes to an Agent sketch
// key (the inverse of the key mapping, within ±0.78 %).
func AgentKeyValue(k int32) float64 {
	switch {
	case k < 0:
		return -AgentKeyValue(-k)
	case k == 0:
		return 0
	}
	return math.Exp(float64(int(k)-agentBias) * agentGammaLn)
}

type agentBin struct {
	k int32
	n float64
}

// agentBins returns the Agent-key bins of a distribution, in key order,
// reusing bins. While the distribution holds its samples (up to
// window.MaxExactSamples) each goes to its own key, so the bins are those
// the Agent's sketch builds from the same values. Past that, each
// sketches-go bin (within 1 % of its values) moves whole to the Agent key
// of its representative value (within 0.78 %), so a quantile read from the
// result is within about 1.8 % of the true one.
func agentBins(m *window.Metric, bins []agentBin) []agentBin {
	bins = bins[:0]
	m.ForEach(func(v, n float64) bool {
		bins = append(bins, agentBin{agentKey(v), n})
		return false
	})
	slices.SortFunc(bins, func(a, b agentBin) int { return int(a.k) - int(b.k) })
	out := bins[:0]
	for _, b := range bins {
		if len(out) > 0 && out[len(out)-1].k == b.k {
			out[len(out)-1].n += b.n
		} else {
			out = append(out, b)
		}
	}
	return out
}

// agentCounts rounds weighted bin counts to integers, carrying each
// bin's rounding error into the next so that the total stays the rounded
// total. It appends (key, count) pairs with non-zero counts, counts split
// at the Agent's 16-bit bin limit.
func agentCounts(bins []agentBin, ks []int32, ns []uint32) ([]int32, []uint32, int64) {
	var carry float64
	var total int64
	for _, b := range bins {
		exact := b.n + carry
		n := math.Round(exact)
		carry = exact - n
		for n > 0 {
			c := min(n, math.MaxUint16)
			ks = append(ks, b.k)
			ns = append(ns, uint32(c))
			total += int64(c)
			n -= c
		}
	}
	return ks, ns, total
}

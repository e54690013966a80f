package rules

import (
	"math"
	"strconv"

	"github.com/aggd/aggd/internal/filter"
)

// DataKit's bounds (cliutils aggregate/algo_quantiles.go,
// algo_count_distinct.go).
const (
	quantileSampleLimit     = 8192
	countDistinctExactLimit = 4096
	countDistinctSketchBits = 1 << 18
	seed1                   = uint64(0x9E3779B97F4A7C15)
)

// hashCombine is DataKit's HashCombine.
func hashCombine(seed, hash uint64) uint64 {
	return ((seed + 0x9e3779b9) ^ hash) * 0x517cc1b727220a95
}

// acc is one group's state: what its method needs of DataKit's
// calculator.
type acc struct {
	n             int64 // points added
	sum, min, max float64
	mean, m2      float64 // Welford, for stdev
	first, last   float64
	firstT, lastT int64
	hist          float64
	distinct      map[uint64]struct{}
	sketch        []uint64
	all           []float64 // the quantile reservoir
	qn            int64     // values the reservoir has seen
}

// numeric returns v as DataKit's calculators read it: integers and floats
// are numbers; strings and booleans are not.
func numeric(v filter.Value) (float64, bool) {
	switch v.Kind {
	case filter.Int:
		return float64(v.I), true
	case filter.Float:
		return v.Num, true
	}
	return 0, false
}

// add counts value v at ts, as DataKit's newCalculators and the
// calculators' Add do: a value that is not a number is skipped, except by
// count and count_distinct.
func (a *acc) add(alg *Algorithm, v filter.Value, ts int64, g *group, scratch *[]byte) {
	f, ok := numeric(v)
	if !ok && alg.Method != Count && alg.Method != CountDistinct {
		return
	}
	a.n++
	first := a.n == 1
	switch alg.Method {
	case Sum, Avg:
		a.sum += f
	case Min:
		if first || f < a.min {
			a.min = f
		}
	case Max:
		if first || f > a.max {
			a.max = f
		}
	case Stdev: // DataKit's algoStdev.Add of a one-point calculator
		if first {
			a.mean, a.m2 = f, 0
		} else {
			d := f - a.mean
			a.mean += d * 1 / float64(a.n)
			a.m2 += d * d * float64(a.n-1) * 1 / float64(a.n)
		}
	case First:
		if first || ts < a.firstT {
			a.first, a.firstT = f, ts
		}
	case Last:
		if first || ts > a.lastT {
			a.last, a.lastT = f, ts
		}
	case Histogram:
		if first {
			a.hist = f
		} else if g.hasLE {
			a.hist += f
		}
	case Quantiles:
		a.addQuantile(f)
	case CountDistinct:
		*scratch = distinctText((*scratch)[:0], v)
		a.addHash(fnv1a(*scratch))
	}
}

// merge folds o, the same group's state from another shard, into a.
func (a *acc) merge(o *acc, g *group) {
	if o.n == 0 {
		return
	}
	if a.n == 0 {
		*a = *o
		return
	}
	n := a.n + o.n
	d := o.mean - a.mean
	a.m2 += o.m2 + d*d*float64(a.n)*float64(o.n)/float64(n)
	a.mean += d * float64(o.n) / float64(n)
	a.sum += o.sum
	a.min, a.max = math.Min(a.min, o.min), math.Max(a.max, o.max)
	if o.firstT < a.firstT {
		a.first, a.firstT = o.first, o.firstT
	}
	if o.lastT > a.lastT {
		a.last, a.lastT = o.last, o.lastT
	}
	if g.hasLE {
		a.hist += o.hist
	}
	for h := range o.distinct {
		a.addHash(h)
	}
	if o.sketch != nil {
		a.ensureSketch()
		for i, w := range o.sketch {
			a.sketch[i] |= w
		}
	}
	before := a.qn
	for _, v := range o.all {
		a.addQuantile(v)
	}
	if missing := o.qn - (a.qn - before); missing > 0 {
		a.qn += missing
	}
	a.n = n
}

// addQuantile is DataKit's algoQuantiles.addValue: the first 8192 values,
// then each later one replaces a slot chosen by a fixed hash of the count.
func (a *acc) addQuantile(v float64) {
	a.qn++
	if len(a.all) < quantileSampleLimit {
		a.all = append(a.all, v)
		return
	}
	if j := hashCombine(seed1, uint64(a.qn)) % uint64(a.qn); j < quantileSampleLimit {
		a.all[j] = v
	}
}

// percentile is DataKit's percentileFromSorted at q (0 to 1): linear
// interpolation at q·(n−1), with DataKit's rounding of q through percent.
func percentile(sorted []float64, q float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	pos := (q * 100) / 100.0 * float64(n-1)
	i := int(pos)
	if i >= n-1 {
		return sorted[n-1]
	}
	return sorted[i] + (pos-float64(i))*(sorted[i+1]-sorted[i])
}

// distinctText is the text DataKit's hashDistinctValue hashes, fmt's
// "%T:%v" of the value. DataKit's selector has turned integers into
// floats by then.
func distinctText(b []byte, v filter.Value) []byte {
	switch v.Kind {
	case filter.Int:
		return strconv.AppendFloat(append(b, "float64:"...), float64(v.I), 'g', -1, 64)
	case filter.Float:
		return strconv.AppendFloat(append(b, "float64:"...), v.Num, 'g', -1, 64)
	case filter.Bool:
		return strconv.AppendBool(append(b, "bool:"...), v.Bool)
	}
	return append(append(b, "string:"...), v.Str...)
}

func fnv1a(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// addHash is DataKit's algoCountDistinct.addHash: exact up to 4096
// values, then a bitmap of 2^18 bits.
func (a *acc) addHash(h uint64) {
	if a.sketch != nil {
		a.sketch[(h%countDistinctSketchBits)/64] |= 1 << (h % 64)
		return
	}
	if a.distinct == nil {
		a.distinct = map[uint64]struct{}{}
	}
	if _, ok := a.distinct[h]; ok || len(a.distinct) < countDistinctExactLimit {
		a.distinct[h] = struct{}{}
		return
	}
	a.ensureSketch()
	a.sketch[(h%countDistinctSketchBits)/64] |= 1 << (h % 64)
}

func (a *acc) ensureSketch() {
	if a.sketch != nil {
		return
	}
	a.sketch = make([]uint64, countDistinctSketchBits/64)
	for h := range a.distinct {
		a.sketch[(h%countDistinctSketchBits)/64] |= 1 << (h % 64)
	}
	a.distinct = nil
}

// distinctCount is DataKit's algoCountDistinct.count: exact, or a linear
// counting estimate from the bitmap.
func (a *acc) distinctCount() int64 {
	if a.sketch == nil {
		return int64(len(a.distinct))
	}
	zero := 0
	for _, w := range a.sketch {
		for bit := 0; bit < 64; bit++ {
			if w&(1<<bit) == 0 {
				zero++
			}
		}
	}
	if zero == 0 {
		return countDistinctSketchBits
	}
	m := float64(countDistinctSketchBits)
	return int64(-m*math.Log(float64(zero)/m) + 0.5)
}

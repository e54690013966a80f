package window

import (
	"iter"
	"math"
	"sort"
	"sync"

	"github.com/DataDog/sketches-go/ddsketch"
)

// RelativeAccuracy is the relative accuracy of every sketch aggd keeps.
const RelativeAccuracy = 0.01

// maxSketchBins bounds a sketch's memory; past it the lowest bins collapse,
// so only the smallest quantiles lose accuracy.
const maxSketchBins = 2048

const (
	hasValue uint8 = 1 << iota
	hasPrev
	// dirty marks a slot of a kept bucket that late samples changed since
	// its last flush.
	dirty
)

// slot is the state of one context in one bucket.
type slot struct {
	ctx   *context
	v     float64 // gauge, count, rate's last value, monotonic sum
	t     int64   // gauge's and rate's timestamp
	ext   int32   // index into rates, dists or sets
	typ   MetricType
	flags uint8
}

type rateState struct {
	prevV float64
	prevT int64
}

// MaxExactSamples bounds the samples one histogram, timing or distribution
// context keeps in one bucket for exact percentiles (16 bytes each, so at
// most 16 KiB). Past it the samples move into the context's sketch, whose
// quantiles are within RelativeAccuracy.
const MaxExactSamples = 1024

// distState is the state of a histogram, timing or distribution: its exact
// moments, and its samples while they number at most MaxExactSamples, or
// the sketch they spilled into.
type distState struct {
	sketch               *ddsketch.DDSketch
	min, max, sum, count float64
	vals, wts            []float64 // samples and their weights
	spilled              bool      // the sketch holds the samples
	sorted               bool      // vals (with wts) are in increasing order
}

func (d *distState) add(v, weight float64) {
	if d.count == 0 {
		d.min, d.max = v, v
	} else {
		d.min, d.max = math.Min(d.min, v), math.Max(d.max, v)
	}
	d.sum += v * weight
	d.count += weight
	d.insert(v, weight)
}

// insert keeps sample v of weight w, exactly while there is room.
func (d *distState) insert(v, w float64) {
	if !d.spilled {
		if len(d.vals) < MaxExactSamples {
			d.vals = append(d.vals, v)
			d.wts = append(d.wts, w)
			d.sorted = false
			return
		}
		d.spill()
	}
	// The value is finite (validated) and the weight positive, which are
	// the sketch's only error cases.
	_ = d.sketch.AddWithCount(v, w)
}

// spill moves the exact samples into the sketch.
func (d *distState) spill() {
	for i, v := range d.vals {
		_ = d.sketch.AddWithCount(v, d.wts[i])
	}
	d.vals, d.wts, d.spilled = d.vals[:0], d.wts[:0], true
}

// sort orders the exact samples by value.
func (d *distState) sort() {
	if !d.spilled && !d.sorted {
		sort.Sort((*byValue)(d))
		d.sorted = true
	}
}

// byValue sorts a distState's samples with their weights.
type byValue distState

func (s *byValue) Len() int           { return len(s.vals) }
func (s *byValue) Less(i, j int) bool { return s.vals[i] < s.vals[j] }
func (s *byValue) Swap(i, j int) {
	s.vals[i], s.vals[j] = s.vals[j], s.vals[i]
	s.wts[i], s.wts[j] = s.wts[j], s.wts[i]
}

// merge adds a distribution aggregated elsewhere, keeping its exact moments.
func (d *distState) merge(h *HistPoint) {
	if !(h.Count > 0) {
		return
	}
	if d.count == 0 {
		d.min, d.max = h.Min, h.Max
	} else {
		d.min, d.max = math.Min(d.min, h.Min), math.Max(d.max, h.Max)
	}
	d.sum += h.Sum
	d.count += h.Count
	for i, v := range h.Values {
		if c := h.Counts[i]; c > 0 {
			d.insert(v, c)
		}
	}
}

// mergeDist adds o's samples to d.
func (d *distState) mergeDist(o *distState) {
	if o.count == 0 {
		return
	}
	if d.count == 0 {
		d.min, d.max = o.min, o.max
	} else {
		d.min, d.max = math.Min(d.min, o.min), math.Max(d.max, o.max)
	}
	d.sum += o.sum
	d.count += o.count
	for i, v := range o.vals {
		d.insert(v, o.wts[i])
	}
	if o.spilled {
		if !d.spilled {
			d.spill()
		}
		// Both sketches have the same mapping, the merge's only error
		// case.
		_ = d.sketch.MergeWith(o.sketch)
	}
}

// Bucket is the state of every context of one shard over one time range.
type Bucket struct {
	// Start is the bucket's start in unix nanoseconds: the timestamp of its
	// flushed points.
	Start int64
	// Width is the bucket's length in nanoseconds.
	Width int64
	// Late marks a correction: a bucket flushed before whose state late
	// samples changed. It yields only the contexts they changed, each with
	// its corrected aggregate over the whole bucket, to replace the point
	// flushed before.
	Late bool

	// stamped: a timestamped sample went in, so the bucket is kept after
	// its flush for late samples. kept: the shard owns it until no sample
	// can reach it; Release leaves it alone. base, for a bucket of late
	// samples, is the kept bucket they correct (nil if none was flushed).
	stamped, kept bool
	base          *Bucket
	nDirty        int
	drain         uint64 // the shard's Drain call that last handed it out

	index slotIndex
	slots []slot
	rates []rateState
	dists []distState
	sets  []map[string]struct{}
	// dists and sets keep their allocations across reuse; these count the
	// ones in use.
	nDists, nSets int
}

var bucketPool = sync.Pool{New: func() any {
	return new(Bucket)
}}

func getBucket(start, width int64, late bool) *Bucket {
	b := bucketPool.Get().(*Bucket)
	b.Start, b.Width, b.Late = start, width, late
	return b
}

// Len returns the number of contexts b yields at most.
func (b *Bucket) Len() int {
	if b.Late {
		return b.nDirty
	}
	return len(b.slots)
}

// Release returns b to a pool for reuse, unless its shard keeps it for late
// samples. b must not be used afterwards.
func (b *Bucket) Release() {
	if !b.kept {
		b.release()
	}
}

func (b *Bucket) release() {
	b.stamped, b.kept, b.base, b.nDirty = false, false, nil, 0
	b.index.reset()
	clear(b.slots) // drop context pointers
	b.slots = b.slots[:0]
	b.rates = b.rates[:0]
	for i := range b.dists[:b.nDists] {
		d := &b.dists[i]
		d.sketch.Clear()
		d.min, d.max, d.sum, d.count = 0, 0, 0, 0
		d.vals, d.wts, d.spilled = d.vals[:0], d.wts[:0], false
	}
	for _, m := range b.sets[:b.nSets] {
		clear(m)
	}
	b.nDists, b.nSets = 0, 0
	bucketPool.Put(b)
}

// find returns the index of c's slot in b.
func (b *Bucket) find(c *context) (int32, bool) { return b.index.find(c, b.slots) }

func (b *Bucket) newSlot(c *context, typ MetricType) int32 {
	sl := slot{ctx: c, typ: typ}
	switch typ {
	case TypeRate:
		sl.ext = int32(len(b.rates))
		b.rates = append(b.rates, rateState{})
	case TypeHistogram, TypeTiming, TypeDistribution:
		if b.nDists == len(b.dists) {
			s, _ := ddsketch.LogCollapsingLowestDenseDDSketch(RelativeAccuracy, maxSketchBins)
			b.dists = append(b.dists, distState{sketch: s})
		}
		sl.ext = int32(b.nDists)
		b.nDists++
	case TypeSet:
		if b.nSets == len(b.sets) {
			b.sets = append(b.sets, make(map[string]struct{}))
		}
		sl.ext = int32(b.nSets)
		b.nSets++
	}
	i := int32(len(b.slots))
	b.slots = append(b.slots, sl)
	b.index.add(i, b.slots)
	return i
}

// Metric is the aggregate of one context over one bucket, as flushed.
type Metric struct {
	Tenant *Tenant
	Name   string
	Host   string
	Tags   []string
	Type   MetricType
	// Timestamp is the bucket start and Interval its width, in nanoseconds.
	Timestamp int64
	Interval  int64
	// Late marks a corrected aggregate of a bucket flushed before: it
	// replaces the point flushed for the same series and timestamp.
	Late bool
	// Value is the aggregate of GAUGE (last value), COUNT and
	// MONOTONIC_COUNT (sums), RATE (per second) and SET (distinct members).
	Value float64
	// Sketch, Min, Max, Sum and Count describe HISTOGRAM, TIMING and
	// DISTRIBUTION. Count and Sum are weighted by 1/sample_rate.
	Sketch               *ddsketch.DDSketch
	Min, Max, Sum, Count float64
	// Exact, when not nil, holds every sample in increasing order, with
	// its weight in ExactWeights; Sketch is then empty. It is nil past
	// MaxExactSamples samples, which Sketch holds instead.
	Exact, ExactWeights []float64
}

// Metrics yields the aggregate of every context of b that has one. A RATE
// yields nothing without a previous sample or when negative; a
// MONOTONIC_COUNT yields nothing before its second sample ever. The Metric
// and its Tags are reused between iterations; copy what must outlive one.
func (b *Bucket) Metrics() iter.Seq[*Metric] {
	return func(yield func(*Metric) bool) {
		var m Metric
		for i := range b.slots {
			sl := &b.slots[i]
			if sl.flags&hasValue == 0 || b.Late && sl.flags&dirty == 0 {
				continue
			}
			m = Metric{Tenant: sl.ctx.tenant, Type: sl.typ, Timestamp: b.Start, Interval: b.Width, Late: b.Late, Tags: m.Tags[:0]}
			m.Name, m.Host, m.Tags = SplitKey(sl.ctx.key, m.Tags)
			switch sl.typ {
			case TypeGauge, TypeCount, TypeMonotonicCount:
				m.Value = sl.v
			case TypeRate:
				r := b.rates[sl.ext]
				dt := sl.t - r.prevT
				if sl.flags&hasPrev == 0 || dt <= 0 {
					continue
				}
				m.Value = (sl.v - r.prevV) / (float64(dt) / 1e9)
				if m.Value < 0 {
					continue
				}
			case TypeSet:
				m.Value = float64(len(b.sets[sl.ext]))
			default:
				d := &b.dists[sl.ext]
				m.Sketch, m.Min, m.Max, m.Sum, m.Count = d.sketch, d.min, d.max, d.sum, d.count
				if !d.spilled {
					m.Exact, m.ExactWeights = d.vals, d.wts
				}
			}
			if !yield(&m) {
				return
			}
		}
	}
}

// absorb adds the late samples of p, a bucket of the same range, to b,
// marking the slots they change dirty.
func (b *Bucket) absorb(p *Bucket) {
	for i := range p.slots {
		ps := &p.slots[i]
		if ps.flags&hasValue == 0 {
			continue
		}
		j, ok := b.find(ps.ctx)
		if !ok {
			j = b.newSlot(ps.ctx, ps.typ)
		}
		s := &b.slots[j]
		if s.typ != ps.typ {
			continue // refused when added; kept for safety
		}
		switch ps.typ {
		case TypeGauge:
			if s.flags&hasValue == 0 || ps.t >= s.t {
				s.v, s.t = ps.v, ps.t
			}
		case TypeCount, TypeMonotonicCount:
			s.v += ps.v
		case TypeRate:
			if s.flags&hasValue == 0 || ps.t >= s.t {
				s.v, s.t = ps.v, ps.t
				b.rates[s.ext] = p.rates[ps.ext]
				s.flags = s.flags&^hasPrev | ps.flags&hasPrev
			}
		case TypeSet:
			for m := range p.sets[ps.ext] {
				b.sets[s.ext][m] = struct{}{}
			}
		default:
			b.dists[s.ext].mergeDist(&p.dists[ps.ext])
		}
		if s.flags&dirty == 0 {
			b.nDirty++
		}
		s.flags |= hasValue | dirty
	}
}

// markDirty marks every slot with a value dirty.
func (b *Bucket) markDirty() {
	b.nDirty = 0
	for i := range b.slots {
		if b.slots[i].flags&hasValue != 0 {
			b.slots[i].flags |= dirty
			b.nDirty++
		}
	}
}

// sortExact orders the exact samples of every distribution of b, so that
// readers of the drained bucket need not write to it.
func (b *Bucket) sortExact() {
	for i := range b.dists[:b.nDists] {
		b.dists[i].sort()
	}
}

// clearDirty forgets which slots a correction changed, once flushed.
func (b *Bucket) clearDirty() {
	for i := range b.slots {
		b.slots[i].flags &^= dirty
	}
	b.nDirty = 0
}

// ForEach calls fn with every sample and its weight of a histogram, timing
// or distribution in increasing order while they are exact, else with
// every bin of its sketch (a representative value and its count), until fn
// returns true.
func (m *Metric) ForEach(fn func(v, w float64) bool) {
	if m.Exact != nil {
		for i, v := range m.Exact {
			if fn(v, m.ExactWeights[i]) {
				return
			}
		}
		return
	}
	if m.Sketch != nil {
		m.Sketch.ForEach(fn)
	}
}

// Quantile returns the nearest-rank q-quantile (0 ≤ q ≤ 1) of a histogram,
// timing or distribution: the first sample in increasing order whose
// cumulative weight exceeds ceil(q·W) − 1, W the total weight. With whole
// weights this is the Datadog Agent's rule (Histogram.flush: the first
// sample whose cumulative weight exceeds (P·W − 1) / 100 for percentile P,
// (W − 1) / 2 for the median). It is exact while the samples are (Exact);
// past MaxExactSamples it is read from the sketch, within its relative
// accuracy, and clamped to the exact minimum and maximum.
func (m *Metric) Quantile(q float64) float64 {
	if m.Exact != nil {
		if len(m.Exact) == 0 {
			return math.NaN()
		}
		// The guard keeps a product like 0.07·100 = 7.000000000000001
		// from moving up a rank.
		target := math.Max(math.Ceil(q*m.Count*(1-1e-12))-1, 0)
		var cum float64
		for i, v := range m.Exact {
			if cum += m.ExactWeights[i]; cum > target {
				return v
			}
		}
		return m.Exact[len(m.Exact)-1]
	}
	s := m.Sketch
	n := s.GetCount()
	if n == 0 {
		return math.NaN()
	}
	// Nearest rank: the ceil(q·n)-th smallest value, 0-based here. The
	// extreme ranks are known exactly.
	rank := math.Max(math.Ceil(q*n)-1, 0)
	switch {
	case rank == 0:
		return m.Min
	case rank >= n-1:
		return m.Max
	}
	neg, pos := s.GetNegativeValueStore(), s.GetPositiveValueStore()
	negCount := neg.TotalCount()
	var v float64
	switch {
	case rank < negCount:
		v = -s.Value(neg.KeyAtRank(negCount - 1 - rank))
	case rank < negCount+s.GetZeroCount():
		v = 0
	default:
		v = s.Value(pos.KeyAtRank(rank - negCount - s.GetZeroCount()))
	}
	return math.Min(math.Max(v, m.Min), m.Max)
}

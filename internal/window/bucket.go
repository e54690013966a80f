package window

import (
	"iter"
	"math"
	"slices"
	"sort"
	"sync"
)

// RelativeAccuracy is the relative accuracy at which OTLP histogram
// buckets are spread over sketch bins before they join a distribution.
const RelativeAccuracy = 0.01

const (
	hasValue uint8 = 1 << iota
	hasPrev
	// dirty marks a slot of a kept bucket that late samples changed since
	// its last flush.
	dirty
)

// slot is the state of one context in one bucket: 16 bytes, all that a
// COUNT needs. A GAUGE keeps its timestamp in Bucket.stamps and the other
// types their state in rates, dists or sets, at the slot's ext.
type slot struct {
	v   float64 // gauge, count, rate's last value, monotonic sum
	ctx uint32  // the context's ID in its shard
	// meta is ext<<8 | typ<<4 | flags: ext below 1<<24, as the bucket
	// holds at most maxShardContexts slots.
	meta uint32
}

func (sl *slot) typ() MetricType              { return MetricType(sl.meta >> 4 & 0xf) }
func (sl *slot) ext() uint32                  { return sl.meta >> 8 }
func (sl *slot) has(f uint8) bool             { return sl.meta&uint32(f) != 0 }
func (sl *slot) set(f uint8)                  { sl.meta |= uint32(f) }
func (sl *slot) unset(f uint8)                { sl.meta &^= uint32(f) }
func (sl *slot) flags() uint8                 { return uint8(sl.meta & 0xf) }
func (sl *slot) setFlags(f uint8)             { sl.meta = sl.meta&^0xf | uint32(f) }
func makeMeta(typ MetricType, ext int) uint32 { return uint32(ext)<<8 | uint32(typ)<<4 }

type rateState struct {
	prevV float64
	prevT int64
	t     int64 // the last value's timestamp
}

// MaxExactSamples bounds the samples one histogram, timing or distribution
// context keeps in one bucket for exact percentiles (16 bytes each, so at
// most 16 KiB). Past it the samples move into the context's Agent sketch
// (see agentSketch), whose quantiles are within 0.78 % of a sample's
// value.
const MaxExactSamples = 1024

// distState is the state of a histogram, timing or distribution: its exact
// moments, and its samples while they number at most MaxExactSamples, or
// the Agent sketch they spilled into.
//
// While the samples are exact, the Agent's sketch of them depends only on
// how many fall on each key, not on their order, because they never fill
// more than agentBinLimit bins: exactBins bounds the bins they may take, and
// a sample that would pass the bound spills them. The sketch of spilled
// samples is built in arrival order, as the Agent builds it.
type distState struct {
	sketch               agentSketch
	min, max, sum, count float64
	// vals are the samples; wts their weights, empty while every weight
	// is 1 (most samples have no sample rate), else as long as vals, so
	// that a sample without a rate writes one slice, not two.
	vals, wts []float64
	exactBins float64 // bound on the Agent bins vals need
	carry     float64 // rounding of fractional weights
	binned    uint64  // the count units gave the sketch
	spilled   bool    // the sketch holds the samples
	sorted    bool    // vals (with wts) are in increasing order
}

func (d *distState) add(v, weight float64, sc *sketchScratch) {
	if d.count == 0 {
		d.min, d.max = v, v
	} else {
		d.min, d.max = math.Min(d.min, v), math.Max(d.max, v)
	}
	d.sum += v * weight
	d.count += weight
	d.insert(v, weight, sc)
}

// binsFor bounds the Agent bins a sample of weight w adds: one per key,
// plus one per 65535 of its count, rounded up.
func binsFor(w float64) float64 { return 1 + (w+1)/agentMaxBin }

// insert keeps sample v of weight w, exactly while there is room.
func (d *distState) insert(v, w float64, sc *sketchScratch) {
	if !d.spilled {
		if n := binsFor(w); len(d.vals) < MaxExactSamples && d.exactBins+n <= agentBinLimit {
			if w != 1 || len(d.wts) != 0 {
				d.weigh()
				d.wts = append(d.wts, w)
			}
			d.vals = append(d.vals, v)
			d.exactBins += n
			d.sorted = false
			return
		}
		d.spill(sc)
	}
	if n := d.units(w); n > 0 {
		d.sketch.add(AgentKey(v), n, sc)
	}
}

// weigh gives d's samples their weights, 1 each, unless they have them.
func (d *distState) weigh() {
	for len(d.wts) < len(d.vals) {
		d.wts = append(d.wts, 1)
	}
}

// weight returns the weight of exact sample i.
func (d *distState) weight(i int) float64 {
	if len(d.wts) == 0 {
		return 1
	}
	return d.wts[i]
}

// units returns the whole count of weight w: w itself when whole (the
// Agent's count for sample rate 1/w), else w rounded with the rounding of
// earlier weights carried, so that the counts add up to the weights. One
// sample counts at most agentMaxUnits (the Agent's MaxCount), and the
// samples of one sketch at most maxBinned, which keeps its bins under
// agentBinLimit + maxBinned/65535 + 1 whatever the sample rates: weight
// past that is left out of the bins.
func (d *distState) units(w float64) uint64 {
	if w != math.Trunc(w) {
		x := w + d.carry
		w = math.Round(x)
		d.carry = x - w
	}
	n := uint64(min(max(w, 0), agentMaxUnits))
	n = min(n, maxBinned-min(d.binned, maxBinned))
	d.binned += n
	return n
}

// maxBinned bounds the count in one context's sketch in one bucket, which
// only sample rates can reach: 4 × 4096 × 65535, about 1.07 billion.
const maxBinned = 4 * agentMaxUnits

// spill moves the exact samples into the sketch, in their order.
func (d *distState) spill(sc *sketchScratch) {
	for i, v := range d.vals {
		if n := d.units(d.weight(i)); n > 0 {
			d.sketch.add(AgentKey(v), n, sc)
		}
	}
	d.vals, d.wts, d.spilled, d.exactBins = d.vals[:0], d.wts[:0], true, 0
}

// sort orders the exact samples by value, or flushes the sketch's buffer,
// so that readers need not write.
func (d *distState) sort(sc *sketchScratch) {
	if d.spilled {
		d.sketch.flush(sc)
		return
	}
	if !d.sorted {
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
	if len(s.wts) != 0 {
		s.wts[i], s.wts[j] = s.wts[j], s.wts[i]
	}
}

// merge adds a distribution aggregated elsewhere, keeping its exact moments.
func (d *distState) merge(h *HistPoint, sc *sketchScratch) {
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
	// Past the bound the counts go into the sketch together, sorted by
	// key, in one pass over its bins rather than one each.
	kcs := sc.kcs[:0]
	for i, v := range h.Values {
		c := h.Counts[i]
		switch {
		case !(c > 0):
		case !d.spilled:
			d.insert(v, c, sc)
		default:
			if n := d.units(c); n > 0 {
				kcs = append(kcs, keyCount{AgentKey(v), n})
			}
		}
	}
	if len(kcs) > 0 {
		slices.SortFunc(kcs, func(a, b keyCount) int { return int(a.k) - int(b.k) })
		j := 0
		for _, kc := range kcs[1:] {
			if kc.k == kcs[j].k {
				kcs[j].n += kc.n
			} else {
				j++
				kcs[j] = kc
			}
		}
		kcs = kcs[:j+1]
		d.sketch.flush(sc)
		d.sketch.insertCounts(kcs, sc)
	}
	sc.kcs = kcs[:0]
}

// mergeDist adds o's samples to d: exactly while both are exact and their
// union fits, else as the Agent's Sketch.Merge adds the flushed sketch of
// o's samples to the flushed sketch of d's.
func (d *distState) mergeDist(o *distState, sc *sketchScratch) {
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
	if !d.spilled && !o.spilled && len(d.vals)+len(o.vals) <= MaxExactSamples && d.exactBins+o.exactBins <= agentBinLimit {
		if len(d.wts) != 0 || len(o.wts) != 0 {
			d.weigh()
			for i := range o.vals {
				d.wts = append(d.wts, o.weight(i))
			}
		}
		d.vals = append(d.vals, o.vals...)
		d.exactBins += o.exactBins
		d.sorted = false
		return
	}
	if !d.spilled {
		d.spill(sc)
	}
	d.sketch.flush(sc)
	if o.spilled {
		o.sketch.flush(sc)
		d.sketch.merge(&o.sketch, sc)
		d.binned += o.binned
		return
	}
	// o's exact samples fill fewer bins than the limit, so their sketch
	// is the same in any order.
	late := &sc.late
	late.reset()
	for i, v := range o.vals {
		if n := d.units(o.weight(i)); n > 0 {
			late.add(AgentKey(v), n, sc)
		}
	}
	late.flush(sc)
	d.sketch.merge(late, sc)
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

	// store holds the contexts the slots name (their shard's); home is
	// that shard, which keeps the bucket once released (see release).
	store  *ctxStore
	home   *Shard
	index  slotIndex
	slots  []slot
	stamps []int64 // gauges' timestamps
	rates  []rateState
	dists  []distState
	sets   []map[string]struct{}
	// dists and sets keep their allocations across reuse; these count the
	// ones in use.
	nDists, nSets int
	scratch       sketchScratch
}

var bucketPool = sync.Pool{New: func() any {
	return new(Bucket)
}}

func (sh *Shard) getBucket(start, width int64, late bool) *Bucket {
	b := sh.spare.Swap(nil)
	if b == nil {
		b = bucketPool.Get().(*Bucket)
	}
	b.Start, b.Width, b.Late, b.store, b.home = start, width, late, &sh.store, sh
	return b
}

// spareSlack is the room past twice its last use that a released bucket's
// slots may have and still be its shard's spare.
const spareSlack = 4096

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

// release resets b for reuse. It becomes its shard's spare, which the
// shard's next bucket takes, unless the shard has one: a bucket made every
// interval, whose distributions' sample slices grow to hundreds of
// samples, would otherwise be made anew each time that garbage
// collections empty sync.Pool within an interval. A bucket grown far past
// its last use (by a burst) goes to the pool, so that the burst's memory
// is not held.
func (b *Bucket) release() {
	home, used := b.home, len(b.slots)
	b.stamped, b.kept, b.base, b.nDirty, b.store, b.home = false, false, nil, 0, nil, nil
	b.index.reset()
	b.slots = b.slots[:0]
	b.stamps = b.stamps[:0]
	b.rates = b.rates[:0]
	for i := range b.dists[:b.nDists] {
		d := &b.dists[i]
		d.sketch.reset()
		d.min, d.max, d.sum, d.count = 0, 0, 0, 0
		d.vals, d.wts, d.spilled, d.exactBins, d.carry, d.binned = d.vals[:0], d.wts[:0], false, 0, 0, 0
	}
	for _, m := range b.sets[:b.nSets] {
		clear(m)
	}
	b.nDists, b.nSets = 0, 0
	if home != nil && cap(b.slots) <= 2*used+spareSlack && home.spare.CompareAndSwap(nil, b) {
		return
	}
	bucketPool.Put(b)
}

// reserve makes room in b for n contexts, so that filling it does not grow
// its slots and index step by step.
func (b *Bucket) reserve(n int) {
	if n > cap(b.slots) {
		b.slots = append(make([]slot, 0, n), b.slots...)
	}
	b.index.reserve(n, b.slots)
}

// find returns the index of the slot of context id in b.
func (b *Bucket) find(id uint32) (uint32, bool) { return b.index.find(id, b.slots) }

func (b *Bucket) newSlot(id uint32, typ MetricType) uint32 {
	ext := 0
	switch typ {
	case TypeGauge:
		ext = len(b.stamps)
		b.stamps = append(b.stamps, 0)
	case TypeRate:
		ext = len(b.rates)
		b.rates = append(b.rates, rateState{})
	case TypeHistogram, TypeTiming, TypeDistribution:
		if b.nDists == len(b.dists) {
			b.dists = append(b.dists, distState{})
		}
		ext = b.nDists
		b.nDists++
	case TypeSet:
		if b.nSets == len(b.sets) {
			b.sets = append(b.sets, make(map[string]struct{}))
		}
		ext = b.nSets
		b.nSets++
	}
	sl := slot{ctx: id, meta: makeMeta(typ, ext)}
	i := uint32(len(b.slots))
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
	// Min, Max, Sum and Count describe HISTOGRAM, TIMING and
	// DISTRIBUTION. Count and Sum are weighted by 1/sample_rate.
	Min, Max, Sum, Count float64
	// Exact, when not nil, holds every sample in increasing order, with
	// its weight in ExactWeights, which is nil when every weight is 1
	// (Weight reads either). Exact is nil past MaxExactSamples samples,
	// which the Agent sketch (AgentBins) holds instead.
	Exact, ExactWeights []float64
	// bins are the Agent sketch's bins once the samples spilled into it.
	bins []AgentBin
}

// IsDist reports whether m is a HISTOGRAM, TIMING or DISTRIBUTION.
func (m *Metric) IsDist() bool { return m.Type.isDist() }

// Metrics yields the aggregate of every context of b that has one. A RATE
// yields nothing without a previous sample or when negative; a
// MONOTONIC_COUNT yields nothing before its second sample ever. The Metric
// and its Tags are reused between iterations; copy what must outlive one.
func (b *Bucket) Metrics() iter.Seq[*Metric] {
	return func(yield func(*Metric) bool) {
		if len(b.slots) == 0 {
			return
		}
		// The chunks shown when b was drained hold every context and key
		// it names, and stay until the next drain: load them once.
		dir, keys := *b.store.dir.Load(), *b.store.keys.Load()
		var m Metric
		for i := range b.slots {
			sl := &b.slots[i]
			if !sl.has(hasValue) || b.Late && !sl.has(dirty) {
				continue
			}
			c := &dir[sl.ctx>>chunkBits][sl.ctx&(chunkLen-1)]
			m = Metric{Tenant: c.tenant, Type: sl.typ(), Timestamp: b.Start, Interval: b.Width, Late: b.Late, Tags: m.Tags[:0]}
			m.Name, m.Host, m.Tags = SplitKey(keyIn(keys, c.key), m.Tags)
			switch m.Type {
			case TypeGauge, TypeCount, TypeMonotonicCount:
				m.Value = sl.v
			case TypeRate:
				r := b.rates[sl.ext()]
				dt := r.t - r.prevT
				if !sl.has(hasPrev) || dt <= 0 {
					continue
				}
				m.Value = (sl.v - r.prevV) / (float64(dt) / 1e9)
				if m.Value < 0 {
					continue
				}
			case TypeSet:
				m.Value = float64(len(b.sets[sl.ext()]))
			default:
				d := &b.dists[sl.ext()]
				m.Min, m.Max, m.Sum, m.Count = d.min, d.max, d.sum, d.count
				if d.spilled {
					m.bins = d.sketch.bins
				} else {
					m.Exact, m.ExactWeights = d.vals, nil
					if len(d.wts) != 0 {
						m.ExactWeights = d.wts
					}
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
		if !ps.has(hasValue) {
			continue
		}
		j, ok := b.find(ps.ctx)
		if !ok {
			j = b.newSlot(ps.ctx, ps.typ())
		}
		s := &b.slots[j]
		if s.typ() != ps.typ() {
			continue // refused when added; kept for safety
		}
		switch ps.typ() {
		case TypeGauge:
			if t := &b.stamps[s.ext()]; !s.has(hasValue) || p.stamps[ps.ext()] >= *t {
				s.v, *t = ps.v, p.stamps[ps.ext()]
			}
		case TypeCount, TypeMonotonicCount:
			s.v += ps.v
		case TypeRate:
			if r := &b.rates[s.ext()]; !s.has(hasValue) || p.rates[ps.ext()].t >= r.t {
				s.v, *r = ps.v, p.rates[ps.ext()]
				s.setFlags(s.flags()&^hasPrev | ps.flags()&hasPrev)
			}
		case TypeSet:
			for m := range p.sets[ps.ext()] {
				b.sets[s.ext()][m] = struct{}{}
			}
		default:
			b.dists[s.ext()].mergeDist(&p.dists[ps.ext()], &b.scratch)
		}
		if !s.has(dirty) {
			b.nDirty++
		}
		s.set(hasValue | dirty)
	}
}

// markDirty marks every slot with a value dirty.
func (b *Bucket) markDirty() {
	b.nDirty = 0
	for i := range b.slots {
		if b.slots[i].has(hasValue) {
			b.slots[i].set(dirty)
			b.nDirty++
		}
	}
}

// sortExact orders the exact samples of every distribution of b, so that
// readers of the drained bucket need not write to it. A drain leaves them
// in arrival order: sorted under the shard's lock, they held every batch
// with a sample of that shard for as long (95 ms on the development
// machine for 2,500 distributions of 500 samples, a shard's eighth of
// aggload's 100 k contexts).
func (b *Bucket) sortExact() {
	for i := range b.dists[:b.nDists] {
		b.dists[i].sort(&b.scratch)
	}
}

// clearDirty forgets which slots a correction changed, once flushed.
func (b *Bucket) clearDirty() {
	for i := range b.slots {
		b.slots[i].unset(dirty)
	}
	b.nDirty = 0
}

// Weight returns the weight of exact sample i: ExactWeights[i], or 1 when
// ExactWeights is empty.
func (m *Metric) Weight(i int) float64 {
	if len(m.ExactWeights) == 0 {
		return 1
	}
	return m.ExactWeights[i]
}

// ForEach calls fn with every sample and its weight of a histogram, timing
// or distribution in increasing order while they are exact, else with
// every bin of its Agent sketch (the value of its key and its count), until
// fn returns true.
func (m *Metric) ForEach(fn func(v, w float64) bool) {
	if m.Exact != nil {
		for i, v := range m.Exact {
			if fn(v, m.Weight(i)) {
				return
			}
		}
		return
	}
	for _, b := range m.bins {
		if fn(AgentKeyValue(int32(b.K)), float64(b.N)) {
			return
		}
	}
}

// AgentBins appends to dst the bins of the Datadog Agent's sketch
// (pkg/quantile) of a histogram, timing or distribution, by increasing key,
// and returns them with their total count. They are the bins the Agent
// builds from the same samples in the same order. Fractional weights (a
// sample rate whose inverse is not whole) are rounded, each rounding
// carried into the next, so that the counts add up to the weights; the
// Agent truncates 1/rate instead.
func (m *Metric) AgentBins(dst []AgentBin) ([]AgentBin, uint64) {
	if m.Exact == nil {
		var total uint64
		for _, b := range m.bins {
			total += uint64(b.N)
		}
		return append(dst, m.bins...), total
	}
	// The exact samples fill fewer bins than the Agent's limit (see
	// distState), so its sketch of them holds, for each key, the total of
	// its samples: the remainder past whole bins of 65535 first, then the
	// full bins.
	var carry float64
	var total uint64
	key, w := int16(0), 0.0
	put := func() {
		x := w + carry
		n := math.Round(x)
		carry = x - n
		if n > 0 {
			dst = appendBins(dst, key, uint64(n))
			total += uint64(n)
		}
	}
	for i, v := range m.Exact {
		if k := AgentKey(v); i == 0 || k != key {
			if i > 0 {
				put()
			}
			key, w = k, 0
		}
		w += m.Weight(i)
	}
	if len(m.Exact) > 0 {
		put()
	}
	return dst, total
}

// Quantile returns the nearest-rank q-quantile (0 ≤ q ≤ 1) of a histogram,
// timing or distribution: the first sample in increasing order whose
// cumulative weight exceeds ceil(q·W) − 1, W the total weight. With whole
// weights this is the Datadog Agent's rule (Histogram.flush: the first
// sample whose cumulative weight exceeds (P·W − 1) / 100 for percentile P,
// (W − 1) / 2 for the median). It is exact while the samples are (Exact);
// past MaxExactSamples it is the value of the Agent sketch key holding that
// rank, within 0.78 % of the sample's value unless the lowest bins
// collapsed, and clamped to the exact minimum and maximum.
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
			if cum += m.Weight(i); cum > target {
				return v
			}
		}
		return m.Exact[len(m.Exact)-1]
	}
	var n float64
	for _, b := range m.bins {
		n += float64(b.N)
	}
	if n == 0 {
		return math.NaN()
	}
	// The extreme ranks are known exactly.
	target := math.Max(math.Ceil(q*n*(1-1e-12))-1, 0)
	switch {
	case target == 0:
		return m.Min
	case target >= n-1:
		return m.Max
	}
	var cum float64
	for _, b := range m.bins {
		if cum += float64(b.N); cum > target {
			return math.Min(math.Max(AgentKeyValue(int32(b.K)), m.Min), m.Max)
		}
	}
	return m.Max
}

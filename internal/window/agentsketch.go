package window

import (
	"math"
	"slices"
)

// The Datadog intake reads distributions as the Agent's pkg/quantile
// sketch builds them under its default configuration, and aggd builds the
// same one: keys are round-to-even powers of γ = 1 + 2·(1/128), offset by
// a bias so that the smallest tracked magnitude (the power of γ at or
// below 1e-9) has key 1; smaller magnitudes have key 0, negative values
// the negated key of their magnitude, and magnitudes past the largest
// finite key, 32766, the infinite key 32767. A bin is a key and a count of
// at most 65535; a larger count takes several bins of the key. A sketch
// keeps at most 4096 bins: past them the lowest bins collapse into the
// next one up.
var (
	agentGammaLn = math.Log1p(2.0 / 128)
	agentBias    = 1 - int(math.Floor(math.Log(1e-9)/agentGammaLn))
	agentMinMag  = math.Exp(float64(1-agentBias) * agentGammaLn)
)

const (
	agentMaxKey   = 1<<15 - 2
	agentBinLimit = 4096
	agentMaxBin   = math.MaxUint16
	// agentBufCap is how many unweighted keys the Agent buffers before it
	// sorts them into the bins.
	agentBufCap = 512
	// agentMaxUnits is the largest count one sample adds (the Agent's
	// Config.MaxCount): a larger weight is clamped to it, so that one
	// sample never needs more bins than the limit.
	agentMaxUnits = agentBinLimit * agentMaxBin
)

// AgentKey returns the Datadog Agent sketch key of v, as pkg/quantile's
// Config.key computes it.
func AgentKey(v float64) int16 {
	switch {
	case v < 0:
		return -AgentKey(-v)
	case !(v >= agentMinMag):
		return 0
	}
	k := int(math.RoundToEven(math.Log(v)/agentGammaLn)) + agentBias
	if k > agentMaxKey {
		return agentMaxKey + 1
	}
	return int16(max(k, 1))
}

// AgentKeyValue returns the value the intake attributes to an Agent sketch
// key: γ^(k − bias), within γ^½ − 1 ≈ 0.78 % of every value of the key.
func AgentKeyValue(k int32) float64 {
	switch {
	case k < 0:
		return -AgentKeyValue(-k)
	case k == 0:
		return 0
	}
	return math.Exp(float64(int(k)-agentBias) * agentGammaLn)
}

// AgentBin is one bin of an Agent sketch: a key and its count.
type AgentBin struct {
	K int16
	N uint16
}

// appendBins appends count n of key k as the Agent's appendSafe does: one
// bin while n fits, else the remainder first and then full bins.
func appendBins(bins []AgentBin, k int16, n uint64) []AgentBin {
	if n <= agentMaxBin {
		return append(bins, AgentBin{k, uint16(n)})
	}
	if r := n % agentMaxBin; r != 0 {
		bins = append(bins, AgentBin{k, uint16(r)})
	}
	for range n / agentMaxBin {
		bins = append(bins, AgentBin{k, agentMaxBin})
	}
	return bins
}

// trimBins keeps a at most agentBinLimit bins, plus the full bins the
// collapse cannot fold, as the Agent's trimLeft does: the lowest bins are
// removed and their counts added to the lowest bin kept; each time the
// removed counts pass 65535, a full bin of the key being removed stays in
// front of the rest. over is scratch for those bins.
func trimBins(a []AgentBin, over *[]AgentBin) []AgentBin {
	if len(a) <= agentBinLimit {
		return a
	}
	remove := len(a) - agentBinLimit
	overflow := (*over)[:0]
	var missing uint64
	for i := range remove {
		missing += uint64(a[i].N)
		if missing > agentMaxBin {
			overflow = append(overflow, AgentBin{a[i].K, agentMaxBin})
			missing -= agentMaxBin
		}
	}
	kept := &a[remove]
	if next := missing + uint64(kept.N); next > agentMaxBin {
		kept.N = agentMaxBin
		overflow = appendBins(overflow, kept.K, next-agentMaxBin)
	} else {
		kept.N = uint16(next)
	}
	*over = overflow
	copy(a, overflow)
	copy(a[len(overflow):], a[remove:])
	return a[:agentBinLimit+len(overflow)]
}

// keyCount is a key and a count to add to a sketch.
type keyCount struct {
	k int16
	n uint64
}

// sketchScratch is the working space of the sketches of one bucket, which
// only its shard writes: merges build their result in tmp, and the
// correction of a kept bucket builds the late samples' sketch in late.
type sketchScratch struct {
	tmp, over []AgentBin
	kcs       []keyCount
	keys      []int16
	late      agentSketch
}

// agentSketch is the Datadog Agent's distribution sketch (pkg/quantile's
// Agent: a sparse Sketch and its insert buffer), updated the way
// Agent.Insert updates it, so that its bins are the Agent's for the same
// samples in the same order.
type agentSketch struct {
	bins []AgentBin // by increasing key
	buf  []int16    // unweighted keys not yet in bins
}

func (s *agentSketch) reset() {
	s.bins, s.buf = s.bins[:0], s.buf[:0]
}

// add inserts key k with count n, as Agent.Insert does: a sample of rate 1
// (n = 1) waits in the buffer until agentBufCap of them are sorted into the
// bins together; a weighted one goes in at once, after the buffer.
func (s *agentSketch) add(k int16, n uint64, sc *sketchScratch) {
	if n == 1 {
		if s.buf == nil {
			s.buf = make([]int16, 0, agentBufCap)
		}
		if s.buf = append(s.buf, k); len(s.buf) == agentBufCap {
			s.flush(sc)
		}
		return
	}
	s.flush(sc)
	sc.kcs = append(sc.kcs[:0], keyCount{k, n})
	s.insertCounts(sc.kcs, sc)
}

// flush sorts the buffered keys into the bins (the Agent's sparseStore
// insert).
func (s *agentSketch) flush(sc *sketchScratch) {
	if len(s.buf) == 0 {
		return
	}
	keys := s.buf
	sc.keys = sortKeys(keys, sc.keys)
	tmp := sc.tmp[:0]
	i, j := 0, 0
	for i < len(s.bins) && j < len(keys) {
		b, k := s.bins[i], keys[j]
		switch {
		case b.K < k:
			tmp = append(tmp, b)
			i++
		case b.K > k:
			n := leadingEqual(keys[j:])
			tmp = appendBins(tmp, k, uint64(n))
			j += n
		default:
			n := leadingEqual(keys[j:])
			tmp = appendBins(tmp, k, uint64(b.N)+uint64(n))
			i++
			j += n
		}
	}
	tmp = append(tmp, s.bins[i:]...)
	for j < len(keys) {
		n := leadingEqual(keys[j:])
		tmp = appendBins(tmp, keys[j], uint64(n))
		j += n
	}
	s.store(tmp, sc)
	s.buf = s.buf[:0]
}

// sortKeys sorts keys in increasing order with two counting passes over
// their bytes (the order alone matters, not how it is reached), using
// scratch, which it returns grown to len(keys).
func sortKeys(keys, scratch []int16) []int16 {
	scratch = slices.Grow(scratch[:0], len(keys))[:len(keys)]
	var lo, hi [257]int
	for _, k := range keys {
		u := uint16(k) ^ 0x8000 // in the order of k
		lo[u&0xff+1]++
		hi[u>>8+1]++
	}
	for i := 1; i < len(lo); i++ {
		lo[i] += lo[i-1]
		hi[i] += hi[i-1]
	}
	for _, k := range keys {
		u := uint16(k) ^ 0x8000
		scratch[lo[u&0xff]] = k
		lo[u&0xff]++
	}
	for _, k := range scratch {
		u := uint16(k) ^ 0x8000
		keys[hi[u>>8]] = k
		hi[u>>8]++
	}
	return scratch
}

// leadingEqual returns how many keys at the start of keys equal the first.
func leadingEqual(keys []int16) int {
	n := 1
	for n < len(keys) && keys[n] == keys[0] {
		n++
	}
	return n
}

// insertCounts adds counts sorted by key (the Agent's sparseStore
// insertCounts). A count whose key has bins joins the first of them.
func (s *agentSketch) insertCounts(kcs []keyCount, sc *sketchScratch) {
	if len(kcs) == 1 && len(s.bins) <= agentBinLimit {
		// The common case without copying: the key's first bin has room.
		kc := kcs[0]
		i, ok := slices.BinarySearchFunc(s.bins, kc.k, func(b AgentBin, k int16) int { return int(b.K) - int(k) })
		if ok && uint64(s.bins[i].N)+kc.n <= agentMaxBin {
			s.bins[i].N += uint16(kc.n)
			return
		}
	}
	tmp := sc.tmp[:0]
	i, j := 0, 0
	for i < len(s.bins) && j < len(kcs) {
		b, kc := s.bins[i], kcs[j]
		switch {
		case b.K < kc.k:
			tmp = append(tmp, b)
			i++
		case b.K > kc.k:
			tmp = appendBins(tmp, kc.k, kc.n)
			j++
		default:
			tmp = appendBins(tmp, b.K, uint64(b.N)+kc.n)
			i++
			j++
		}
	}
	tmp = append(tmp, s.bins[i:]...)
	for ; j < len(kcs); j++ {
		tmp = appendBins(tmp, kcs[j].k, kcs[j].n)
	}
	s.store(tmp, sc)
}

// merge adds the bins of o, both flushed, as the Agent's Sketch.Merge does:
// each bin of o joins the first bin of s with its key that the walk has not
// passed, or goes in as it is.
func (s *agentSketch) merge(o *agentSketch, sc *sketchScratch) {
	tmp := sc.tmp[:0]
	i := 0
	for _, ob := range o.bins {
		for i < len(s.bins) && s.bins[i].K < ob.K {
			tmp = append(tmp, s.bins[i])
			i++
		}
		if i < len(s.bins) && s.bins[i].K == ob.K {
			tmp = appendBins(tmp, ob.K, uint64(ob.N)+uint64(s.bins[i].N))
			i++
		} else {
			tmp = append(tmp, ob)
		}
	}
	tmp = append(tmp, s.bins[i:]...)
	s.store(tmp, sc)
}

// store trims the merged bins in tmp and makes them the sketch's, keeping
// tmp's allocation for the next merge.
func (s *agentSketch) store(tmp []AgentBin, sc *sketchScratch) {
	tmp = trimBins(tmp, &sc.over)
	s.bins = append(s.bins[:0], tmp...)
	sc.tmp = tmp[:0]
}

// AgentInterpolate spreads count n over [lo, hi] across the Agent sketch
// keys from AgentKey(lo) to AgentKey(hi), as pkg/quantile's
// Agent.InsertInterpolate does, and calls add with each key's value
// (AgentKeyValue, which AgentKey maps back to the key) and its count, by
// increasing key. A key takes the share of n that the width from its value
// to the next key's value is of hi − lo, truncated, and once the
// fractions of shares above 1 add up past 1 it takes one more; a share
// below 1 goes to the next key instead, and what is left to the last key
// that took a share (or the first). Infinite keys are clamped to the
// largest finite ones. lo must be at most hi.
func AgentInterpolate(lo, hi float64, n uint64, add func(v float64, n uint64)) {
	clamp := func(k int16) int32 { return int32(max(min(k, agentMaxKey), -agentMaxKey)) }
	start, end := clamp(AgentKey(lo)), clamp(AgentKey(hi))
	left := n
	dist := hi - lo
	from := start
	low := AgentKeyValue(from)
	var rem float64
	for k := start + 1; k <= end && left > 0; k++ {
		up := AgentKeyValue(k)
		f := (up - low) / dist * float64(n)
		if f > 1 {
			rem += f - math.Trunc(f)
		}
		kn := uint64(f)
		if rem > 1 {
			kn++
			rem--
		}
		if kn > 0 {
			kn = min(kn, left)
			add(low, kn)
			left -= kn
			from, low = k, up
		}
	}
	if left > 0 {
		add(AgentKeyValue(from), left)
	}
}

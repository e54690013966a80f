package service

import (
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/aggd/aggd/internal/window"
)

// deltaTracker turns cumulative OTLP streams into deltas with the rules of
// the OpenTelemetry Collector's cumulativetodelta processor
// (tracking.MetricTracker.Convert, initial_value auto). A stream is named
// by everything that identifies it in OTLP: tenant, metric name, unit and
// kind, every resource and scope attribute and the point's attributes.
// It is safe for concurrent use: streams are sharded by key, each shard
// under its own lock.
type deltaTracker struct {
	// started is when the receiver started (unix nanoseconds): a stream
	// whose start time is earlier began before aggd saw it, so its first
	// point is only a baseline.
	started uint64
	max     int // streams per shard
	shards  [deltaShards]deltaShard
	// aliases find monotonic sum streams by the encoding of their points'
	// attributes (sumRaw), sharded by that encoding's id.
	aliases [deltaShards]aliasShard
}

// aliasShard holds sum streams by the id of an encoding of their
// attributes: the encoding a client sends, as it sends it, so that a
// known stream is found without decoding the attributes. A stream has
// one alias per encoding seen (usually one); an alias of a forgotten
// stream is dropped when the shard fills.
type aliasShard struct {
	mu   sync.Mutex
	sums streamTable[sumStream]
	_    [24]byte // a cache line each
}

const deltaShards = 64

type deltaShard struct {
	mu      sync.Mutex
	streams streamTable[cumulative] // histograms and summaries
	sums    streamTable[sumStream]  // monotonic sums, the most common
	_       [8]byte                 // a cache line each
}

// streamID is a 128-bit hash of a stream's identity: two streams collide
// with a probability of about n²/2¹²⁹, nil for any real n.
type streamID [2]uint64

var deltaSeeds = [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}

func idOf(key []byte) streamID {
	return streamID{maphash.Bytes(deltaSeeds[0], key), maphash.Bytes(deltaSeeds[1], key)}
}

func newDeltaTracker(started uint64, max int) *deltaTracker {
	t := &deltaTracker{started: started, max: max / deltaShards}
	return t
}

// lock locks and returns the shard of stream id.
func (t *deltaTracker) lock(id streamID) *deltaShard {
	sh := &t.shards[id[0]%deltaShards]
	sh.mu.Lock()
	return sh
}

// streamHead is what every tracked stream keeps.
type streamHead struct {
	start uint64
	seen  uint64 // the time of the stream's latest point
}

func (h *streamHead) head() *streamHead { return h }

// sumStream is the last point of a monotonic cumulative sum, the stream
// kind most OTLP metrics are.
type sumStream struct {
	streamHead
	value float64
	// handle caches the aggregation context the stream's samples go to,
	// so that they skip the window's map probe. key and hash are the
	// context key and hash of the stream's samples once one was accepted
	// (keepKey): a stream's identity fixes its samples' name, host and
	// tags, so later points skip building them.
	handle window.Handle
	key    string
	hash   uint64
	// parts are the count and lengths of key's parts (name, host, then
	// each tag) when there are few and short enough (window.PartLengths):
	// with them a sample's views into the key are made without reading it
	// (window.SplitKeyLengths), which saves a cache miss per point. Like key, they do
	// not change once set.
	parts [keyParts + 1]uint8
	// home is the shard that holds the stream (under whose lock it
	// changes), set when it is made; dead, that the shard forgot it.
	home uint8
	dead bool
}

// cumulative is the last point of one cumulative histogram or summary
// stream.
type cumulative struct {
	streamHead
	// handle caches the context of a histogram stream's samples (see
	// sumStream).
	handle window.Handle
	value  float64 // histogram's and summary's sum
	count  uint64  // histogram's and summary's count
	counts []uint64
	bounds []float64
	exp    expPoint
}

// expPoint is an exponential histogram point's distribution.
type expPoint struct {
	scale         int32
	zeroThreshold float64
	zeroCount     uint64
	count         uint64
	sum           float64
	pos, neg      expBuckets
}

type expBuckets struct {
	offset int32
	counts []uint64
}

// deltaResult says what a cumulative point became.
type deltaResult uint8

const (
	deltaOK       deltaResult = iota // the point yields a delta
	deltaBaseline                    // a stream's first point, only a baseline (reason "initial")
	deltaReset                       // a drop: the point is the new baseline (reason "reset")
	deltaMismatch                    // histogram bounds changed: the point is the new baseline
	deltaFull                        // too many streams tracked
)

// streamTable holds streams by id, in open addressing with linear
// probing. An id is a hash already, so its bits find its slot without
// hashing again, and a slot holds the id beside its stream: one memory
// access finds a point's stream, where a map takes two or three.
type streamTable[S any] struct {
	slots []streamSlot[S] // a power of two long, at most 3/4 full
	n     int
}

type streamSlot[S any] struct {
	id streamID
	st *S // nil: the slot is free
}

// get returns the stream id, or nil.
func (t *streamTable[S]) get(id streamID) *S {
	if t.n == 0 {
		return nil
	}
	mask := uint64(len(t.slots) - 1)
	for i := id[1] & mask; ; i = (i + 1) & mask {
		sl := &t.slots[i]
		if sl.st == nil || sl.id == id {
			return sl.st
		}
	}
}

// slot returns where the table holds stream id, or nil.
func (t *streamTable[S]) slot(id streamID) **S {
	if t.n == 0 {
		return nil
	}
	mask := uint64(len(t.slots) - 1)
	for i := id[1] & mask; ; i = (i + 1) & mask {
		sl := &t.slots[i]
		if sl.st == nil {
			return nil
		}
		if sl.id == id {
			return &sl.st
		}
	}
}

// put adds stream id, which the table does not hold.
func (t *streamTable[S]) put(id streamID, st *S) {
	if (t.n+1)*4 > len(t.slots)*3 {
		t.rebuild(max(16, 2*len(t.slots)), nil)
	}
	mask := uint64(len(t.slots) - 1)
	i := id[1] & mask
	for t.slots[i].st != nil {
		i = (i + 1) & mask
	}
	t.slots[i] = streamSlot[S]{id, st}
	t.n++
}

// filter drops the streams keep refuses.
func (t *streamTable[S]) filter(keep func(*S) bool) {
	for _, sl := range t.slots {
		if sl.st != nil && !keep(sl.st) {
			t.rebuild(len(t.slots), keep)
			return
		}
	}
}

// rebuild moves the streams keep accepts (nil: all) into size slots.
func (t *streamTable[S]) rebuild(size int, keep func(*S) bool) {
	old := t.slots
	t.slots, t.n = make([]streamSlot[S], size), 0
	for _, sl := range old {
		if sl.st != nil && (keep == nil || keep(sl.st)) {
			t.put(sl.id, sl.st)
		}
	}
}

// track returns the state of stream id in m for a point starting at
// start, whether the point is the stream's first (a new start time
// starts the stream over, as the start time is part of the Collector's
// identity) and whether the stream is new. Callers hold sh.mu.
func track[S any, P interface {
	*S
	head() *streamHead
}](sh *deltaShard, m *streamTable[S], id streamID, start, ts uint64, limit int) (st P, first, made bool) {
	if st := P(m.get(id)); st != nil {
		return st, st.head().see(start, ts), false
	}
	if sh.len() >= limit {
		sh.forgetStale(ts)
	}
	if sh.len() >= limit {
		return nil, false, false
	}
	st = P(new(S))
	*st.head() = streamHead{start: start, seen: ts}
	m.put(id, (*S)(st))
	return st, true, true
}

// see records a point of the stream starting at start, at ts, and
// reports whether it starts the stream over.
func (h *streamHead) see(start, ts uint64) bool {
	h.seen = max(h.seen, ts)
	if h.start != start {
		h.start = start
		return true
	}
	return false
}

func (sh *deltaShard) len() int { return sh.streams.n + sh.sums.n }

func (sh *deltaShard) streamLocked(id streamID, start, ts uint64, limit int) (*cumulative, bool) {
	st, first, _ := track(sh, &sh.streams, id, start, ts, limit)
	return st, first
}

// StaleCumulative is how long a cumulative stream without points is
// remembered once the streams fill up: past MaxCumulativeStreams, streams
// whose latest point is older than that (by the time of the point that
// needs room) are forgotten first.
const StaleCumulative = time.Hour

// forgetStale drops the streams of sh not updated within StaleCumulative
// of ts.
func (sh *deltaShard) forgetStale(ts uint64) {
	fresh := func(h *streamHead) bool { return h.seen+uint64(StaleCumulative) >= ts }
	sh.streams.filter(func(st *cumulative) bool { return fresh(&st.streamHead) })
	sh.sums.filter(func(st *sumStream) bool {
		st.dead = !fresh(&st.streamHead)
		return !st.dead
	})
}

// initial reports whether a stream's first point counts in full: only if
// it started after aggd did and covers some time (initial_value auto).
func (t *deltaTracker) initial(start, ts uint64) deltaResult {
	if start < t.started || ts == start {
		return deltaBaseline
	}
	return deltaOK
}

// sumPoint is what a monotonic cumulative sum's point became.
type sumPoint struct {
	delta float64
	res   deltaResult
	st    *sumStream // nil when the stream is not tracked
	key   string     // st's samples' context key, "" until keepKey
	hash  uint64
}

// sum converts a monotonic cumulative sum's point v of stream id.
func (t *deltaTracker) sum(id streamID, start, ts uint64, v float64) sumPoint {
	sh := t.lock(id)
	defer sh.mu.Unlock()
	st, first, made := track(sh, &sh.sums, id, start, ts, t.max)
	if st == nil {
		return sumPoint{res: deltaFull}
	}
	if made {
		st.home = uint8(id[0] % deltaShards)
	}
	return t.sumLocked(st, first, start, ts, v)
}

// sumLocked converts point v of sum stream st; first tells whether it
// starts the stream (over). Callers hold the lock of st's home shard.
func (t *deltaTracker) sumLocked(st *sumStream, first bool, start, ts uint64, v float64) sumPoint {
	p := sumPoint{delta: v - st.value, res: deltaOK, st: st, key: st.key, hash: st.hash}
	switch {
	case first:
		p.delta, p.res = v, t.initial(start, ts)
	case v < st.value:
		p.delta, p.res = 0, deltaReset
	}
	st.value = v
	return p
}

// rawAlias is an encoding of a monotonic sum point's attributes: id is
// the id of its stream key with that encoding (pointBatch.rawStreamKey),
// st the stream it is an alias of, nil if none.
type rawAlias struct {
	id streamID
	st *sumStream
}

// lookup finds the streams of aliases all at once, grouped
// by shard: the lookups of a shard run back to back under one hold of
// its lock, so that their memory accesses overlap instead of each
// waiting for the last. groups is scratch space, returned for reuse.
func (t *deltaTracker) lookup(aliases []rawAlias, groups []int32) []int32 {
	groups = groupBy(aliases, groups, func(a *rawAlias) int { return int(a.id[0] % deltaShards) })
	eachGroup(groups, len(aliases), func(sh int, at []int32) {
		al := &t.aliases[sh]
		al.mu.Lock()
		for _, i := range at {
			aliases[i].st = al.sums.get(aliases[i].id)
		}
		al.mu.Unlock()
	})
	return groups
}

// eachGroup calls fn with each shard's indices that groupBy put in
// groups, n of them in all.
func eachGroup(groups []int32, n int, fn func(sh int, at []int32)) {
	for sh, at := 0, 0; sh < deltaShards; sh++ {
		if k := int(groups[n+sh]); k > 0 {
			fn(sh, groups[at:at+k])
			at += k
		}
	}
}

// groupBy orders the indices of aliases by group (0 to deltaShards, the
// last not read) into groups[:len(aliases)], followed by each group's
// size.
func groupBy(aliases []rawAlias, groups []int32, group func(*rawAlias) int) []int32 {
	n := len(aliases)
	groups = slices.Grow(groups[:0], n+deltaShards+1)[:n+deltaShards+1]
	count := groups[n:]
	clear(count)
	for i := range aliases {
		count[group(&aliases[i])]++
	}
	var starts [deltaShards + 1]int32
	for g := 1; g <= deltaShards; g++ {
		starts[g] = starts[g-1] + count[g-1]
	}
	for i := range aliases {
		g := group(&aliases[i])
		groups[starts[g]] = int32(i)
		starts[g]++
	}
	return groups
}

// sumRaw converts point v of the monotonic cumulative sum stream st, the
// stream an alias named (nil: none), if the stream's samples have their
// context key and it is not forgotten: else it reports false and changes
// nothing. With skip it only reports whether the stream is known so.
func (t *deltaTracker) sumRaw(st *sumStream, start, ts uint64, v float64, skip bool) (sumPoint, bool) {
	if st == nil {
		return sumPoint{}, false
	}
	sh := &t.shards[st.home]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if st.dead || st.key == "" {
		return sumPoint{}, false
	}
	if skip {
		return sumPoint{}, true
	}
	return t.sumLocked(st, st.see(start, ts), start, ts, v), true
}

// alias makes raw, the id of an encoding of the attributes of sum stream
// st's points, name st for sumRaw. A full shard first drops the aliases
// of forgotten streams, then takes no more.
func (t *deltaTracker) alias(raw streamID, st *sumStream) {
	al := &t.aliases[raw[0]%deltaShards]
	al.mu.Lock()
	defer al.mu.Unlock()
	if at := al.sums.slot(raw); at != nil {
		*at = st // the stream named so was forgotten and made again
		return
	}
	if al.sums.n >= t.max {
		al.sums.filter(func(st *sumStream) bool {
			sh := &t.shards[st.home]
			sh.mu.Lock()
			defer sh.mu.Unlock()
			return !st.dead
		})
	}
	if al.sums.n < t.max {
		al.sums.put(raw, st)
	}
}

// keepKey records the context key and hash of stream id's samples, st.
func (t *deltaTracker) keepKey(id streamID, st *sumStream, key []byte, hash uint64) {
	sh := t.lock(id)
	defer sh.mu.Unlock()
	if st.key == "" {
		st.key, st.hash = string(key), hash
		window.PartLengths(key, st.parts[:])
	}
}

// keyParts is the most parts of a context key a sum stream keeps the
// lengths of: they fill the stream's struct up to 96 bytes, a size class.
const keyParts = 21

// explicitDelta is the delta of an explicit-bucket histogram point.
type explicitDelta struct {
	counts []uint64
	count  uint64
	sum    float64
	handle *window.Handle // the stream's
}

// histogram converts a cumulative explicit-bucket histogram point; counts
// is scratch space the delta's counts may be written to.
func (t *deltaTracker) histogram(key []byte, start, ts uint64, bounds []float64, counts []uint64, count uint64, sum float64, scratch []uint64) (explicitDelta, deltaResult) {
	id := idOf(key)
	sh := t.lock(id)
	defer sh.mu.Unlock()
	st, first := sh.streamLocked(id, start, ts, t.max)
	if st == nil {
		return explicitDelta{}, deltaFull
	}
	prev, prevBounds, prevCount, prevSum := st.counts, st.bounds, st.count, st.value
	if math.IsNaN(sum) {
		sum = prevSum
	}
	keep := func() {
		st.counts = append(prev[:0], counts...)
		st.bounds = append(prevBounds[:0], bounds...)
		st.count, st.value = count, sum
	}
	full := explicitDelta{counts: counts, count: count, sum: sum, handle: &st.handle}
	switch {
	case first:
		keep()
		return full, t.initial(start, ts)
	case len(prev) != len(counts) || !slices.Equal(prevBounds, bounds):
		keep()
		return explicitDelta{}, deltaMismatch
	}
	d := explicitDelta{counts: scratch[:0], count: count - prevCount, sum: sum - prevSum, handle: &st.handle}
	reset := count < prevCount
	for i, c := range counts {
		if c < prev[i] {
			reset = true
			break
		}
		d.counts = append(d.counts, c-prev[i])
	}
	copy(st.counts, counts)
	st.count, st.value = count, sum
	if reset {
		// The Collector passes a histogram's reset on whole: the point
		// counts from zero.
		return full, deltaOK
	}
	return d, deltaOK
}

// summary converts a summary's cumulative count and sum; a drop of the
// count is a reset, as for sums.
func (t *deltaTracker) summary(key []byte, start, ts, count uint64, sum float64) (uint64, float64, deltaResult) {
	id := idOf(key)
	sh := t.lock(id)
	defer sh.mu.Unlock()
	st, first := sh.streamLocked(id, start, ts, t.max)
	switch {
	case st == nil:
		return 0, 0, deltaFull
	case first:
		st.count, st.value = count, sum
		return count, sum, t.initial(start, ts)
	}
	pc, ps := st.count, st.value
	st.count, st.value = count, sum
	if count < pc {
		return 0, 0, deltaReset
	}
	return count - pc, sum - ps, deltaOK
}

// exponential converts a cumulative exponential histogram point. A lower
// count or zero threshold, or a finer scale, is a reset; a coarser scale
// or a wider zero bucket first coarsens the previous point to match. The
// handle caches the stream's context.
func (t *deltaTracker) exponential(key []byte, start, ts uint64, p expPoint) (expPoint, *window.Handle, deltaResult) {
	id := idOf(key)
	sh := t.lock(id)
	defer sh.mu.Unlock()
	st, first := sh.streamLocked(id, start, ts, t.max)
	if st == nil {
		return expPoint{}, nil, deltaFull
	}
	h := &st.handle
	prev := st.exp
	st.exp = p.clone(expPoint{})
	if first {
		return p, h, t.initial(start, ts)
	}
	if p.count < prev.count || p.zeroThreshold < prev.zeroThreshold || p.scale > prev.scale {
		return expPoint{}, h, deltaReset
	}
	if p.zeroThreshold > prev.zeroThreshold {
		// Buckets the wider zero bucket now covers fold into it: the
		// greatest index i with 2^(i·2^-scale) < threshold.
		at := int32(math.Ceil(math.Log(p.zeroThreshold)*math.Ldexp(math.Log2E, int(prev.scale))) - 1)
		prev.zeroCount += prev.pos.trimZeros(at) + prev.neg.trimZeros(at)
	}
	if p.scale < prev.scale {
		bits := prev.scale - p.scale
		prev.pos, prev.neg = prev.pos.coarsen(bits), prev.neg.coarsen(bits)
		prev.scale = p.scale
	}
	d := p
	d.count -= prev.count
	d.sum -= prev.sum
	if p.zeroCount < prev.zeroCount {
		return expPoint{}, h, deltaReset
	}
	d.zeroCount -= prev.zeroCount
	var ok1, ok2 bool
	d.pos, ok1 = p.pos.diff(prev.pos)
	d.neg, ok2 = p.neg.diff(prev.neg)
	if !ok1 || !ok2 {
		return expPoint{}, h, deltaReset
	}
	return d, h, deltaOK
}

// clone copies p, reusing into's bucket slices.
func (p expPoint) clone(into expPoint) expPoint {
	c := p
	c.pos.counts = append(into.pos.counts[:0], p.pos.counts...)
	c.neg.counts = append(into.neg.counts[:0], p.neg.counts...)
	return c
}

// trimZeros removes the buckets at index at or below and returns their
// count.
func (b *expBuckets) trimZeros(at int32) uint64 {
	var n uint64
	for len(b.counts) > 0 && b.offset <= at {
		n += b.counts[0]
		b.counts = b.counts[1:]
		b.offset++
	}
	return n
}

// coarsen returns b at a scale bits coarser: 2^bits buckets become one.
func (b expBuckets) coarsen(bits int32) expBuckets {
	if len(b.counts) == 0 {
		return expBuckets{offset: b.offset >> bits}
	}
	out := expBuckets{offset: b.offset >> bits}
	for i, c := range b.counts {
		j := int((b.offset+int32(i))>>bits - out.offset)
		for len(out.counts) <= j {
			out.counts = append(out.counts, 0)
		}
		out.counts[j] += c
	}
	return out
}

// diff returns b - prev bucket by bucket; false when prev has counts b
// lacks (a reset).
func (b expBuckets) diff(prev expBuckets) (expBuckets, bool) {
	out := expBuckets{offset: b.offset, counts: slices.Clone(b.counts)}
	for i, c := range prev.counts {
		if c == 0 {
			continue
		}
		j := int(prev.offset) + i - int(b.offset)
		if j < 0 || j >= len(out.counts) || out.counts[j] < c {
			return expBuckets{}, false
		}
		out.counts[j] -= c
	}
	return out, true
}

package window

import (
	"hash/maphash"
	"math"
	"strings"
	"sync/atomic"
	"unsafe"
)

type bucketKey struct{ start, width int64 }

// zeroFill is a zero-fill of counters under way: the bucket of range k it
// fills, made for it if fresh, and the next entry of Shard.counters to
// examine. b is nil when none is under way.
type zeroFill struct {
	b     *Bucket
	k     bucketKey
	next  int
	fresh bool
}

// Shard holds the contexts and open buckets of one hash range of contexts.
// It is not safe for concurrent use.
type Shard struct {
	timing Timing
	ttl    int64
	maxSet int

	// chunks hold the contexts by ID (see contexts.go); store publishes
	// them to the readers of drained buckets. made is the number of IDs
	// ever taken and live the number in use; free are forgotten IDs that
	// may be taken again, and limbo those forgotten by the current drain,
	// which its buckets may still name until the next.
	chunks      []*ctxChunk
	keys        keyArena
	keysShown   int // the key chunks store shows
	store       ctxStore
	made        uint32
	live        int
	free, limbo []uint32
	index       ctxIndex
	sweep       uint32 // the ID where the expiry sweep resumes
	// lasts holds the last samples of RATE and MONOTONIC_COUNT contexts
	// (see context.last); freeLasts are its unused entries.
	lasts     []lastSample
	freeLasts []uint32
	buckets   map[bucketKey]*Bucket
	last      *Bucket // the bucket written last, a lookup cache
	watermark int64   // every bucket due at or before it has been drained
	// kept holds the flushed buckets late samples may still correct: those
	// that held a timestamped sample, for the late window; then, and for
	// those that did not, nil until max lateness has passed.
	kept   map[bucketKey]*Bucket
	drains uint64 // Drain calls, to know what the current one handed out
	// corrected are the kept buckets the last drain handed out as
	// corrections.
	corrected []*Bucket
	// fold, if set, takes the samples of a tenant past its context bound.
	fold OverflowFunc
	// counters are the COUNT contexts within their expiry, zero-filled
	// every interval; zeroed is the start of the last bucket filled.
	counters      []uint32
	counterExpiry int64
	zeroed        int64
	// filling is the zero-fill under way (see FillZeros).
	filling zeroFill
	// sizeHint is the number of contexts of the last interval bucket
	// drained: a new one is made that large at once, so that it does not
	// grow (copying its slots, placing them again in its index) under the
	// lock while batches wait.
	sizeHint int
	// resumed is the tick of the last flush an earlier process made (see
	// Resume); restoring is set while Restore adds a sample.
	resumed   int64
	restoring bool
	// firstTick is the tick of the shard's first drain. Buckets that
	// started before it may have been flushed by an earlier process (a
	// restart replaying its log): they are never zero-filled, so a zero
	// cannot replace what that process sent.
	firstTick int64
	// spare is a released bucket kept for the shard's next one, with its
	// slots, index and distributions' sample slices (see Bucket.release).
	spare atomic.Pointer[Bucket]
}

// sweepBudget bounds the contexts one Drain examines for expiry, so that a
// drain holds its shard for microseconds whatever the shard's size. A shard
// of n contexts is swept every n/sweepBudget drains.
const sweepBudget = 4096

// maxTTL bounds the TTL so that an arrival time plus it cannot overflow.
const maxTTL = 1 << 62

// NewShard returns an empty shard. cfg must be valid.
func NewShard(cfg Config) *Shard { return NewSharingShard(cfg, nil) }

// OverflowFunc takes a sample of a tenant past its context bound, arriving
// at now; restore is set for a sample Restore adds.
type OverflowFunc func(t *Tenant, s *Sample, now int64, restore bool) Reason

// NewSharingShard returns an empty shard whose samples of a tenant past
// its context bound go to fold instead of the shard's own overflow
// contexts, so that several shards share one overflow series per tenant
// and type (see AddOverflow); nil keeps them in the shard. cfg must be
// valid.
func NewSharingShard(cfg Config, fold OverflowFunc) *Shard {
	return &Shard{
		fold:    fold,
		timing:  cfg.Timing(),
		ttl:     min(int64(cfg.ContextTTL), maxTTL),
		maxSet:  cfg.MaxSetSize,
		buckets: make(map[bucketKey]*Bucket),
		kept:    make(map[bucketKey]*Bucket),

		counterExpiry: int64(cfg.CounterExpiry),
	}
}

// Contexts returns the number of live contexts.
func (sh *Shard) Contexts() int { return sh.live }

// at returns the context of ID id, which must have been made.
func (sh *Shard) at(id uint32) *context {
	return &sh.chunks[id>>chunkBits][id&(chunkLen-1)]
}

// keyOf returns the key of c, a context of the shard.
func (sh *Shard) keyOf(c *context) string { return keyIn(sh.keys.chunks, c.key) }

// find returns the ID of tenant t's context of key and hash h.
func (sh *Shard) find(t *Tenant, key []byte, h uint64) (uint32, *context, bool) {
	x := &sh.index
	if x.n == 0 {
		return 0, nil, false
	}
	mask := uint64(len(x.tab) - 1)
	i, tag := x.start(h)
	for {
		e := x.tab[i]
		if e == 0 {
			return 0, nil, false
		}
		if e&^idMask == tag {
			id := uint32(e&idMask) - 1
			if c := sh.at(id); c.tenant == t && sh.keyOf(c) == string(key) {
				return id, c, true
			}
		}
		i = (i + 1) & mask
	}
}

// remember records v at ts, of type typ, as c's last sample.
func (sh *Shard) remember(c *context, typ MetricType, v float64, ts int64) {
	if c.last == 0 {
		if n := len(sh.freeLasts); n > 0 {
			c.last = sh.freeLasts[n-1]
			sh.freeLasts = sh.freeLasts[:n-1]
		} else {
			sh.lasts = append(sh.lasts, lastSample{})
			c.last = uint32(len(sh.lasts))
		}
	}
	sh.lasts[c.last-1] = lastSample{v: v, t: ts, typ: typ}
}

// lastOf returns c's last sample, or nil before the first.
func (sh *Shard) lastOf(c *context) *lastSample {
	if c.last == 0 {
		return nil
	}
	return &sh.lasts[c.last-1]
}

// Add aggregates s, which Prepare has keyed, arriving at now (unix
// nanoseconds). It returns Accepted or why s was refused; a refused sample
// changes nothing but, possibly, a context's idle time.
func (sh *Shard) Add(t *Tenant, s *Sample, now int64) Reason { return sh.add(t, s, now, false) }

// AddOverflow aggregates s into its tenant's overflow series for s's type,
// as Add does for a tenant past its context bound.
func (sh *Shard) AddOverflow(t *Tenant, s *Sample, now int64) Reason {
	t.Overflowed.Add(1)
	return sh.add(t, s, now, true)
}

// Seed makes s, a RATE or MONOTONIC_COUNT sample aggregated elsewhere,
// the previous sample of its context, creating the context if need be,
// without aggregating it: the context's next sample here takes its delta
// from s. A cluster hands a context's previous sample this way to the
// replica that owns the context from a later bucket on. The replica
// handing over its contexts and the replicas seeding samples as they
// arrive may be read in any order, so the later sample wins: a seed older
// than the context's last sample changes nothing. At an equal timestamp,
// a seed of a sample taken as it arrived (handedOver unset) replaces the
// last sample, as a later arrival does; a hand-over's seed (handedOver
// set: read from its old owner's state, perhaps before that owner took
// the sample seeded since) does not. A sample of another type changes
// nothing. A context made by a seed counts in the tenant's Seeded, not
// its Contexts, until it takes a sample; past MaxContexts seeded contexts
// a seed of a new one is refused (tenant_limit).
func (sh *Shard) Seed(t *Tenant, s *Sample, now int64, handedOver bool) Reason {
	if !s.Type.Stateful() {
		return ReasonMalformed
	}
	ts := s.Timestamp
	if ts == 0 {
		ts = now
	} else if r := sh.timing.Admit(ts, now); r != Accepted {
		return r
	}
	v := s.Value
	if n := len(s.Values); n > 0 {
		v = s.Values[n-1]
	}
	_, c, ok := sh.find(t, s.Key, s.Hash)
	if !ok {
		// A context made by a seed is none the tenant sent here: it
		// counts in Tenant.Seeded, bounded apart by the same bound,
		// until its first sample (see context).
		if max := t.MaxContexts.Load(); max > 0 && t.Seeded.Load() >= max {
			return ReasonTenantLimit
		}
		if _, c = sh.newContext(t, s.Key, s.Hash, now, true); c == nil {
			return ReasonTenantLimit // the shard is full
		}
	}
	c.touch(now, sh.ttl)
	if l := sh.lastOf(c); l == nil || l.t < ts || l.t == ts && !handedOver {
		// A seed older than a sample the context took since (sent by
		// another replica) is no longer its previous sample.
		sh.remember(c, s.Type, v, ts)
	}
	return Accepted
}

// Last is the last sample of a RATE or MONOTONIC_COUNT context: its
// tenant, canonical key (see SplitKey), type, value and timestamp.
type Last struct {
	Tenant    *Tenant
	Key       string
	Type      MetricType
	Value     float64
	Timestamp int64
}

// LastSamples examines up to n contexts of the shard, appends to dst the
// last samples of those of type RATE or MONOTONIC_COUNT and returns it,
// with where the next call resumes. A walk starts with before = -1 and
// ends when next is 0. The shard may change between the calls of one walk
// (its lock released): the walk goes from the highest context ID to the
// lowest, and a context keeps its ID while it lives, so every context that
// lives through the walk is listed once; one created during it may not be
// (its samples arrive after the walk began).
func (sh *Shard) LastSamples(dst []Last, before, n int) ([]Last, int) {
	i := int(sh.made)
	if before >= 0 {
		i = min(i, before)
	}
	for end := max(i-n, 0); i > end; i-- {
		c := sh.at(uint32(i - 1))
		if l := sh.lastOf(c); l != nil && c.live() {
			dst = append(dst, Last{Tenant: c.tenant, Key: sh.keyOf(c), Type: l.typ, Value: l.v, Timestamp: l.t})
		}
	}
	return dst, i
}

// Resume tells the shard, before any sample, that an earlier process
// (before a restart) flushed every bucket due at or before tick: samples
// for those ranges are late. Replay then restores, with Restore, the
// buckets of those ranges that are still kept for late samples; a range
// past its late window at tick refuses late samples, since its records may
// be gone and a correction could not be exact.
func (sh *Shard) Resume(tick int64) {
	sh.resumed = max(sh.resumed, tick)
	sh.watermark = max(sh.watermark, tick)
}

// Restore adds s, of a replayed batch whose bucket the earlier process
// flushed (due at or before Resume's tick), to the kept bucket of its
// range: flushed and not sent again, so that late samples correct the true
// total. A range already past its late window is only marked flushed.
func (sh *Shard) Restore(t *Tenant, s *Sample, now int64) Reason { return sh.restore(t, s, now, false) }

// RestoreOverflow is Restore for a sample folded into its tenant's
// overflow series (see AddOverflow).
func (sh *Shard) RestoreOverflow(t *Tenant, s *Sample, now int64) Reason {
	t.Overflowed.Add(1)
	return sh.restore(t, s, now, true)
}

func (sh *Shard) restore(t *Tenant, s *Sample, now int64, folded bool) Reason {
	sh.restoring = true
	r := sh.add(t, s, now, folded)
	sh.restoring = false
	return r
}

func (sh *Shard) add(t *Tenant, s *Sample, now int64, folded bool) Reason {
	ts := s.Timestamp
	if ts == 0 {
		ts = now
	} else if r := sh.timing.Admit(ts, now); r != Accepted {
		return r
	}
	var id uint32
	var c *context
	if folded {
		id, c = sh.overflow(t, s.Type, now)
	} else {
		id, c = sh.context(t, s, now)
	}
	if c == nil {
		if sh.fold == nil || folded {
			return ReasonTenantLimit // the shard holds maxShardContexts
		}
		return sh.fold(t, s, now, sh.restoring)
	}
	start, width := sh.timing.Bucket(s.Timestamp, now)
	if sh.restoring {
		k := bucketKey{start, width}
		b := sh.restored(k)
		if b == nil {
			// Flushed, and no late sample may correct it any more; a
			// RATE's or MONOTONIC_COUNT's value is still the previous
			// sample of the context's next point.
			if s.Type == TypeRate || s.Type == TypeMonotonicCount {
				v := s.Value
				if n := len(s.Values); n > 0 {
					v = s.Values[n-1]
				}
				if l := sh.lastOf(c); l == nil || l.t <= ts {
					sh.remember(c, s.Type, v, ts)
				}
			}
			return Accepted
		}
		c.expires = max(c.expires, unixSeconds(sh.keptUntil(k), true))
		return sh.put(b, id, c, s, ts)
	}
	if s.Timestamp == 0 && sh.timing.Due(start, width) <= sh.watermark {
		// Stamped with its arrival before a tick and added after it: the
		// sample goes to the bucket open now, as if it arrived a moment
		// later, instead of correcting a flushed one.
		start, width = sh.timing.Bucket(0, sh.watermark)
	}
	b := sh.bucket(start, width, now)
	if b == nil {
		return ReasonTooOld
	}
	return sh.put(b, id, c, s, ts)
}

// put adds s, of context c of ID id, at ts to bucket b.
func (sh *Shard) put(b *Bucket, id uint32, c *context, s *Sample, ts int64) Reason {
	if b.base != nil {
		// A late sample: the bucket it corrects decides type conflicts.
		if j, ok := b.base.find(id); ok && b.base.slots[j].typ() != s.Type {
			return ReasonTypeConflict
		}
	}
	i := sh.slotOf(b, id, c, s.Type)
	sl := &b.slots[i]
	if sl.typ() != s.Type {
		return ReasonTypeConflict
	}
	if s.Timestamp != 0 {
		b.stamped = true
	}
	if s.Hist != nil && s.Type.isDist() {
		b.dists[sl.ext()].merge(s.Hist, &b.scratch)
		sl.set(hasValue)
		return Accepted
	}
	weight := 1 / s.SampleRate
	if s.Values == nil {
		return sh.update(b, sl, id, c, s, s.Value, ts, weight)
	}
	for _, v := range s.Values {
		if r := sh.update(b, sl, id, c, s, v, ts, weight); r != Accepted {
			return r
		}
	}
	return Accepted
}

// slotOf returns the index of c's slot in b, creating it. The context
// remembers the index, so that its next sample in the same bucket skips
// the bucket's map.
func (sh *Shard) slotOf(b *Bucket, id uint32, c *context, typ MetricType) uint32 {
	if j := c.slot; int(j) < len(b.slots) && b.slots[j].ctx == id {
		return j
	}
	i, ok := b.find(id)
	if !ok {
		i = b.newSlot(id, typ)
	}
	c.slot = i
	return i
}

func (sh *Shard) update(b *Bucket, sl *slot, id uint32, c *context, s *Sample, v float64, ts int64, weight float64) Reason {
	switch sl.typ() {
	case TypeGauge:
		t := &b.stamps[sl.ext()]
		if !sl.has(hasValue) || ts >= *t {
			sl.v, *t = v, ts
		}
		sl.set(hasValue)
	case TypeCount:
		sl.v += v * weight
		sl.set(hasValue)
		if sh.counterExpiry > 0 {
			from := unixSeconds(Start(ts, sh.timing.interval), false)
			if !c.counting() {
				c.zeroFrom = from
				sh.counters = append(sh.counters, id)
			}
			c.zeroFrom = min(c.zeroFrom, from)
			c.zeroUntil = max(c.zeroUntil, unixSeconds(ts+sh.counterExpiry, true))
		}
	case TypeRate:
		r := &b.rates[sl.ext()]
		if l := sh.lastOf(c); l != nil {
			r.prevV, r.prevT = l.v, l.t
			sl.set(hasPrev)
		}
		sl.v, r.t = v, ts
		sl.set(hasValue)
		sh.remember(c, TypeRate, v, ts)
	case TypeMonotonicCount:
		if l := sh.lastOf(c); l != nil {
			if d := v - l.v; d > 0 {
				sl.v += d
			}
			sl.set(hasValue)
		}
		sh.remember(c, TypeMonotonicCount, v, ts)
	case TypeHistogram, TypeTiming, TypeDistribution:
		b.dists[sl.ext()].add(v, weight, &b.scratch)
		sl.set(hasValue)
	case TypeSet:
		m := b.sets[sl.ext()]
		if _, ok := m[s.SetMember]; !ok {
			// Late members count with those of the bucket they correct.
			var held map[string]struct{}
			if b.base != nil {
				if j, ok := b.base.find(id); ok {
					held = b.base.sets[b.base.slots[j].ext()]
				}
			}
			if _, ok := held[s.SetMember]; ok {
				sl.set(hasValue) // the correction resends the same set
				return Accepted
			}
			if len(m)+len(held) >= sh.maxSet {
				return ReasonSetLimit
			}
			m[strings.Clone(s.SetMember)] = struct{}{}
		}
		sl.set(hasValue)
	}
	return Accepted
}

// context finds or creates the context of s and returns it with its ID.
// Past its tenant's bound it returns the overflow context, or nil when the
// shard folds elsewhere; nil too when the shard is full.
func (sh *Shard) context(t *Tenant, s *Sample, now int64) (uint32, *context) {
	h := s.Handle
	if h != nil && h.sh == sh && h.id < sh.made && h.hash == s.Hash {
		if c := sh.at(h.id); c.gen == h.gen && c.tenant == t {
			c.touch(now, sh.ttl)
			if c.samples != math.MaxUint32 {
				c.samples++
			}
			return h.id, c
		}
	}
	id, c, ok := sh.find(t, s.Key, s.Hash)
	if ok && c.seeded() {
		// Its first sample makes a seeded context one of the tenant's,
		// as a new one, within the bound; past it the sample folds as a
		// new context's does, and the seed stays.
		if max := t.MaxContexts.Load(); max <= 0 || t.Contexts.Load() < max {
			t.Seeded.Add(-1)
			t.Contexts.Add(1)
		} else {
			ok = false
		}
	}
	if ok {
		c.touch(now, sh.ttl)
		if c.samples != math.MaxUint32 {
			c.samples++
		}
		if h != nil {
			*h = Handle{sh: sh, id: id, gen: c.gen, hash: s.Hash}
		}
		return id, c
	}
	if max := t.MaxContexts.Load(); max > 0 && t.Contexts.Load() >= max || sh.full() || c != nil {
		// Past its bound, a tenant's new contexts fold into its overflow
		// series for the sample's type: nothing is dropped, and the
		// folding is counted.
		if sh.fold != nil {
			return 0, nil
		}
		t.Overflowed.Add(1)
		return sh.overflow(t, s.Type, now)
	}
	id, c = sh.newContext(t, s.Key, s.Hash, now, false)
	if h != nil && c != nil {
		*h = Handle{sh: sh, id: id, gen: c.gen, hash: s.Hash}
	}
	return id, c
}

// full reports whether every context ID is taken, or the key arena full.
func (sh *Shard) full() bool {
	return len(sh.free) == 0 && sh.made == maxShardContexts || len(sh.keys.chunks) == maxKeyChunks
}

// newContext makes tenant t's context of key and hash h, or returns nil
// when the shard is full. A context made by a seed (seeded) counts in
// Tenant.Seeded, others in Tenant.Contexts.
func (sh *Shard) newContext(t *Tenant, key []byte, h uint64, now int64, seeded bool) (uint32, *context) {
	off, ok := sh.keys.add(key)
	if !ok {
		return 0, nil
	}
	if chunks := sh.keys.chunks; sh.keysShown != len(chunks) {
		sh.store.keys.Store(&chunks) // the readers' copy never grows in place
		sh.keysShown = len(chunks)
	}
	var id uint32
	if n := len(sh.free); n > 0 {
		id = sh.free[n-1]
		sh.free = sh.free[:n-1]
	} else {
		if sh.made == maxShardContexts {
			sh.keys.forget(keySize(string(key)))
			return 0, nil
		}
		id = sh.made
		if id&(chunkLen-1) == 0 {
			sh.chunks = append(sh.chunks, new(ctxChunk))
			dir := sh.chunks // the readers' copy never grows in place
			sh.store.dir.Store(&dir)
		}
		sh.made++
	}
	c := sh.at(id)
	gen := c.gen
	if gen&1 != 0 {
		gen++ // was forgotten
	}
	*c = context{key: off, tenant: t, expires: unixSeconds(now+sh.ttl, true), samples: 1, gen: gen}
	sh.index.insert(h, id)
	sh.live++
	if seeded {
		c.samples = 0 // a seed is no sample of this replica's
		t.Seeded.Add(1)
	} else {
		t.Contexts.Add(1)
	}
	return id, c
}

// overflowKeys are the context keys of the overflow series, by type.
var overflowKeys = func() [numTypes]string {
	var k [numTypes]string
	for typ := range numTypes {
		k[typ] = string(AppendKey(nil, OverflowPrefix+typ.String(), "", nil))
	}
	return k
}()

// OverflowPrefix starts the names of the series a tenant's samples fold
// into past its context bound: aggd.overflow.<type>.
const OverflowPrefix = "aggd.overflow."

// overflow returns the tenant's overflow context of type typ, creating it
// even past the bound (one per type and shard at most), with its ID; nil
// when the shard is full.
func (sh *Shard) overflow(t *Tenant, typ MetricType, now int64) (uint32, *context) {
	key := overflowKeys[min(typ, numTypes-1)]
	hash := maphash.String(seed, key) ^ t.hash()
	kb := unsafe.Slice(unsafe.StringData(key), len(key))
	if id, c, ok := sh.find(t, kb, hash); ok {
		c.touch(now, sh.ttl)
		return id, c
	}
	return sh.newContext(t, kb, hash, now, false)
}

// bucket finds or opens the bucket [start, start+width). For a range
// already flushed it opens a bucket of late samples, or returns nil when
// their corrections could not be exact: the flushed bucket held no
// timestamped sample and was not kept, or its lateness has passed. now
// is the sample's arrival.
func (sh *Shard) bucket(start, width, now int64) *Bucket {
	if b := sh.last; b != nil && b.Start == start && b.Width == width {
		return b
	}
	k := bucketKey{start, width}
	b, ok := sh.buckets[k]
	if !ok {
		late := sh.timing.Due(start, width) <= sh.watermark
		var base *Bucket
		if !late && sh.kept[k] != nil {
			// Not due yet, but flushed by an earlier process's final
			// flush and restored: what comes now corrects it.
			base, late = sh.kept[k], true
		} else if late {
			var kept bool
			base, kept = sh.kept[k]
			switch {
			case kept && (base == nil || !base.stamped), sh.markedUntil(k) < sh.watermark:
				// Flushed with nothing to correct it from (a restored
				// bucket of untimed samples only), or too old.
				return nil
			case !kept && sh.keptUntil(k) < sh.resumed:
				// Flushed before a restart, past its late window then:
				// what it held is not known.
				return nil
			}
		}
		b = sh.getBucket(start, width, late)
		if !late && width == sh.timing.interval && start <= now {
			// Only the bucket open now takes the bulk of the contexts:
			// one timestamped sample ahead of it (up to MaxFuture) must
			// not make a bucket as large.
			b.reserve(sh.sizeHint)
		}
		b.base = base
		sh.buckets[k] = b
	}
	sh.last = b
	return b
}

// restored returns the kept bucket of range k that Restore fills, opening
// it, or nil when the range was past its late window at the restart.
func (sh *Shard) restored(k bucketKey) *Bucket {
	if sh.keptUntil(k) < sh.resumed {
		if _, ok := sh.kept[k]; !ok && sh.markedUntil(k) >= sh.resumed {
			sh.kept[k] = nil
		}
		return nil
	}
	b := sh.kept[k]
	if b == nil {
		b = sh.getBucket(k.start, k.width, false)
		b.kept = true
		sh.kept[k] = b
	}
	return b
}

// keptUntil returns the last tick at which a flushed bucket of range k is
// kept for late samples.
func (sh *Shard) keptUntil(k bucketKey) int64 { return sh.timing.KeptUntil(k.start, k.width) }

// markedUntil returns the last tick at which a sample may still reach range
// k: until then the shard remembers whether it flushed the range.
func (sh *Shard) markedUntil(k bucketKey) int64 {
	return sh.timing.Due(k.start, k.width) + sh.timing.maxLate
}

// Drain removes and appends to out every bucket due at tick: those whose end
// plus grace is at or before tick, or all of them when final is set (the final
// flush).
//
// A flushed bucket that held a timestamped sample is kept until
// max-lateness has passed. Late samples for it go into a bucket of their
// own; the drain after they arrive adds them to the kept bucket and hands
// it out again as a correction (Late): the contexts they changed, with
// their corrected aggregates over the whole bucket, to replace what was
// flushed. A bucket is handed out as a correction until the next Drain.
// The next Drain (or BeginDrain) must not start before the readers of
// every bucket this one handed out are done: it takes again the IDs of
// the contexts this one forgot, and may move the keys of the others.
//
// Drain also forgets contexts idle for longer than the context TTL, a
// bounded number per call.
func (sh *Shard) Drain(tick int64, final bool, out []*Bucket) []*Bucket {
	start := len(out)
	out = sh.BeginDrain(tick, final, out)
	for done := false; !done; {
		out, done = sh.FillZeros(math.MaxInt, out)
	}
	for _, b := range out[start:] {
		b.sortExact()
	}
	return out
}

// BeginDrain is Drain but for the zero-fill of counters (see FillZeros),
// which it only begins: its cost grows with the shard's counters, so a
// caller holding a lock around the shard calls FillZeros in steps and lets
// samples in between. The drain is done once FillZeros reports it done;
// its buckets may be read once they are sorted too (Flush.SortExact),
// which needs no lock: the shard no longer writes to them. A drain begun
// while one is still filling finishes that fill first, into out.
func (sh *Shard) BeginDrain(tick int64, final bool, out []*Bucket) []*Bucket {
	for done := false; !done; {
		out, done = sh.FillZeros(math.MaxInt, out)
	}
	sh.drains++
	// The buckets the last drain handed out are read: the IDs it forgot
	// may be taken again.
	sh.free = append(sh.free, sh.limbo...)
	sh.limbo = sh.limbo[:0]
	sh.compactKeys()
	if sh.firstTick == 0 {
		sh.firstTick = tick
	}
	for _, b := range sh.corrected {
		b.clearDirty()
	}
	clear(sh.corrected)
	sh.corrected = sh.corrected[:0]
	start := len(out)
	for k, b := range sh.buckets {
		if final || sh.timing.Due(k.start, k.width) <= tick {
			delete(sh.buckets, k)
			if !b.Late && k.width == sh.timing.interval {
				sh.sizeHint = len(b.slots)
			}
			out = sh.settle(k, b, out)
		}
	}
	sh.beginZeroFill(tick, start, out)
	sh.last = nil
	sh.watermark = max(sh.watermark, tick)
	for k, b := range sh.kept {
		if b != nil && !b.stamped && sh.timing.Due(k.start, k.width) <= sh.watermark && b.drain != sh.drains {
			// Restored with untimed samples only: not corrected once due.
			b.release()
			sh.kept[k], b = nil, nil
		}
		if b != nil && sh.keptUntil(k) < sh.watermark && b.drain != sh.drains {
			// A bucket handed out by this drain goes at the next.
			b.release()
			sh.kept[k], b = nil, nil // flushed: later samples are refused
		}
		if b == nil && sh.markedUntil(k) < sh.watermark {
			delete(sh.kept, k)
		}
	}
	sh.expire(tick, sweepBudget)
	return out
}

// beginZeroFill begins giving every COUNT context within its expiry a 0
// in the last interval bucket due at tick, unless it has a value there, as
// the Agent's TimeSampler.countersSampleZeroValue does; out[drained:] are
// the buckets this drain handed out. FillZeros goes on with it. Buckets
// that started before the shard's first drain are left alone.
func (sh *Shard) beginZeroFill(tick int64, drained int, out []*Bucket) {
	if len(sh.counters) == 0 {
		return
	}
	iv := sh.timing.interval
	k := bucketKey{Start(tick-sh.timing.grace, iv) - iv, iv}
	if k.start <= sh.zeroed || k.start < sh.firstTick {
		return
	}
	sh.zeroed = k.start
	var b *Bucket
	for _, d := range out[drained:] {
		if d.Start == k.start && d.Width == k.width && !d.Late {
			b = d
		}
	}
	fresh := b == nil
	if fresh {
		if _, flushed := sh.kept[k]; flushed {
			return // flushed by an earlier drain
		}
		b = sh.getBucket(k.start, k.width, false)
	}
	sh.filling = zeroFill{b: b, k: k, fresh: fresh}
}

// FillZeros goes on with the zero-fill the last drain began, examining at
// most budget counters, and reports whether it is done. Counters past
// their expiry leave the list. A bucket made for the fill alone (no
// counter had a sample in its range) is appended to out once it is done.
//
// Between steps the shard takes samples as after a drain: the filled
// bucket was handed out, so they go to the buckets open now or correct
// the flushed ones.
func (sh *Shard) FillZeros(budget int, out []*Bucket) (_ []*Bucket, done bool) {
	f := &sh.filling
	if f.b == nil {
		return out, true
	}
	for ; budget > 0 && f.next < len(sh.counters); budget-- {
		id := sh.counters[f.next]
		c := sh.at(id)
		if int64(c.zeroUntil)*1e9 <= f.k.start {
			c.zeroFrom, c.zeroUntil = 0, 0
			last := len(sh.counters) - 1
			sh.counters[f.next] = sh.counters[last]
			sh.counters = sh.counters[:last]
			continue // the last counter moved into this place
		}
		if _, ok := f.b.find(id); !ok && f.k.start >= int64(c.zeroFrom)*1e9 {
			j := f.b.newSlot(id, TypeCount)
			f.b.slots[j].set(hasValue)
		}
		f.next++
	}
	if f.next < len(sh.counters) {
		return out, false
	}
	b, k, fresh := f.b, f.k, f.fresh
	*f = zeroFill{}
	if !fresh {
		return out, true
	}
	if b.Len() == 0 {
		b.release()
		return out, true
	}
	return sh.settle(k, b, out), true
}

// settle appends drained bucket b of range k to out, as itself or as the
// correction of the kept bucket its late samples join, and keeps what late
// samples may still reach.
func (sh *Shard) settle(k bucketKey, b *Bucket, out []*Bucket) []*Bucket {
	if !b.Late {
		if !b.stamped {
			sh.kept[k] = nil // flushed, with nothing to correct it from
			return append(out, b)
		}
		sh.keep(k, b)
		return append(out, b)
	}
	base := b.base
	if base == nil {
		// Nothing was flushed for this range: the late samples are the
		// whole of it.
		b.markDirty()
		sh.keep(k, b)
		sh.corrected = append(sh.corrected, b)
		return append(out, b)
	}
	base.absorb(b)
	b.release()
	sh.keep(k, base)
	base.Late = true
	sh.corrected = append(sh.corrected, base)
	return append(out, base)
}

// keep makes b a kept bucket of range k and holds its contexts as long.
// The current drain hands it out.
func (sh *Shard) keep(k bucketKey, b *Bucket) {
	b.kept, b.drain = true, sh.drains
	sh.kept[k] = b
	until := sh.keptUntil(k)
	for i := range b.slots {
		c := sh.at(b.slots[i].ctx)
		c.expires = max(c.expires, unixSeconds(until, true))
	}
}

// expire examines up to budget context IDs from where the last sweep
// stopped and forgets the contexts idle for longer than the TTL.
func (sh *Shard) expire(now int64, budget int) {
	if sh.live == 0 {
		return
	}
	for ; budget > 0; budget-- {
		if sh.sweep >= sh.made {
			sh.sweep = 0
		}
		id := sh.sweep
		sh.sweep++
		if c := sh.at(id); c.live() && c.expired(now) && !c.counting() {
			sh.forget(id, c)
		}
	}
}

// forget removes context id from the index. Its ID is taken again from
// the next drain on: until then its key and tenant stay for the buckets
// this drain hands out.
func (sh *Shard) forget(id uint32, c *context) {
	key := sh.keyOf(c)
	sh.index.remove(maphash.String(seed, key)^c.tenant.hash(), id)
	sh.keys.forget(keySize(key))
	if c.last != 0 {
		sh.freeLasts = append(sh.freeLasts, c.last)
		c.last = 0
	}
	c.gen++ // odd: forgotten, and every Handle to it is stale
	sh.limbo = append(sh.limbo, id)
	sh.live--
	if c.seeded() {
		c.tenant.Seeded.Add(-1)
	} else {
		c.tenant.Contexts.Add(-1)
	}
}

// compactKeys copies the live keys into new chunks once the forgotten
// ones outweigh them (and a chunk). It runs as a drain begins, when no
// reader holds a bucket the shard handed out: the keys of the contexts
// forgotten by the last drain are no longer read. Its cost, a copy of
// the live keys, is at most that of the keys forgotten since the last.
func (sh *Shard) compactKeys() {
	a := &sh.keys
	if a.dead < keyChunkLen || a.dead < a.live {
		return
	}
	var fresh keyArena
	for id := range sh.made {
		c := sh.at(id)
		if !c.live() {
			continue
		}
		key := keyIn(a.chunks, c.key)
		off, ok := fresh.add(unsafe.Slice(unsafe.StringData(key), len(key)))
		if !ok {
			return // cannot happen: the live keys fit before
		}
		c.key = off
	}
	*a = fresh
	chunks := a.chunks
	sh.store.keys.Store(&chunks)
	sh.keysShown = len(chunks)
}

// ContextStat is a context and its sample count, for introspection.
type ContextStat struct {
	Tenant  *Tenant
	Key     string // see SplitKey
	Samples uint64
}

// Top appends to out the n contexts of the shard with the most samples,
// of tenant t only unless t is nil, and returns out.
func (sh *Shard) Top(t *Tenant, n int, out []ContextStat) []ContextStat {
	start := len(out)
	for id := range sh.made {
		c := sh.at(id)
		if !c.live() || t != nil && c.tenant != t {
			continue
		}
		st := ContextStat{Tenant: c.tenant, Key: sh.keyOf(c), Samples: uint64(c.samples)}
		top := out[start:]
		if len(top) < n {
			out = append(out, st)
			continue
		}
		// Replace the smallest kept when this one is larger: n is small.
		min := 0
		for i := range top {
			if top[i].Samples < top[min].Samples {
				min = i
			}
		}
		if st.Samples > top[min].Samples {
			top[min] = st
		}
	}
	return out
}

package window

import (
	"hash/maphash"
	"math"
	"strings"
)

// context is one aggregation context: (tenant, name, host, sorted tags). Its
// key and tenant never change after creation, so a drained bucket may read
// them without the shard's lock; the other fields belong to the shard.
type context struct {
	key    string
	tenant *Tenant
	next   *context // hash chain
	seen   int64    // last arrival time, for expiry
	pos    int32    // index in Shard.all
	// The last sample seen, kept across buckets for RATE and
	// MONOTONIC_COUNT; lastT is 0 before the first (timestamps are never 0).
	lastV float64
	lastT int64
	// samples counts the samples of the context, saturating.
	samples uint32
}

type bucketKey struct{ start, width int64 }

// Shard holds the contexts and open buckets of one hash range of contexts.
// It is not safe for concurrent use.
type Shard struct {
	timing Timing
	ttl    int64
	maxSet int

	contexts  map[uint64]*context
	all       []*context // every context, for the expiry sweep
	sweep     int        // where the expiry sweep resumes in all
	buckets   map[bucketKey]*Bucket
	last      *Bucket // the bucket written last, a lookup cache
	watermark int64   // every bucket due at or before it has been drained
}

// sweepBudget bounds the contexts one Drain examines for expiry, so that a
// drain holds its shard for microseconds whatever the shard's size. A shard
// of n contexts is swept every n/sweepBudget drains.
const sweepBudget = 4096

// NewShard returns an empty shard. cfg must be valid.
func NewShard(cfg Config) *Shard {
	return &Shard{
		timing:   cfg.Timing(),
		ttl:      int64(cfg.ContextTTL),
		maxSet:   cfg.MaxSetSize,
		contexts: make(map[uint64]*context),
		buckets:  make(map[bucketKey]*Bucket),
	}
}

// Contexts returns the number of live contexts.
func (sh *Shard) Contexts() int { return len(sh.all) }

// Add aggregates s, which Prepare has keyed, arriving at now (unix
// nanoseconds). It returns Accepted or why s was refused; a refused sample
// changes nothing but, possibly, a context's idle time.
func (sh *Shard) Add(t *Tenant, s *Sample, now int64) Reason {
	ts := s.Timestamp
	if ts == 0 {
		ts = now
	} else if r := sh.timing.Admit(ts, now); r != Accepted {
		return r
	}
	b := sh.bucket(sh.timing.Bucket(s.Timestamp, now))
	c, r := sh.context(t, s, now)
	if r != Accepted {
		return r
	}
	i, ok := b.index[c]
	if !ok {
		i = b.newSlot(c, s.Type)
	}
	sl := &b.slots[i]
	if sl.typ != s.Type {
		return ReasonTypeConflict
	}
	if s.Hist != nil && sl.typ.isDist() {
		b.dists[sl.ext].merge(s.Hist)
		sl.flags |= hasValue
		return Accepted
	}
	weight := 1 / s.SampleRate
	if s.Values == nil {
		return sh.update(b, sl, c, s, s.Value, ts, weight)
	}
	for _, v := range s.Values {
		if r := sh.update(b, sl, c, s, v, ts, weight); r != Accepted {
			return r
		}
	}
	return Accepted
}

func (sh *Shard) update(b *Bucket, sl *slot, c *context, s *Sample, v float64, ts int64, weight float64) Reason {
	switch sl.typ {
	case TypeGauge:
		if sl.flags&hasValue == 0 || ts >= sl.t {
			sl.v, sl.t = v, ts
		}
		sl.flags |= hasValue
	case TypeCount:
		sl.v += v * weight
		sl.flags |= hasValue
	case TypeRate:
		r := &b.rates[sl.ext]
		if c.lastT != 0 {
			r.prevV, r.prevT = c.lastV, c.lastT
			sl.flags |= hasPrev
		}
		sl.v, sl.t = v, ts
		sl.flags |= hasValue
		c.lastV, c.lastT = v, ts
	case TypeMonotonicCount:
		if c.lastT != 0 {
			if d := v - c.lastV; d > 0 {
				sl.v += d
			}
			sl.flags |= hasValue
		}
		c.lastV, c.lastT = v, ts
	case TypeHistogram, TypeTiming, TypeDistribution:
		b.dists[sl.ext].add(v, weight)
		sl.flags |= hasValue
	case TypeSet:
		m := b.sets[sl.ext]
		if _, ok := m[s.SetMember]; !ok {
			if len(m) >= sh.maxSet {
				return ReasonSetLimit
			}
			m[strings.Clone(s.SetMember)] = struct{}{}
		}
		sl.flags |= hasValue
	}
	return Accepted
}

// context finds or creates the context of s.
func (sh *Shard) context(t *Tenant, s *Sample, now int64) (*context, Reason) {
	head := sh.contexts[s.Hash]
	for c := head; c != nil; c = c.next {
		if c.tenant == t && c.key == string(s.Key) {
			c.seen = now
			if c.samples != math.MaxUint32 {
				c.samples++
			}
			return c, Accepted
		}
	}
	if max := t.MaxContexts.Load(); max > 0 && t.Contexts.Load() >= max {
		// Past its bound, a tenant's new contexts fold into its overflow
		// series for the sample's type: nothing is dropped, and the
		// folding is counted.
		t.Overflowed.Add(1)
		return sh.overflow(t, s.Type, now), Accepted
	}
	return sh.newContext(t, string(s.Key), s.Hash, head, now), Accepted
}

func (sh *Shard) newContext(t *Tenant, key string, hash uint64, head *context, now int64) *context {
	c := &context{key: key, tenant: t, next: head, seen: now, pos: int32(len(sh.all)), samples: 1}
	sh.contexts[hash] = c
	sh.all = append(sh.all, c)
	t.Contexts.Add(1)
	return c
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
// even past the bound (one per type and shard at most).
func (sh *Shard) overflow(t *Tenant, typ MetricType, now int64) *context {
	key := overflowKeys[min(typ, numTypes-1)]
	hash := maphash.String(seed, key) ^ t.hash()
	head := sh.contexts[hash]
	for c := head; c != nil; c = c.next {
		if c.tenant == t && c.key == key {
			c.seen = now
			return c
		}
	}
	return sh.newContext(t, key, hash, head, now)
}

// bucket finds or opens the bucket [start, start+width).
func (sh *Shard) bucket(start, width int64) *Bucket {
	if b := sh.last; b != nil && b.Start == start && b.Width == width {
		return b
	}
	k := bucketKey{start, width}
	b, ok := sh.buckets[k]
	if !ok {
		b = getBucket(start, width, sh.timing.Due(start, width) <= sh.watermark)
		sh.buckets[k] = b
	}
	sh.last = b
	return b
}

// Drain removes and appends to out every bucket due at tick: those whose end
// plus grace is at or before tick, or all of them when all is set (the final
// flush). Samples that arrive later for a drained bucket open a late partial
// bucket, drained at the next tick. Drain also forgets contexts idle for
// longer than the context TTL, a bounded number per call.
func (sh *Shard) Drain(tick int64, all bool, out []*Bucket) []*Bucket {
	for k, b := range sh.buckets {
		if all || sh.timing.Due(k.start, k.width) <= tick {
			out = append(out, b)
			delete(sh.buckets, k)
		}
	}
	sh.last = nil
	sh.watermark = max(sh.watermark, tick)
	sh.expire(tick, sweepBudget)
	return out
}

// expire examines up to budget contexts from where the last sweep stopped
// and forgets those idle for longer than the TTL.
func (sh *Shard) expire(now int64, budget int) {
	for ; budget > 0 && len(sh.all) > 0; budget-- {
		if sh.sweep >= len(sh.all) {
			sh.sweep = 0
		}
		c := sh.all[sh.sweep]
		if now-c.seen <= sh.ttl {
			sh.sweep++
			continue
		}
		sh.forget(c)
		// The last context moved into c's place: examine it next.
	}
}

// forget removes c from the hash chains and the dense list.
func (sh *Shard) forget(c *context) {
	h := maphash.String(seed, c.key) ^ c.tenant.hash()
	if head := sh.contexts[h]; head == c {
		if c.next == nil {
			delete(sh.contexts, h)
		} else {
			sh.contexts[h] = c.next
		}
	} else {
		for p := head; p != nil; p = p.next {
			if p.next == c {
				p.next = c.next
				break
			}
		}
	}
	last := sh.all[len(sh.all)-1]
	sh.all[c.pos] = last
	last.pos = c.pos
	sh.all[len(sh.all)-1] = nil
	sh.all = sh.all[:len(sh.all)-1]
	c.tenant.Contexts.Add(-1)
}

func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

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
	for _, c := range sh.all {
		if t != nil && c.tenant != t {
			continue
		}
		st := ContextStat{Tenant: c.tenant, Key: c.key, Samples: uint64(c.samples)}
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

package flush

import (
	"cmp"
	"math/bits"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/aggd/aggd/internal/window"
)

// shard is one window.Shard and the mutex that owns it, padded so that
// neighbouring shards' locks do not share a cache line.
type shard struct {
	mu sync.Mutex
	sh *window.Shard
	_  [48]byte
}

// Aggregator holds every tenant's aggregation state. It implements
// service.Ingester and is safe for concurrent use.
type Aggregator struct {
	shards []shard
	shift  uint // hash >> shift selects the shard
	// over holds every tenant's overflow series: one context per tenant
	// and type whichever shard a folded sample came through, so that one
	// flush sends one point per overflow series and timestamp. Its lock is
	// taken under a shard's, never the other way round.
	over shard

	// drained is the tick of the last drain, or of Resume.
	drained atomic.Int64

	mu     sync.Mutex // guards events and checks
	events []window.Event
	checks []window.ServiceCheck
	holder EventHolder
	rules  RuleEngine

	timing window.Timing
}

// RuleEngine applies aggregation rules to samples as they are aggregated,
// and flushes its outputs with the buckets.
type RuleEngine interface {
	// DropOriginals reports whether matched samples skip their own
	// aggregation.
	DropOriginals() bool
	// ObserveSample sees s in shard i, under that shard's lock; it reports
	// whether a rule matched, and may refuse the sample. Windows due at or
	// before cutoff (non-zero for a replayed batch) do not take it.
	ObserveSample(shard int, t *window.Tenant, s *window.Sample, now, cutoff int64) (bool, window.Reason)
	// ObserveEvent sees an accepted event, under no lock of the
	// aggregator's; cutoff is as for ObserveSample. It reports whether a
	// rule selected a field of it.
	ObserveEvent(t *window.Tenant, e *window.Event, now, cutoff int64) bool
	// Drain appends the outputs of the windows due at tick.
	Drain(tick int64, final bool, lockShard func(i int, f func()), out []window.Metric) []window.Metric
	// Due returns a tick by which every window a sample at ts falls in
	// is drained.
	Due(ts int64) int64
	// Resume says, before replay, that an earlier process drained every
	// window due at or before tick: replayed items of windows it drained
	// go back into them as flushed, kept for late items.
	Resume(tick int64)
}

// Shards returns the number of shards.
func (a *Aggregator) Shards() int { return len(a.shards) }

// EventHolder may take events out of the next flush, to release them at a
// later one (group sampling).
type EventHolder interface {
	// Hold takes e and reports true, or reports false to leave it.
	Hold(e *window.Event, now int64) bool
	// Release returns the held events to flush at tick (all of them at the
	// set).
	Release(tick int64, final bool) []window.Event
}

// AggregatorConfig configures an Aggregator.
type AggregatorConfig struct {
	// Window is the windows' timing and limits; it must be valid.
	Window window.Config
	// Shards is the number of shards, rounded up by ShardCount.
	Shards int
	// Rules, if set, applies aggregation rules to the samples and events
	// aggregated; it must have ShardCount(Shards) shards.
	Rules RuleEngine
	// Events, if set, may hold events back from a flush (group sampling).
	Events EventHolder
}

// ShardCount returns the shards an Aggregator of n shards has: n rounded
// up to a power of two; n ≤ 0 means four per GOMAXPROCS.
func ShardCount(n int) int {
	if n <= 0 {
		n = 4 * runtime.GOMAXPROCS(0)
	}
	return 1 << bits.Len(uint(n-1))
}

// NewAggregator returns an aggregator configured by cfg.
func NewAggregator(cfg AggregatorConfig) *Aggregator {
	b := bits.Len(uint(ShardCount(cfg.Shards) - 1))
	a := &Aggregator{shards: make([]shard, 1<<b), shift: uint(64 - b), timing: cfg.Window.Timing(), rules: cfg.Rules, holder: cfg.Events}
	if b == 0 {
		a.shift = 63 // one shard: any shift that leaves index 0 works
	}
	a.over.sh = window.NewShard(cfg.Window)
	fold := func(t *window.Tenant, s *window.Sample, now int64, restore bool) window.Reason {
		a.over.mu.Lock()
		defer a.over.mu.Unlock()
		if restore {
			return a.over.sh.RestoreOverflow(t, s, now)
		}
		return a.over.sh.AddOverflow(t, s, now)
	}
	for i := range a.shards {
		a.shards[i].sh = window.NewSharingShard(cfg.Window, fold)
	}
	return a
}

func (a *Aggregator) shardOf(hash uint64) int {
	if len(a.shards) == 1 {
		return 0
	}
	return int(hash >> a.shift)
}

// Ingest aggregates b's accepted samples and buffers its events and checks;
// rules see its events, those of a replayed batch a flush already sent
// (b.EventsFlushed) too, which are not buffered again. An event marked
// RulesOnly (another replica took it) is seen by the rules only; one no
// rule selects is refused rules_mismatch in b.EventResults, when set.
// It groups the samples by shard once, then locks each shard it needs
// once, taking free shards first so that a batch does not queue behind
// the flusher shard after shard.
func (a *Aggregator) Ingest(b *window.Batch) {
	g := groupPool.Get().(*byShard)
	g.group(a, b)
	for si := range a.shards {
		idx := g.of(si)
		if len(idx) == 0 {
			continue
		}
		s := &a.shards[si]
		if !s.mu.TryLock() {
			g.busy = append(g.busy, int32(si))
			continue
		}
		a.addLocked(s, si, b, idx)
		s.mu.Unlock()
	}
	for _, si := range g.busy {
		s := &a.shards[si]
		s.mu.Lock()
		a.addLocked(s, int(si), b, g.of(int(si)))
		s.mu.Unlock()
	}
	g.release()
	results := len(b.EventResults) == len(b.Events)
	marked := false
	for i := range b.Events {
		ev := &b.Events[i]
		matched := a.rules != nil && a.rules.ObserveEvent(b.Tenant, ev, b.Now, b.Cutoff)
		if ev.RulesOnly {
			marked = true
			if !matched && results {
				b.EventResults[i] = window.ReasonRulesMismatch
			}
		}
	}
	if b.EventsFlushed {
		b.Events = b.Events[:0] // rules took them; a flush sent them
	}
	if len(b.Events) > 0 || len(b.Checks) > 0 {
		a.mu.Lock()
		for i := range b.Events {
			if marked && b.Events[i].RulesOnly {
				continue // another replica took it and sends it
			}
			if a.holder == nil || !a.holder.Hold(&b.Events[i], b.Now) {
				a.events = append(a.events, b.Events[i])
			}
		}
		a.checks = append(a.checks, b.Checks...)
		a.mu.Unlock()
	}
}

// Seed makes each accepted sample of b, a RATE or MONOTONIC_COUNT sample
// another replica aggregates, the previous sample of its context here (see
// window.Shard.Seed; handedOver marks a hand-over's seeds), and sets its
// result. Seeds come only while the owner of a context is about to
// change, so it locks shard by shard.
func (a *Aggregator) Seed(b *window.Batch, handedOver bool) {
	for i := range b.Samples {
		if b.Results[i] != window.Accepted {
			continue
		}
		s := &a.shards[a.shardOf(b.Samples[i].Hash)]
		s.mu.Lock()
		b.Results[i] = s.sh.Seed(b.Tenant, &b.Samples[i], b.Now, handedOver)
		s.mu.Unlock()
	}
}

// LastSamples calls fn with the last samples of every RATE and
// MONOTONIC_COUNT context (see window.Shard.LastSamples), in slices of at
// most n, each collected under one shard's lock and passed to fn with no
// lock held: fn may take its time (send them over the network) while the
// shards take samples. The slice is reused once fn returns; the walk
// stops when fn returns false. A context is listed at least once if it
// lives through the walk.
func (a *Aggregator) LastSamples(n int, fn func([]window.Last) bool) {
	n = max(n, 1)
	buf := make([]window.Last, 0, n)
	for i := range a.shards {
		s := &a.shards[i]
		for next := -1; next != 0; {
			s.mu.Lock()
			buf, next = s.sh.LastSamples(buf[:0], next, n)
			s.mu.Unlock()
			if len(buf) > 0 && !fn(buf) {
				return
			}
		}
	}
}

// Due returns a tick by which every window a sample at ts arriving at now
// falls in is drained: its bucket's, and the rules' windows.
func (a *Aggregator) Due(ts, now int64) int64 {
	d := a.timing.BucketDue(ts, now)
	if a.rules != nil {
		if ts == 0 {
			ts = now
		}
		d = max(d, a.rules.Due(ts))
	}
	return d
}

// addLocked adds the accepted samples of b at idx, all of shard si, whose
// lock is held.
//
// A sample marked RulesOnly (a peer aggregates it, and sent it here for
// the rule groups this replica owns) is only observed by the rules; one
// no rule matches is refused rules_mismatch.
func (a *Aggregator) addLocked(s *shard, si int, b *window.Batch, idx []int32) {
	if a.rules == nil {
		for _, i := range idx {
			if b.Samples[i].RulesOnly {
				b.Results[i] = window.ReasonRulesMismatch
				continue
			}
			b.Results[i] = a.add(s, &b.Samples[i], b)
		}
		return
	}
	drop := a.rules.DropOriginals()
	for _, i := range idx {
		smp := &b.Samples[i]
		if smp.RulesOnly {
			switch matched, r := a.rules.ObserveSample(si, b.Tenant, smp, b.Now, b.Cutoff); {
			case r != window.Accepted:
				b.Results[i] = r
			case !matched:
				b.Results[i] = window.ReasonRulesMismatch
			}
			continue
		}
		if !drop {
			if b.Results[i] = a.add(s, smp, b); b.Results[i] == window.Accepted {
				a.rules.ObserveSample(si, b.Tenant, smp, b.Now, b.Cutoff)
			}
			continue
		}
		matched, r := a.rules.ObserveSample(si, b.Tenant, smp, b.Now, b.Cutoff)
		switch {
		case r != window.Accepted:
			b.Results[i] = r
		case !matched:
			b.Results[i] = a.add(s, smp, b)
		}
	}
}

// byShard is the accepted samples of one batch grouped by shard, so that
// each shard's pass reads only its own: idx holds sample indexes, shard
// after shard, and ends[si] is where shard si's end. busy lists the
// shards whose lock was taken at the first try.
type byShard struct {
	idx  []int32
	ends []int32
	busy []int32
}

var groupPool = sync.Pool{New: func() any { return new(byShard) }}

// group fills g with b's accepted samples: a counting sort by shard.
func (g *byShard) group(a *Aggregator, b *window.Batch) {
	n := len(a.shards)
	g.ends = slices.Grow(g.ends[:0], n+1)[:n+1]
	clear(g.ends)
	accepted := 0
	for i := range b.Samples {
		if b.Results[i] == window.Accepted {
			g.ends[a.shardOf(b.Samples[i].Hash)+1]++
			accepted++
		}
	}
	for si := 1; si <= n; si++ {
		g.ends[si] += g.ends[si-1]
	}
	// ends[si] is now where shard si starts; filling moves it on to
	// where shard si ends, as of expects.
	g.idx = slices.Grow(g.idx[:0], accepted)[:accepted]
	for i := range b.Samples {
		if b.Results[i] == window.Accepted {
			si := a.shardOf(b.Samples[i].Hash)
			g.idx[g.ends[si]] = int32(i)
			g.ends[si]++
		}
	}
	g.busy = g.busy[:0]
}

// of returns the indexes of shard si's samples.
func (g *byShard) of(si int) []int32 {
	lo := int32(0)
	if si > 0 {
		lo = g.ends[si-1]
	}
	return g.idx[lo:g.ends[si]]
}

// release returns g to the pool unless it grew large.
func (g *byShard) release() {
	if cap(g.idx) <= 1<<16 {
		groupPool.Put(g)
	}
}

// add adds smp to shard s, whose lock is held. When the batch is replayed
// and its cutoff says a flush carried the bucket already, the sample goes
// back into that flushed bucket, kept for late samples, and is not sent
// again.
//
// A replayed sample without a timestamp goes to the bucket it went to
// when it arrived: that of its arrival, or, when the drain before it was
// taken in (b.Drained) had flushed that one already, the bucket open at
// that drain (see window.Shard.Add).
func (a *Aggregator) add(s *shard, smp *window.Sample, b *window.Batch) window.Reason {
	now := b.Now
	if smp.Timestamp == 0 && b.Drained != 0 && a.timing.BucketDue(0, now) <= b.Drained {
		now = b.Drained
	}
	if b.Cutoff != 0 && a.timing.BucketDue(smp.Timestamp, now) <= b.Cutoff {
		return s.sh.Restore(b.Tenant, smp, now)
	}
	return s.sh.Add(b.Tenant, smp, now)
}

// Drained returns the tick of the last drain, or of Resume: while a
// journaled batch is taken in no drain runs (flush.WAL.Rotate), so every
// shard has drained up to it and no further.
func (a *Aggregator) Drained() int64 { return a.drained.Load() }

// Resume tells every shard and the rules, before replay and before any
// batch, that an earlier process flushed every bucket and rule window due
// at or before tick (see window.Shard.Resume and rules.Engine.Resume).
func (a *Aggregator) Resume(tick int64) {
	for s := range a.all() {
		s.mu.Lock()
		s.sh.Resume(tick)
		s.mu.Unlock()
	}
	a.noteDrain(tick)
	if a.rules != nil {
		a.rules.Resume(tick)
	}
}

// all yields every shard and then the overflow shard.
func (a *Aggregator) all() func(yield func(*shard) bool) {
	return func(yield func(*shard) bool) {
		for i := range a.shards {
			if !yield(&a.shards[i]) {
				return
			}
		}
		yield(&a.over)
	}
}

// Contexts returns the number of live contexts over every shard.
func (a *Aggregator) Contexts() int {
	n := 0
	for s := range a.all() {
		s.mu.Lock()
		n += s.sh.Contexts()
		s.mu.Unlock()
	}
	return n
}

// zeroFillStep bounds the counters a shard zero-fills under its lock at a
// time: a flush of a million contexts holds each shard for about a
// millisecond at a time, not for tens of milliseconds.
const zeroFillStep = 4096

// drain takes every bucket due at tick (all of them when final is set) and
// the buffered events and checks. Each shard is locked for its swap; the
// zero-fill of counters the swap begins is left to fillZeros. With a
// write-ahead log drain runs while batches are held out (flush.WAL.Rotate):
// it is kept to what must happen before a batch of the next generation
// comes in.
func (a *Aggregator) drain(tick int64, final bool, f *window.Flush) {
	a.noteDrain(tick)
	for s := range a.all() {
		s.mu.Lock()
		f.Buckets = s.sh.BeginDrain(tick, final, f.Buckets)
		s.mu.Unlock()
	}
	if a.rules != nil {
		f.Extra = a.rules.Drain(tick, final, func(i int, fn func()) {
			a.shards[i].mu.Lock()
			fn()
			a.shards[i].mu.Unlock()
		}, f.Extra)
	}
	a.mu.Lock()
	f.Events, a.events = a.events, nil
	f.Checks, a.checks = a.checks, nil
	a.mu.Unlock()
	if a.holder != nil {
		f.Events = append(f.Events, a.holder.Release(tick, final)...)
	}
}

// noteDrain moves Drained to tick, never back.
func (a *Aggregator) noteDrain(tick int64) {
	for {
		d := a.drained.Load()
		if tick <= d || a.drained.CompareAndSwap(d, tick) {
			return
		}
	}
}

// fillZeros finishes the drain: each shard zero-fills its counters in
// steps, locked for each step and taking samples in between.
func (a *Aggregator) fillZeros(f *window.Flush) {
	for s := range a.all() {
		for done := false; !done; {
			s.mu.Lock()
			f.Buckets, done = s.sh.FillZeros(zeroFillStep, f.Buckets)
			s.mu.Unlock()
		}
	}
}

// TopContexts returns the n contexts with the most samples, busiest first,
// of tenant t only unless t is nil. Each shard is locked for its scan.
func (a *Aggregator) TopContexts(t *window.Tenant, n int) []window.ContextStat {
	var all []window.ContextStat
	for s := range a.all() {
		s.mu.Lock()
		all = s.sh.Top(t, n, all)
		s.mu.Unlock()
	}
	slices.SortFunc(all, func(x, y window.ContextStat) int { return cmp.Compare(y.Samples, x.Samples) })
	return all[:min(n, len(all))]
}

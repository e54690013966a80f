package spans

import (
	"hash/maphash"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aggd/aggd/internal/filter"
	"github.com/aggd/aggd/internal/window"
)

// Trace is a kept trace, or late spans of one, to export.
type Trace struct {
	Tenant  *window.Tenant
	TraceID [16]byte
	Spans   []Span
}

// Limits bound the sampler's memory.
type Limits struct {
	// MaxTracesPerTenant bounds each tenant's held traces.
	MaxTracesPerTenant int
	// MaxSpansPerTrace bounds one held trace.
	MaxSpansPerTrace int
	// MaxBytes bounds the memory of every held span together.
	MaxBytes int64
	// DecisionTTL is how long a decision is remembered for late spans.
	DecisionTTL time.Duration
	// MaxDecisions bounds the remembered decisions.
	MaxDecisions int
}

// DefaultLimits returns the documented bounds.
func DefaultLimits() Limits {
	return Limits{MaxTracesPerTenant: 100_000, MaxSpansPerTrace: 2_000, MaxBytes: 512 << 20,
		DecisionTTL: 5 * time.Minute, MaxDecisions: 1_000_000}
}

// Reasons a trace is decided before data_ttl has passed, or a late span is
// not held.
const (
	EarlySpansLimit  = "trace_spans_limit"
	EarlyTracesLimit = "tenant_traces_limit"
	EarlyMemoryLimit = "memory_limit"
	EarlyShutdown    = "shutdown"
	DecisionsDropped = "decisions_full"
)

// Counters are the sampler's running totals. They are safe for concurrent
// use.
type Counters struct {
	TracesKept, TracesDropped atomic.Int64
	SpansKept, SpansDropped   atomic.Int64
	LateKept, LateDropped     atomic.Int64
	// Early counts traces decided early, by reason.
	Early sync.Map // string → *atomic.Int64
	// HeldTraces, HeldSpans and HeldBytes are what the sampler holds now.
	HeldTraces, HeldSpans, HeldBytes atomic.Int64
}

func (c *Counters) early(reason string) {
	v, _ := c.Early.LoadOrStore(reason, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

type key struct {
	tenant *window.Tenant
	id     [16]byte
}

// decidedKey is a decided trace as the decisions remember it, its tenant
// by a 64-bit hash of the tenant's id: pointer-free, so that the garbage
// collector reads none of the up to Limits.MaxDecisions entries. Two
// tenants' ids share a hash with a probability of 2⁻⁶⁴, and would then
// share only the decisions of the trace ids they both send.
type decidedKey struct {
	tenant uint64
	id     [16]byte
}

type decision struct {
	keep bool
	at   int64
}

const nShards = 16

type samplerShard struct {
	mu      sync.Mutex
	traces  map[key]*heldTrace
	decided map[decidedKey]decision
	pending []Trace // kept spans to export at the next Advance
	// quiet finds the held traces that may have gone quiet: each is under
	// the second of its arrival, moved on lazily when Advance finds that
	// later spans came. Advance reads only the seconds at least data_ttl
	// old, not every held trace.
	quiet map[int64][]heldRef
	// lastK and lastTr are the trace Add held a span of last, while held:
	// a trace's spans mostly come one after another, and then skip the
	// map.
	lastK  key
	lastTr *heldTrace
	// recHint is the record bytes the traces decided lately held
	// (recordsHint), which a new trace's records start with room for.
	recHint int
	// due are the held traces Advance took off the quiet wheel to
	// examine, in steps; dueNext is the next to examine.
	due     []heldRef
	dueNext int
	// expiry lists the decisions in the order they were made, for
	// Advance to forget the old ones without reading the others.
	expiry     []decidedRef
	expiryHead int
	// one, spans, attrs and tv are reused to judge a trace.
	one   [1]Span
	spans []Span
	attrs []Attr
	tv    traceVars
}

// heldRef is a held trace as the quiet wheel lists it.
type heldRef struct {
	k  key
	tr *heldTrace
}

// decidedRef is a decision as the expiry queue lists it: at tells a
// decision made again later, listed again, from this one.
type decidedRef struct {
	k  decidedKey
	at int64
}

func (s *Sampler) decidedKey(k key) decidedKey {
	return decidedKey{maphash.String(s.seed, k.tenant.ID), k.id}
}

// second is the quiet wheel's slot of arrival time t.
func second(t int64) int64 { return t / int64(time.Second) }

// Sampler holds spans by trace and decides traces with a Policy. It is safe
// for concurrent use. Without a policy every span is kept at once.
type Sampler struct {
	policy   atomic.Pointer[Policy]
	lim      Limits
	shards   [nShards]samplerShard
	tenantMu sync.Mutex
	tenants  map[*window.Tenant]int // held traces per tenant
	decided  atomic.Int64
	seed     maphash.Seed // of decidedKey.tenant
	// tenantOf names the tenant of each decidedKey.tenant seen, for Move
	// (uint64 → *window.Tenant).
	tenantOf sync.Map
	C        Counters
}

// NewSampler returns a sampler applying p (nil: keep everything).
func NewSampler(p *Policy, lim Limits) *Sampler {
	s := &Sampler{lim: lim, tenants: map[*window.Tenant]int{}, seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].traces = map[key]*heldTrace{}
		s.shards[i].decided = map[decidedKey]decision{}
		s.shards[i].quiet = map[int64][]heldRef{}
	}
	s.policy.Store(p)
	return s
}

// SetPolicy replaces the policy. Held traces stay and are judged by the new
// policy when they are decided.
func (s *Sampler) SetPolicy(p *Policy) { s.policy.Store(p) }

// Policy returns the policy in force.
func (s *Sampler) Policy() *Policy { return s.policy.Load() }

// traceHash spreads trace ids over the sampler's shards: FNV-1a over the
// id, finished with MurmurHash3's 64-bit mix.
func traceHash(id [16]byte) uint64 {
	h := uint64(fnvOffset)
	for _, b := range id {
		h ^= uint64(b)
		h *= fnvPrime
	}
	return fmix64(h)
}

// fmix64 is MurmurHash3's finalizer.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	return h ^ h>>33
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
	// sampleRange is DataKit's: a rate keeps ⌊rate × 10,000⌋ of 10,000
	// hash buckets.
	sampleRange = 10000
)

// HashTraceID is DataKit's hashTraceID: FNV-1a 64 of the trace id as
// DataKit writes it, 32 lower-case hexadecimal digits.
func HashTraceID(id [16]byte) uint64 {
	const digits = "0123456789abcdef"
	h := uint64(fnvOffset)
	for _, b := range id {
		h ^= uint64(digits[b>>4])
		h *= fnvPrime
		h ^= uint64(digits[b&15])
		h *= fnvPrime
	}
	return h
}

// hashString is FNV-1a 64 of s, DataKit's hashTraceID of a group value.
func hashString(s string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// keepHash is DataKit's probabilistic decision (pipelineMatchedPacket): keep
// when the hash modulo 10,000 is below ⌊rate × 10,000⌋.
func keepHash(h uint64, rate float64) bool {
	return h%sampleRange < uint64(math.Floor(rate*sampleRange))
}

// KeepByRate reports whether a probabilistic rule of rate keeps trace id,
// as DataKit decides it, so DataKit and aggd keep the same traces.
func KeepByRate(id [16]byte, rate float64) bool {
	return keepHash(HashTraceID(id), rate)
}

func (s *Sampler) shard(id [16]byte) *samplerShard {
	return &s.shards[traceHash(id)%nShards]
}

// Add takes one span that arrived at now. s is copied.
func (s *Sampler) Add(t *window.Tenant, sp *Span, now int64) {
	p := s.policy.Load()
	k := key{t, sp.TraceID}
	sh := s.shard(sp.TraceID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if p == nil {
		s.keepLocked(sh, k, []Span{sp.Own()})
		return
	}
	// A trace is held or decided, never both: the held traces, which
	// most spans join, are looked up first.
	tr := sh.lastTr
	if tr == nil || sh.lastK != k {
		tr = sh.traces[k]
	}
	if tr != nil && sp.HandedOver && tr.hasSpan(sp.SpanID) {
		return // handed over again: a restarted sender's log held it too
	}
	if tr == nil {
		if d, ok := sh.decided[s.decidedKey(k)]; ok {
			if d.keep {
				s.C.LateKept.Add(1)
				s.keepLocked(sh, k, []Span{sp.Own()})
			} else {
				s.C.LateDropped.Add(1)
				s.C.SpansDropped.Add(1)
			}
			return
		}
		early := ""
		switch {
		case s.C.HeldBytes.Load() >= s.lim.MaxBytes:
			early = EarlyMemoryLimit
		case !s.addTenantTrace(t):
			early = EarlyTracesLimit
		}
		if early != "" { // judged now, on this span alone
			s.C.early(early)
			sh.one[0] = *sp
			s.decideLocked(sh, p, k, sh.one[:], false, now)
			sh.one[0] = Span{}
			return
		}
		tr = &heldTrace{}
		sh.traces[k] = tr
		sec := second(now)
		sh.quiet[sec] = append(sh.quiet[sec], heldRef{k, tr})
		s.C.HeldTraces.Add(1)
	}
	sh.lastK, sh.lastTr = k, tr
	size := heldSize(sp)
	tr.add(sp, sh.recHint)
	tr.last = now
	tr.bytes += size
	s.C.HeldSpans.Add(1)
	s.C.HeldBytes.Add(size)
	if tr.n >= s.lim.MaxSpansPerTrace {
		s.C.early(EarlySpansLimit)
		s.releaseLocked(sh, k, tr)
		s.decideHeldLocked(sh, p, k, tr, now)
	}
}

func (s *Sampler) addTenantTrace(t *window.Tenant) bool {
	s.tenantMu.Lock()
	defer s.tenantMu.Unlock()
	limit := s.lim.MaxTracesPerTenant
	if t.Limits.MaxHeldTraces > 0 {
		limit = t.Limits.MaxHeldTraces
	}
	if s.tenants[t] >= limit {
		return false
	}
	s.tenants[t]++
	return true
}

// releaseLocked forgets a held trace's accounting and entry.
func (s *Sampler) releaseLocked(sh *samplerShard, k key, tr *heldTrace) {
	delete(sh.traces, k)
	tr.released = true
	if sh.lastTr == tr {
		sh.lastTr = nil
	}
	sh.recHint = recordsHint(sh.recHint, len(tr.recs))
	s.C.HeldTraces.Add(-1)
	s.C.HeldSpans.Add(-int64(tr.n))
	s.C.HeldBytes.Add(-tr.bytes)
	s.tenantMu.Lock()
	if s.tenants[k.tenant]--; s.tenants[k.tenant] <= 0 {
		delete(s.tenants, k.tenant)
	}
	s.tenantMu.Unlock()
}

func (s *Sampler) keepLocked(sh *samplerShard, k key, spans []Span) {
	s.C.SpansKept.Add(int64(len(spans)))
	sh.pending = append(sh.pending, Trace{Tenant: k.tenant, TraceID: k.id, Spans: spans})
}

// decideHeldLocked decides a held trace, released already.
func (s *Sampler) decideHeldLocked(sh *samplerShard, p *Policy, k key, tr *heldTrace, now int64) {
	sh.spans, sh.attrs = decodeRecords(sh.spans[:0], sh.attrs[:0], k.id, tr.recs, tr.wires, tr.n)
	if s.decideLocked(sh, p, k, sh.spans, true, now) {
		// The kept spans' strings are views into tr.recs, which nothing
		// changes any more; their slices are sh's.
		s.keepLocked(sh, k, cloneSpans(sh.spans, sh.attrs))
	}
	clear(sh.spans)
	clear(sh.attrs)
}

// decideLocked judges the trace of spans, queues it for export when kept
// (unless held is set: the caller queues held spans itself, which it must
// copy) and remembers the decision for late spans. It reports whether the
// trace is kept.
func (s *Sampler) decideLocked(sh *samplerShard, p *Policy, k key, spans []Span, held bool, now int64) bool {
	keep := judge(p, k.id, spans, &sh.tv)
	if keep {
		s.C.TracesKept.Add(1)
		if !held {
			own := make([]Span, len(spans))
			for i := range spans {
				own[i] = spans[i].Own()
			}
			s.keepLocked(sh, k, own)
		}
	} else {
		s.C.TracesDropped.Add(1)
		s.C.SpansDropped.Add(int64(len(spans)))
	}
	s.rememberLocked(sh, k, keep, now)
	return keep
}

// rememberLocked remembers the decision on k made at now, for its late
// spans, unless the decisions are full.
func (s *Sampler) rememberLocked(sh *samplerShard, k key, keep bool, now int64) {
	if s.decided.Load() >= int64(s.lim.MaxDecisions) {
		s.C.early(DecisionsDropped)
		return
	}
	dk := s.decidedKey(k)
	if _, ok := s.tenantOf.Load(dk.tenant); !ok {
		s.tenantOf.Store(dk.tenant, k.tenant)
	}
	n := len(sh.decided)
	sh.decided[dk] = decision{keep: keep, at: now}
	if len(sh.decided) > n {
		s.decided.Add(1)
	}
	sh.expiry = append(sh.expiry, decidedRef{dk, now})
}

// Decision is a decision on a trace, as Move hands it to another replica.
type Decision struct {
	Tenant  *window.Tenant
	TraceID [16]byte
	Keep    bool
}

// Move takes out of the sampler the held traces and the remembered
// decisions of the traces moved reports another replica runs now: the
// held ones are released undecided (nothing counts them here), the
// decisions forgotten. It returns them for their new owner (Take and
// Remember there). moved is called with a shard's lock held.
func (s *Sampler) Move(moved func(t *window.Tenant, id [16]byte) bool) ([]Trace, []Decision) {
	var traces []Trace
	var decisions []Decision
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, tr := range sh.traces {
			if moved(k.tenant, k.id) {
				s.releaseLocked(sh, k, tr)
				// The spans' strings are views into tr.recs, which
				// nothing changes any more.
				traces = append(traces, Trace{Tenant: k.tenant, TraceID: k.id, Spans: tr.spans(k.id)})
			}
		}
		for dk, d := range sh.decided {
			t, ok := s.tenantOf.Load(dk.tenant)
			if !ok || !moved(t.(*window.Tenant), dk.id) {
				continue
			}
			delete(sh.decided, dk)
			s.decided.Add(-1)
			decisions = append(decisions, Decision{Tenant: t.(*window.Tenant), TraceID: dk.id, Keep: d.keep})
		}
		sh.mu.Unlock()
	}
	return traces, decisions
}

// Remember takes the decision another replica made on trace id of t, at
// now, as this sampler's own: the trace's spans held here follow it as
// late spans of a decided trace do, and so do its later spans. A trace
// decided here already keeps its decision.
func (s *Sampler) Remember(t *window.Tenant, id [16]byte, keep bool, now int64) {
	k := key{t, id}
	sh := s.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if tr := sh.traces[k]; tr != nil {
		s.releaseLocked(sh, k, tr)
		if keep {
			s.C.LateKept.Add(int64(tr.n))
			s.keepLocked(sh, k, tr.spans(id))
		} else {
			s.C.LateDropped.Add(int64(tr.n))
			s.C.SpansDropped.Add(int64(tr.n))
		}
	} else if _, ok := sh.decided[s.decidedKey(k)]; ok {
		return
	}
	s.rememberLocked(sh, k, keep, now)
}

// advanceStep bounds the traces Advance decides, or the decisions it
// forgets, in one hold of a shard's lock. Between steps it lets the
// batches waiting for the lock in: a second's worth of traces decided in
// one hold (thousands per shard at 300 k spans/s) kept every batch with a
// span of that shard waiting, shard after shard, for the whole of Advance.
const advanceStep = 128

// unlockStep lets the goroutines waiting for sh's lock take it before
// Advance goes on.
func unlockStep(sh *samplerShard) {
	sh.mu.Unlock()
	runtime.Gosched()
	if stepHook != nil {
		stepHook(sh)
	}
	sh.mu.Lock()
}

// stepHook, when set (by tests), runs between two steps of Advance, with
// the shard's lock free.
var stepHook func(*samplerShard)

// decideQuietLocked decides the traces of sh quiet for ttl at now: those
// listed under the seconds ttl old, unless later spans came, which lists
// them under the second of their last. It decides them in steps of
// advanceStep, letting go of sh's lock between steps: what changed
// meanwhile (spans that came, a bound that decided the trace, a member
// change that moved it) is read when the trace's turn comes.
func (s *Sampler) decideQuietLocked(sh *samplerShard, p *Policy, now, ttl int64) {
	for sec, refs := range sh.quiet {
		if now-sec*int64(time.Second) >= ttl { // else even its first arrival is not ttl old
			sh.due = append(sh.due, refs...)
			delete(sh.quiet, sec)
		}
	}
	for step := 0; sh.dueNext < len(sh.due); step++ {
		if step == advanceStep {
			unlockStep(sh)
			step = 0
		}
		r := sh.due[sh.dueNext]
		sh.due[sh.dueNext] = heldRef{}
		sh.dueNext++
		switch tr := r.tr; {
		case tr.released:
			// Decided already (a bound), or moved; a trace held now
			// under its id is listed by itself.
		case now-tr.last >= ttl:
			s.releaseLocked(sh, r.k, tr)
			s.decideHeldLocked(sh, p, r.k, tr, now)
		default:
			last := second(tr.last)
			sh.quiet[last] = append(sh.quiet[last], r)
		}
	}
	sh.due, sh.dueNext = sh.due[:0], 0
	if cap(sh.due) > 1<<16 {
		sh.due = nil // do not keep a burst's list
	}
}

// forgetDecisionsLocked forgets the decisions of sh older than the
// decision TTL at now, oldest first, in steps of advanceStep.
func (s *Sampler) forgetDecisionsLocked(sh *samplerShard, now int64) {
	ttl := int64(s.lim.DecisionTTL)
	for step := 0; sh.expiryHead < len(sh.expiry); step++ {
		if step == advanceStep {
			unlockStep(sh)
			step = 0
		}
		r := sh.expiry[sh.expiryHead]
		if now-r.at <= ttl {
			break
		}
		sh.expiry[sh.expiryHead] = decidedRef{}
		sh.expiryHead++
		if d, ok := sh.decided[r.k]; ok && d.at == r.at {
			delete(sh.decided, r.k)
			s.decided.Add(-1)
		}
	}
	if sh.expiryHead > len(sh.expiry)/2 {
		n := copy(sh.expiry, sh.expiry[sh.expiryHead:])
		clear(sh.expiry[n:])
		sh.expiry, sh.expiryHead = sh.expiry[:n], 0
	}
}

// Judge applies p's rules in order to a trace; the first rule whose
// condition a span of the trace matches decides. A trace no rule decides is
// dropped, as in DataKit. Without a policy every trace is kept.
func Judge(p *Policy, id [16]byte, spans []Span) bool {
	var tv traceVars
	return judge(p, id, spans, &tv)
}

// judge is Judge evaluating conditions through tv, which it leaves empty.
func judge(p *Policy, id [16]byte, spans []Span, tv *traceVars) bool {
	if p == nil {
		return true
	}
	*tv = traceVars{spans: spans}
	defer func() { *tv = traceVars{} }()
	for _, r := range p.Rules {
		if !r.matches(tv) {
			continue
		}
		if r.Probabilistic {
			return KeepByRate(id, r.Rate)
		}
		return r.Keep
	}
	return false
}

// traceVars evaluates a condition on each span of a trace, answering the
// trace-level fields $trace_duration (first start to last end, integer
// microseconds) and $span_count.
type traceVars struct {
	spans []Span
	cur   *Span
}

func (tv *traceVars) Field(name string) (filter.Value, bool) {
	switch name {
	case "$trace_duration":
		var lo, hi int64
		for i := range tv.spans {
			s := &tv.spans[i]
			if i == 0 || s.Start < lo {
				lo = s.Start
			}
			hi = max(hi, s.End())
		}
		return filter.IntValue((hi - lo) / 1000), true
	case "$span_count":
		return filter.IntValue(int64(len(tv.spans))), true
	}
	return tv.cur.Field(name)
}

// matches reports whether a span of the trace matches r. As in DataKit
// (pipelineMatchesPoint), a rule without a condition matches every trace
// when it is probabilistic and none when it is a condition rule.
func (r *Rule) matches(tv *traceVars) bool {
	if r.Cond == nil {
		return r.Probabilistic
	}
	for i := range tv.spans {
		tv.cur = &tv.spans[i]
		if r.Cond.Match(tv) {
			return true
		}
	}
	return false
}

// Advance decides the traces quiet for the policy's data_ttl at now (every
// held trace when final is set) and returns what is to be exported: kept
// traces and late spans of kept traces. It also forgets old decisions.
func (s *Sampler) Advance(now int64, final bool) []Trace {
	p := s.policy.Load()
	ttl := int64(DefaultDataTTL)
	if p != nil {
		ttl = int64(p.DataTTL)
	}
	var out []Trace
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		if final {
			for k, tr := range sh.traces {
				s.C.early(EarlyShutdown)
				s.releaseLocked(sh, k, tr)
				s.decideHeldLocked(sh, p, k, tr, now)
			}
			clear(sh.quiet)
		} else {
			s.decideQuietLocked(sh, p, now, ttl)
		}
		s.forgetDecisionsLocked(sh, now)
		out = append(out, sh.pending...)
		clear(sh.pending)
		sh.pending = sh.pending[:0]
		sh.mu.Unlock()
	}
	return out
}

package rules

import (
	"encoding/binary"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cespare/xxhash/v2"

	"github.com/aggd/aggd/internal/filter"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Counters count a rule's work. They are safe for concurrent use.
type Counters struct {
	Matched, Outputs atomic.Int64
	// Corrections counts windows sent again with late items merged in;
	// TooLate counts items the rule did not observe because their window
	// was drained and its late window has passed.
	Corrections, TooLate atomic.Int64
}

// Engine applies a rule Set. It keeps one state per aggregator shard, used
// under that shard's lock, and one for spans and events under its own
// lock, so rules add no lock every shard contends for.
type Engine struct {
	set       atomic.Pointer[Set]
	timing    window.Timing
	shards    []state
	spanMu    sync.Mutex
	spanState state
	watermark atomic.Int64
	counters  sync.Map // rule name → *Counters
	// kept holds drained groups, merged across shards, until their late
	// window has passed, by group key: late items merge into them and the
	// next drain sends their corrected outputs. Only Drain touches it.
	kept map[string]*group
	// owns, when set (cluster mode), says whether this replica owns a
	// rule group (GroupRef): samples feed only the groups it owns.
	owns func(h uint64, start int64) bool
	// routeEvents and routeSpans make events and spans feed only the
	// groups owns says are this replica's too (RouteEvents, RouteSpans);
	// marked ones (RulesOnly) always do.
	routeEvents, routeSpans bool
	// routing holds the states AppendGroups matches in.
	routing sync.Pool
}

// GroupRef places the rule groups of one rule, algorithm and window in a
// cluster: Hash is that of the tenant, rule, measurement and group values
// (the output series but for the algorithm), Start the window's start,
// whose member list picks the owner.
type GroupRef struct {
	Hash  uint64
	Start int64
}

type state struct {
	groups map[string]*group
	// restored are the windows an earlier process drained that replay
	// rebuilds from the write-ahead log: flushed, not to be sent again,
	// kept for late items. The next Drain moves them to the engine's kept
	// windows.
	restored map[string]*group
	scratch  []byte
	field    []byte // a histogram field's name, being matched
}

// group is one (tenant, rule, algorithm, window, measurement, group
// values) being aggregated: DataKit's calculator.
type group struct {
	tenant       *window.Tenant
	rule         *Rule
	alg          *Algorithm
	start, width int64
	late         bool
	// hasLE is set when the group's values include an le tag: histogram
	// sums its points then, and keeps the first otherwise, as DataKit does.
	hasLE bool
	tags  []string
	acc   acc
}

// NewEngine returns an engine for shards aggregator shards with window's
// time rules, applying set (nil: no rules).
func NewEngine(set *Set, shards int, cfg window.Config) *Engine {
	e := &Engine{timing: cfg.Timing(), shards: make([]state, shards), kept: map[string]*group{}}
	for i := range e.shards {
		e.shards[i].groups, e.shards[i].restored = map[string]*group{}, map[string]*group{}
	}
	e.spanState.groups, e.spanState.restored = map[string]*group{}, map[string]*group{}
	e.routing.New = func() any { return new(state) }
	e.SetRules(set)
	return e
}

// SetOwner makes the engine, from now on, feed a sample only to the rule
// groups for which owns(GroupRef.Hash, GroupRef.Start) holds: in a
// cluster, the replica aggregating a sample observes it for the groups it
// owns and sends it to the owners of the others (AppendGroups), as a
// sample marked RulesOnly. Call it before any sample comes in. Spans and
// events feed every group unless RouteSpans or RouteEvents was called,
// but for those marked RulesOnly.
func (e *Engine) SetOwner(owns func(h uint64, start int64) bool) { e.owns = owns }

// RouteEvents makes events, as samples, feed only the rule groups this
// replica owns (SetOwner): the replica that takes an event sends it to
// the owner of each other group it feeds (AppendEventGroups), marked
// RulesOnly. Call it before any event comes in.
func (e *Engine) RouteEvents() { e.routeEvents = true }

// RouteSpans makes spans, as samples, feed only the rule groups this
// replica owns (SetOwner): the replica running a span's trace sends it to
// the owner of each other group it feeds (AppendSpanGroups), marked
// RulesOnly. Call it before any span comes in.
func (e *Engine) RouteSpans() { e.routeSpans = true }

// SetRules replaces the rules. Windows already open finish with the rules
// they started with; samples from now on meet the new rules. No sample is
// seen by both.
func (e *Engine) SetRules(s *Set) {
	if s != nil {
		for _, r := range s.Rules {
			r.counters = e.Counters(r.Name)
		}
	}
	e.set.Store(s)
}

// Rules returns the rules in force.
func (e *Engine) Rules() *Set { return e.set.Load() }

// MaxWindow returns the widest window of the rules in force, in
// nanoseconds (0 without rules).
func (e *Engine) MaxWindow() int64 {
	if s := e.set.Load(); s != nil {
		return s.maxWindow
	}
	return 0
}

// Counters returns the counters of rule name.
func (e *Engine) Counters(name string) *Counters {
	if c, ok := e.counters.Load(name); ok {
		return c.(*Counters)
	}
	c, _ := e.counters.LoadOrStore(name, new(Counters))
	return c.(*Counters)
}

// DropOriginals reports whether samples a rule matches skip their own
// aggregation.
func (e *Engine) DropOriginals() bool {
	s := e.set.Load()
	return s != nil && s.DropOriginals
}

func tagValue(tags []string, key string) (string, bool) {
	for _, t := range tags {
		if len(t) > len(key) && t[len(key)] == ':' && t[:len(key)] == key {
			return t[len(key)+1:], true
		}
	}
	return "", false
}

// sampleRecord presents a sample to conditions as the field of a DataKit
// point: its tags by key (strings) and its own name as its value (a
// float).
type sampleRecord struct{ s *window.Sample }

func (r sampleRecord) Field(name string) (filter.Value, bool) {
	if v, ok := tagValue(r.s.Tags, name); ok {
		return filter.Str(v), true
	}
	if r.s.Hist != nil {
		v, ok := histField(r.s, name)
		return filter.Num(v), ok
	}
	if name == r.s.Name {
		return filter.Num(r.s.Value), true
	}
	return filter.Value{}, false
}

// histFields are the fields of the DataKit point an OTLP histogram point
// becomes, after the metric's name (cliutils otlp buildHistogramPoints and
// buildExponentialHistogramPoint): its exact moments.
var histFields = [...]string{"_min", "_max", "_count", "_sum"}

// histField returns field name of a histogram sample s, named after s as
// in histFields.
func histField(s *window.Sample, name string) (float64, bool) {
	rest, ok := strings.CutPrefix(name, s.Name)
	if !ok {
		return 0, false
	}
	switch h := s.Hist; rest {
	case "_min":
		return h.Min, true
	case "_max":
		return h.Max, true
	case "_count":
		return h.Count, true
	case "_sum":
		return h.Sum, true
	}
	return 0, false
}

// tagRecord gives a sample's tags only: the group_by keys a sample can
// carry.
type tagRecord struct{ s *window.Sample }

func (r tagRecord) Field(name string) (filter.Value, bool) {
	v, ok := tagValue(r.s.Tags, name)
	return filter.Str(v), ok
}

// windowStart returns the start of the window of width w holding ts. As
// in DataKit (AlignNextWallTime), a window holds the times after its start
// up to and including its end.
func windowStart(ts, w int64) int64 {
	t := ts - 1
	return t - ((t%w)+w)%w
}

// Due returns a tick by which every rule window a sample or span at ts
// falls in is drained.
func (e *Engine) Due(ts int64) int64 {
	set := e.set.Load()
	if set == nil {
		return ts
	}
	// The window of any rule holding ts ends by ts + the widest window.
	return e.timing.Due(ts, set.maxWindow)
}

// replayed reports whether the window of a holding ts was drained by the
// flush at cutoff, the cutoff of a replayed batch (zero: a live one): the
// item goes back into that window as flushed (see Resume).
func (e *Engine) replayed(a *Algorithm, ts, cutoff int64) bool {
	if cutoff == 0 {
		return false
	}
	w := int64(a.Window)
	return e.timing.Due(windowStart(ts, w), w) <= cutoff
}

// tooLate reports whether the window of a holding ts was drained and its
// late window has passed: an item for it is not observed.
func (e *Engine) tooLate(a *Algorithm, ts int64) bool {
	w := int64(a.Window)
	return e.timing.KeptUntil(windowStart(ts, w), w) < e.watermark.Load()
}

// Resume tells the engine, before replay and before any item, that an
// earlier process (before a restart) drained every window due at or before
// tick. Replay then gives back the items of the records that flush carried
// (their cutoff) and the engine restores the windows holding them that are
// still kept for late items, as flushed: they are not sent again, and a
// late item for one sends the window's corrected outputs over all its
// items, as before the restart. A window past its late window at tick
// takes no late item.
func (e *Engine) Resume(tick int64) {
	if tick > e.watermark.Load() {
		e.watermark.Store(tick)
	}
}

// target returns where an item at ts goes for algorithm a: the groups
// being aggregated, or, for an item of a replayed batch whose window the
// flush at cutoff drained, the restored windows; nil when the window's
// late window has passed, and then late is set for a live item.
func (e *Engine) target(st *state, a *Algorithm, ts, cutoff int64, late *bool) map[string]*group {
	switch replayed := e.replayed(a, ts, cutoff); {
	case e.tooLate(a, ts):
		// Flushed and past its late window: a replayed item has nothing
		// left to correct, a live one is too late.
		*late = *late || !replayed
		return nil
	case replayed:
		return st.restored
	}
	return st.groups
}

// ObserveSample applies the metric rules to s, which arrived at now, in
// aggregator shard shard. It reports whether a rule matched, and refuses
// (too_old, too_new) a matched sample whose time the windows refuse.
//
// As DataKit's RuleSelector does, a rule selects a sample when its name
// is in metric_name (names, or regular expressions after "reg:"), its
// measurement tag in measurements (when set) and the condition holds. Each
// algorithm reads its source_field: the sample's value when it is the
// sample's name, or a group_by tag's text.
//
// A sample for a window already drained joins it while its late window
// lasts (the next drain sends the window's corrected outputs); past it,
// the algorithm does not observe the sample (TooLate). When the rules drop
// the originals, such a sample is refused too_old instead, whole, since it
// would be lost.
//
// A replayed sample (cutoff non-zero) is matched but not added to windows
// the flush at cutoff drained.
func (e *Engine) ObserveSample(shard int, t *window.Tenant, s *window.Sample, now, cutoff int64) (bool, window.Reason) {
	set := e.set.Load()
	if set == nil {
		return false, window.Accepted
	}
	if s.Hist != nil {
		return e.observeHist(shard, set, t, s, now, cutoff)
	}
	named := set.byName[s.Name]
	if len(named) == 0 && len(set.byRegex) == 0 {
		return false, window.Accepted
	}
	ts := s.Timestamp
	if ts == 0 {
		ts = now
	}
	measurement, _ := tagValue(s.Tags, "measurement")
	var buf [8]*Rule
	matched := matchSample(set, s, named, measurement, buf[:0])
	if len(matched) == 0 {
		return false, window.Accepted
	}
	if r := e.admit(set, matched, ts, now, cutoff); r != window.Accepted {
		return true, r
	}
	st := &e.shards[shard]
	for _, r := range matched {
		if !s.RulesOnly { // counted once in a cluster: by the sample's aggregator
			r.counters.Matched.Add(1)
		}
		late := false
		h := e.groupHash(t, r, measurement, tagRecord{s})
		for i := range r.Algorithms {
			a := &r.Algorithms[i]
			if !e.mine(h, a, ts) {
				continue
			}
			groups := e.target(st, a, ts, cutoff, &late)
			if groups == nil {
				continue
			}
			if a.SourceField == s.Name {
				g := e.groupFor(st, groups, t, r, i, ts, measurement, tagRecord{s})
				if s.Values == nil {
					g.acc.add(a, filter.Num(s.Value), ts, g, &st.scratch)
				}
				for _, v := range s.Values {
					g.acc.add(a, filter.Num(v), ts, g, &st.scratch)
				}
			} else if v, ok := tagValue(s.Tags, a.SourceField); ok && v != "" && slices.Contains(r.GroupBy, a.SourceField) {
				g := e.groupFor(st, groups, t, r, i, ts, measurement, tagRecord{s})
				g.acc.add(a, filter.Str(v), ts, g, &st.scratch)
			}
		}
		if late {
			r.counters.TooLate.Add(1)
		}
	}
	return true, window.Accepted
}

// matchSample appends to matched the metric rules that select s, a
// sample that is not a histogram point: named (those naming s) and those
// with regular expressions.
func matchSample(set *Set, s *window.Sample, named []*Rule, measurement string, matched []*Rule) []*Rule {
	for li, list := range [2][]*Rule{named, set.byRegex} {
		for _, r := range list {
			if li == 1 && (slices.Contains(named, r) || !matchAny(r.metricNames, s.Name)) {
				continue
			}
			if len(r.measurements) > 0 && !matchAny(r.measurements, measurement) || !r.Cond.Match(sampleRecord{s}) {
				continue
			}
			matched = append(matched, r)
		}
	}
	return matched
}

// matchHist appends to matched the metric rules that select a field of s,
// a histogram point, as observeHist takes them; st's buffer builds the
// field names.
func (e *Engine) matchHist(st *state, set *Set, s *window.Sample, named []*Rule, measurement string, matched []*Rule) []*Rule {
	rec := sampleRecord{s}
	for li, list := range [2][]*Rule{named, set.byRegex} {
		for _, r := range list {
			if li == 1 && slices.Contains(named, r) || !e.selectsHist(st, r, s) {
				continue
			}
			if len(r.measurements) > 0 && !matchAny(r.measurements, measurement) || !r.Cond.Match(rec) {
				continue
			}
			matched = append(matched, r)
		}
	}
	return matched
}

// mine reports whether this replica owns the group of algorithm a holding
// ts among the groups of hash h (see SetOwner).
func (e *Engine) mine(h uint64, a *Algorithm, ts int64) bool {
	return e.owns == nil || e.owns(h, windowStart(ts, int64(a.Window)))
}

// groupHash returns the hash that places the groups of rule r that rec
// falls in, in measurement, for tenant t: the same in every replica. It is
// zero, and unused, outside a cluster.
func (e *Engine) groupHash(t *window.Tenant, r *Rule, measurement string, rec filter.Record) uint64 {
	if e.owns == nil {
		return 0
	}
	var d xxhash.Digest
	d.Reset()
	d.WriteString(t.ID)
	d.Write([]byte{2})
	d.WriteString(r.Name)
	d.Write([]byte{0})
	d.WriteString(measurement)
	for _, key := range r.GroupBy {
		// As groupFor's key: missing, a string, another value.
		switch v, ok := rec.Field(key); {
		case !ok:
			d.Write([]byte{0, 0})
		case v.Kind == filter.String:
			d.Write([]byte{0, 1})
			d.WriteString(v.Str)
		default:
			d.Write([]byte{0, 2})
			d.WriteString(valueString(v))
		}
	}
	return d.Sum64()
}

// AppendGroups appends to dst where the rule groups that sample s of
// tenant t, arriving at now, feeds are placed in a cluster: one GroupRef
// per matched metric rule and algorithm window. The replica aggregating s
// sends it to the owner of each (SetOwner). It takes no shard lock.
func (e *Engine) AppendGroups(dst []GroupRef, t *window.Tenant, s *window.Sample, now int64) []GroupRef {
	set := e.set.Load()
	if set == nil {
		return dst
	}
	named := set.byName[s.Name]
	if s.Hist != nil {
		named = set.byHist[s.Name]
	}
	if len(named) == 0 && len(set.byRegex) == 0 {
		return dst
	}
	ts := s.Timestamp
	if ts == 0 {
		ts = now
	}
	measurement, _ := tagValue(s.Tags, "measurement")
	var buf [8]*Rule
	var matched []*Rule
	if s.Hist != nil {
		st := e.routing.Get().(*state)
		matched = e.matchHist(st, set, s, named, measurement, buf[:0])
		e.routing.Put(st)
	} else {
		matched = matchSample(set, s, named, measurement, buf[:0])
	}
	for _, r := range matched {
		var rec filter.Record = tagRecord{s} // as ObserveSample's groups
		if s.Hist != nil {
			rec = sampleRecord{s} // as observeHist's
		}
		dst = appendRefs(dst, r, e.groupHash(t, r, measurement, rec), ts)
	}
	return dst
}

// appendRefs appends to dst, unless there already, the GroupRef of each
// algorithm window of rule r holding ts, for groups of hash h.
func appendRefs(dst []GroupRef, r *Rule, h uint64, ts int64) []GroupRef {
	for i := range r.Algorithms {
		ref := GroupRef{Hash: h, Start: windowStart(ts, int64(r.Algorithms[i].Window))}
		if !slices.Contains(dst, ref) {
			dst = append(dst, ref)
		}
	}
	return dst
}

// AppendEventGroups appends to dst where the logging rule groups that ev,
// an event of tenant t arriving at now, feeds are placed in a cluster, as
// AppendGroups does for a sample: one GroupRef per rule selecting a field
// of ev and algorithm window. The replica taking ev sends it to the owner
// of each (RouteEvents).
func (e *Engine) AppendEventGroups(dst []GroupRef, t *window.Tenant, ev *window.Event, now int64) []GroupRef {
	set := e.set.Load()
	if set == nil || len(set.logging) == 0 {
		return dst
	}
	ts := ev.Timestamp
	if ts == 0 {
		ts = now
	}
	if e.timing.Admit(ts, now) != window.Accepted {
		return dst // ObserveEvent does not observe it
	}
	measurement := logMeasurement(ev)
	rec := logPoint{ev}
	for _, r := range set.logging {
		if len(r.measurements) > 0 && !matchAny(r.measurements, measurement) || !r.Cond.Match(rec) {
			continue
		}
		for _, f := range logFields {
			if _, ok := ev.Field(f); ok && matchAny(r.metricNames, f) {
				dst = appendRefs(dst, r, e.groupHash(t, r, measurement, rec), ts)
				break
			}
		}
	}
	return dst
}

// AppendSpanGroups appends to dst where the tracing rule groups that sp,
// a span of tenant t arriving at now, feeds are placed in a cluster, as
// AppendEventGroups does for an event. The replica running sp's trace
// sends it to the owner of each (RouteSpans).
func (e *Engine) AppendSpanGroups(dst []GroupRef, t *window.Tenant, sp *spans.Span, now int64) []GroupRef {
	set := e.set.Load()
	if set == nil || len(set.tracing) == 0 {
		return dst
	}
	ts := sp.Start
	if e.timing.Admit(ts, now) != window.Accepted {
		return dst // ObserveSpan does not observe it
	}
	measurement := spanMeasurement(sp)
	for _, r := range set.tracing {
		if len(r.measurements) > 0 && !matchAny(r.measurements, measurement) || !r.Cond.Match(sp) {
			continue
		}
		if spanSelected(r, sp) {
			dst = appendRefs(dst, r, e.groupHash(t, r, measurement, sp), ts)
		}
	}
	return dst
}

// spanSelected reports whether metric_name of r selects a field of sp.
func spanSelected(r *Rule, sp *spans.Span) bool {
	for _, f := range spanFields {
		if matchAny(r.metricNames, f) {
			return true
		}
	}
	for _, at := range sp.Attrs {
		if matchAny(r.metricNames, at.Key) {
			return true
		}
	}
	return false
}

// admit decides whether a sample at ts arriving at now, which the rules
// matched selected, is taken: its time must be within the windows'
// bounds, and when the rules drop the originals every window it falls in
// must still take it (else it would be lost).
func (e *Engine) admit(set *Set, matched []*Rule, ts, now, cutoff int64) window.Reason {
	if r := e.timing.Admit(ts, now); r != window.Accepted {
		return r
	}
	if set.DropOriginals {
		for _, r := range matched {
			for i := range r.Algorithms {
				if a := &r.Algorithms[i]; !e.replayed(a, ts, cutoff) && e.tooLate(a, ts) {
					r.counters.TooLate.Add(1)
					return window.ReasonTooOld
				}
			}
		}
	}
	return window.Accepted
}

// observeHist applies the metric rules to s, a histogram aggregated before
// it arrived (an OTLP histogram point), as ObserveSample does. As in
// DataKit, the point's fields are its exact moments, <name>_min, _max,
// _count and _sum (histFields); metric_name selects them, and each
// selected field feeds the algorithms reading it, as a span's do.
func (e *Engine) observeHist(shard int, set *Set, t *window.Tenant, s *window.Sample, now, cutoff int64) (bool, window.Reason) {
	named := set.byHist[s.Name]
	if len(named) == 0 && len(set.byRegex) == 0 {
		return false, window.Accepted
	}
	ts := s.Timestamp
	if ts == 0 {
		ts = now
	}
	st := &e.shards[shard]
	measurement, _ := tagValue(s.Tags, "measurement")
	rec := sampleRecord{s}
	var buf [8]*Rule
	matched := e.matchHist(st, set, s, named, measurement, buf[:0])
	if len(matched) == 0 {
		return false, window.Accepted
	}
	if r := e.admit(set, matched, ts, now, cutoff); r != window.Accepted {
		return true, r
	}
	for _, r := range matched {
		late := false
		h := e.groupHash(t, r, measurement, rec)
		for _, f := range histFields {
			e.fork(st, t, r, rec, e.histName(st, s, f), ts, measurement, cutoff, &late, h, true)
		}
		e.count(r, !s.RulesOnly, late)
	}
	return true, window.Accepted
}

// histName returns the name of field f of histogram s, built in st's
// buffer: valid until the next call, and not to be kept.
func (e *Engine) histName(st *state, s *window.Sample, f string) string {
	st.field = append(append(st.field[:0], s.Name...), f...)
	return unsafe.String(unsafe.SliceData(st.field), len(st.field))
}

// selectsHist reports whether r's metric_name selects a field of s.
func (e *Engine) selectsHist(st *state, r *Rule, s *window.Sample) bool {
	for _, f := range histFields {
		if matchAny(r.metricNames, e.histName(st, s, f)) {
			return true
		}
	}
	return false
}

// spanMeasurement is a span's DataKit measurement: its source attribute,
// else opentelemetry.
func spanMeasurement(sp *spans.Span) string {
	for _, a := range sp.Attrs {
		if a.Key == "source" {
			return a.Value
		}
	}
	return "opentelemetry"
}

// spanFields are the fields of DataKit's span points, the keys metric_name
// selects; a span's attributes are fields too in aggd.
var spanFields = [...]string{"trace_id", "span_id", "parent_id", "resource", "start", "duration"}

// ObserveSpan applies the tracing rules to a span; it implements
// spans.Observer. A span is a DataKit span point timed at its start: each
// of its fields that metric_name selects feeds the algorithms reading it
// (and those reading a group_by key), as DataKit forks a point per
// selected field. cutoff is as for ObserveSample. It reports whether a
// rule selected a field of the span. A span marked RulesOnly (its trace
// runs on another replica), or any span after RouteSpans, feeds only the
// groups this replica owns; a marked one is not counted as matched, its
// trace's replica counted it.
func (e *Engine) ObserveSpan(t *window.Tenant, sp *spans.Span, now, cutoff int64) bool {
	set := e.set.Load()
	if set == nil || len(set.tracing) == 0 {
		return false
	}
	e.spanMu.Lock()
	defer e.spanMu.Unlock()
	ts := sp.Start
	if e.timing.Admit(ts, now) != window.Accepted {
		return false
	}
	st := &e.spanState
	measurement := spanMeasurement(sp)
	routed := e.routeSpans || sp.RulesOnly
	matched := false
	for _, r := range set.tracing {
		if len(r.measurements) > 0 && !matchAny(r.measurements, measurement) || !r.Cond.Match(sp) {
			continue
		}
		var h uint64
		if routed {
			h = e.groupHash(t, r, measurement, sp)
		}
		selected, late := false, false
		for _, f := range spanFields {
			selected = e.fork(st, t, r, sp, f, ts, measurement, cutoff, &late, h, routed) || selected
		}
		for _, at := range sp.Attrs {
			selected = e.fork(st, t, r, sp, at.Key, ts, measurement, cutoff, &late, h, routed) || selected
		}
		matched = matched || selected
		e.count(r, selected && !sp.RulesOnly, late)
	}
	return matched
}

// count counts an item rule r selected, and one some of whose windows were
// past their late window.
func (e *Engine) count(r *Rule, selected, late bool) {
	if selected {
		r.counters.Matched.Add(1)
	}
	if late {
		r.counters.TooLate.Add(1)
	}
}

// fork feeds field of rec, present in rec, to r's algorithms reading it
// (and those reading a group_by key) when metric_name selects it, as
// DataKit forks a point per selected field. It reports whether metric_name
// selected the field, and sets late when an algorithm's window was past
// its late window. st is locked by the caller.
//
// routed is set for a sample's fields, and for an event's or a span's
// when they are routed (RouteEvents, RouteSpans, RulesOnly): then only the groups of
// hash h this replica owns are fed (SetOwner).
func (e *Engine) fork(st *state, t *window.Tenant, r *Rule, rec filter.Record, field string, ts int64, measurement string, cutoff int64, late *bool, h uint64, routed bool) bool {
	if !matchAny(r.metricNames, field) {
		return false
	}
	for i := range r.Algorithms {
		a := &r.Algorithms[i]
		if a.SourceField != field && !slices.Contains(r.GroupBy, a.SourceField) || routed && !e.mine(h, a, ts) {
			continue
		}
		var (
			v  filter.Value
			ok bool
		)
		if a.Method == Count && a.SourceField == field {
			// A selected field is present, and count reads no value: a
			// span's ids are not formatted.
			v = filter.Str("")
		} else if v, ok = rec.Field(a.SourceField); !ok || v.Kind == filter.String && v.Str == "" && a.SourceField != field {
			continue
		}
		groups := e.target(st, a, ts, cutoff, late)
		if groups == nil {
			continue
		}
		g := e.groupFor(st, groups, t, r, i, ts, measurement, rec)
		g.acc.add(a, v, ts, g, &st.scratch)
	}
	return true
}

// logPoint presents an event as the DataKit log point it stands for: see
// window.Event.Field. Its values are strings, as a log point's message
// and status are.
type logPoint struct{ e *window.Event }

func (p logPoint) Field(name string) (filter.Value, bool) {
	v, ok := p.e.Field(name)
	return filter.Str(v), ok
}

// logFields are the fields of the DataKit log point an event stands for,
// the keys metric_name selects; its host and tags are the point's tags,
// which group_by and conditions read and metric_name does not select.
var logFields = [...]string{"message", "status", "title", "priority", "aggregation_key"}

// logMeasurement is an event's DataKit measurement: its source type (a
// log point's source), else DataKit's default source, "default".
func logMeasurement(ev *window.Event) string {
	if ev.SourceType != "" {
		return ev.SourceType
	}
	return "default"
}

// ObserveEvent applies the logging rules to ev, which arrived at now: ev
// is a DataKit log point (logFields, logMeasurement) timed at its
// timestamp, else at now. Each of its fields that metric_name selects
// feeds the algorithms reading it, as ObserveSpan does. An event whose
// time the windows refuse (too old, too new) is not observed; it is still
// sent on. cutoff is as for ObserveSample. It reports whether a rule
// selected a field of ev. An event marked RulesOnly (another replica took
// it), or any event after RouteEvents, feeds only the groups this replica
// owns; a marked one is not counted as matched.
func (e *Engine) ObserveEvent(t *window.Tenant, ev *window.Event, now, cutoff int64) bool {
	set := e.set.Load()
	if set == nil || len(set.logging) == 0 {
		return false
	}
	ts := ev.Timestamp
	if ts == 0 {
		ts = now
	}
	if e.timing.Admit(ts, now) != window.Accepted {
		return false
	}
	e.spanMu.Lock()
	defer e.spanMu.Unlock()
	st := &e.spanState
	measurement := logMeasurement(ev)
	rec := logPoint{ev}
	routed := e.routeEvents || ev.RulesOnly
	matched := false
	for _, r := range set.logging {
		if len(r.measurements) > 0 && !matchAny(r.measurements, measurement) || !r.Cond.Match(rec) {
			continue
		}
		var h uint64
		if routed {
			h = e.groupHash(t, r, measurement, rec)
		}
		selected, late := false, false
		for _, f := range logFields {
			if _, ok := ev.Field(f); ok {
				selected = e.fork(st, t, r, rec, f, ts, measurement, cutoff, &late, h, routed) || selected
			}
		}
		matched = matched || selected
		e.count(r, selected && !ev.RulesOnly, late)
	}
	return matched
}

func valueString(v filter.Value) string {
	switch v.Kind {
	case filter.Int:
		return strconv.FormatInt(v.I, 10)
	case filter.Float:
		return strconv.FormatFloat(v.Num, 'g', -1, 64)
	case filter.Bool:
		return strconv.FormatBool(v.Bool)
	}
	return v.Str
}

// groupFor finds or opens, in groups (st's open or restored groups), the
// group of (t, r, algorithm i, window of ts, measurement, group values). A
// group_by key an item lacks, or holds empty, is not a tag of the output,
// as in DataKit. The key is built in st's scratch, so finding an open
// group does not allocate.
func (e *Engine) groupFor(st *state, groups map[string]*group, t *window.Tenant, r *Rule, i int, ts int64, measurement string, rec filter.Record) *group {
	a := &r.Algorithms[i]
	width := int64(a.Window)
	start := windowStart(ts, width)
	k := append(st.scratch[:0], t.ID...)
	k = append(k, 0)
	k = append(k, r.Name...)
	k = binary.BigEndian.AppendUint64(append(k, 0, byte(i), byte(i>>8)), uint64(start))
	k = append(k, measurement...)
	for _, key := range r.GroupBy {
		v, ok := rec.Field(key)
		switch {
		case !ok:
			k = append(k, 0, 0)
		case v.Kind == filter.String:
			k = append(append(k, 0, 1), v.Str...)
		default:
			k = append(append(k, 0, 2), valueString(v)...)
		}
	}
	st.scratch = k
	if g := groups[string(k)]; g != nil {
		return g
	}
	g := &group{tenant: t, rule: r, alg: a, start: start, width: width,
		late: e.timing.Due(start, width) <= e.watermark.Load()}
	for _, key := range r.GroupBy {
		if v, ok := rec.Field(key); ok {
			if s := valueString(v); s != "" {
				g.tags = append(g.tags, key+":"+s)
			}
		}
	}
	for _, at := range a.AddTags { // the item's tags win, as in DataKit
		key, _, _ := strings.Cut(at, ":")
		if _, ok := tagValue(g.tags, key); !ok {
			g.tags = append(g.tags, at)
		}
	}
	if measurement != "" {
		g.tags = append(g.tags, "measurement:"+measurement)
	}
	g.hasLE = slices.ContainsFunc(g.tags, func(t string) bool { return strings.HasPrefix(t, "le:") })
	groups[string(k)] = g
	return g
}

// Drain removes the windows due at tick (all of them when final is set),
// merges them across shards and appends their outputs to out. Windows end
// like buckets: at the first tick at or after their end plus grace. shard
// states are read under their locks by lockShard.
//
// A drained window is kept, merged across shards, until its late window
// (window.Timing.KeptUntil) has passed. Items that reach it meanwhile
// gather in a group of their own, which the next drain merges into the
// kept one; that drain then sends every output of the kept window again,
// its corrected total, with the window's own timestamp and Late set, to
// replace what the intake holds.
func (e *Engine) Drain(tick int64, final bool, lockShard func(i int, f func()), out []window.Metric) []window.Metric {
	// The watermark moves first: an item a shard takes after its turn
	// below finds its window drained, and is refused once the kept window
	// is gone.
	if tick > e.watermark.Load() {
		e.watermark.Store(tick)
	}
	merged := map[string]*group{}
	var order []string
	take := func(st *state) {
		for k, g := range st.restored {
			delete(st.restored, k)
			e.restore(k, g)
		}
		for k, g := range st.groups {
			if !final && e.timing.Due(g.start, g.width) > tick {
				continue
			}
			delete(st.groups, k)
			if m, ok := merged[k]; ok {
				m.acc.merge(&g.acc, m)
				continue
			}
			merged[k] = g
			order = append(order, k)
		}
	}
	for i := range e.shards {
		lockShard(i, func() { take(&e.shards[i]) })
	}
	e.spanMu.Lock()
	take(&e.spanState)
	e.spanMu.Unlock()
	for _, k := range order {
		g := merged[k]
		if kg := e.kept[k]; kg != nil && sameMethod(kg.alg, g.alg) {
			kg.acc.merge(&g.acc, kg)
			kg.late = true
			g.rule.counters.Corrections.Add(1)
			out = e.outputs(kg, out)
			continue
		}
		out = e.outputs(g, out)
		if e.timing.KeptUntil(g.start, g.width) >= tick {
			e.kept[k] = g
		} else {
			delete(e.kept, k)
		}
	}
	for k, g := range e.kept {
		if e.timing.KeptUntil(g.start, g.width) < tick {
			delete(e.kept, k)
		}
	}
	return out
}

// restore makes g, a window replay rebuilt as flushed, a kept window, or
// merges it into the kept window of key k, rebuilt from another shard.
// Only Drain calls it.
func (e *Engine) restore(k string, g *group) {
	if kg := e.kept[k]; kg != nil && sameMethod(kg.alg, g.alg) {
		kg.acc.merge(&g.acc, kg)
		return
	}
	e.kept[k] = g
}

// sameMethod reports whether a window kept under algorithm a may take
// late items gathered under b: a rules reload may have changed the method
// of the same output.
func sameMethod(a, b *Algorithm) bool {
	return a == b || a.Method == b.Method && slices.Equal(a.Percentiles, b.Percentiles)
}

// outputs emits a group's series as DataKit's calculators' Aggr do: the
// output key and its <key>_count companion (quantiles: <key>_P<percent>
// and <key>_count).
func (e *Engine) outputs(g *group, out []window.Metric) []window.Metric {
	a, s := g.alg, &g.acc
	if s.n == 0 {
		return out
	}
	emitted := 0
	emit := func(name string, typ window.MetricType, v float64) {
		out = append(out, window.Metric{Tenant: g.tenant, Name: name, Timestamp: g.start, Interval: g.width, Late: g.late,
			Type: typ, Value: v, Tags: slices.Clone(g.tags)})
		emitted++
	}
	n := float64(s.n)
	switch a.Method {
	case Sum:
		emit(a.Output, window.TypeCount, s.sum)
	case Count:
		emit(a.Output, window.TypeCount, n)
	case Avg:
		emit(a.Output, window.TypeGauge, s.sum/n)
	case Min:
		emit(a.Output, window.TypeGauge, s.min)
	case Max:
		emit(a.Output, window.TypeGauge, s.max)
	case Stdev:
		if s.n < 2 { // DataKit's SampleStdDev refuses, and the group emits nothing
			return out
		}
		emit(a.Output, window.TypeGauge, math.Sqrt(s.m2/(n-1)))
	case First:
		emit(a.Output, window.TypeGauge, s.first)
	case Last:
		emit(a.Output, window.TypeGauge, s.last)
	case CountDistinct:
		n = float64(s.distinctCount())
		emit(a.Output, window.TypeGauge, n)
	case Histogram:
		emit(a.Output, window.TypeCount, s.hist)
	case Quantiles:
		n = float64(s.qn)
		slices.Sort(s.all)
		seen := map[string]bool{a.countName: true}
		for j, p := range a.Percentiles {
			if !seen[a.pNames[j]] { // DataKit's KVs.Add keeps the first of a name
				seen[a.pNames[j]] = true
				emit(a.pNames[j], window.TypeGauge, percentile(s.all, p))
			}
		}
	}
	emit(a.countName, window.TypeCount, n)
	g.rule.counters.Outputs.Add(int64(emitted))
	return out
}

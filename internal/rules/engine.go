package rules

import (
	"encoding/binary"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/DataDog/sketches-go/ddsketch"

	"github.com/aggd/aggd/internal/filter"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Counters count a rule's work. They are safe for concurrent use.
type Counters struct {
	Matched, Outputs atomic.Int64
}

// Engine applies a rule Set. It keeps one state per aggregator shard, used
// under that shard's lock, and one for spans under its own lock, so rules
// add no lock every shard contends for.
type Engine struct {
	set       atomic.Pointer[Set]
	timing    window.Timing
	shards    []state
	spanMu    sync.Mutex
	spanState state
	watermark atomic.Int64
	// cutoff skips windows drained at or before it, as a write-ahead log
	// is replayed; zero otherwise.
	cutoff   atomic.Int64
	counters sync.Map // rule name → *Counters
}

type state struct {
	groups  map[string]*group
	scratch []byte
	vals    []float64
}

// group is one (tenant, rule, window, group values) being aggregated.
type group struct {
	tenant       *window.Tenant
	rule         *Rule
	start, width int64
	late         bool
	tags         []string
	accs         []acc
}

// acc holds what every method needs; each method reads its part.
type acc struct {
	n, sum, min, max float64
	mean, m2         float64 // Welford, for stdev
	firstV, lastV    float64
	firstT, lastT    int64
	distinct         map[string]struct{}
	sketch           *ddsketch.DDSketch
	buckets          []float64 // counts, one more than the bounds
}

// NewEngine returns an engine for shards aggregator shards with window's
// time rules, applying set (nil: no rules).
func NewEngine(set *Set, shards int, cfg window.Config) *Engine {
	e := &Engine{timing: cfg.Timing(), shards: make([]state, shards)}
	for i := range e.shards {
		e.shards[i].groups = map[string]*group{}
	}
	e.spanState.groups = map[string]*group{}
	e.SetRules(set)
	return e
}

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

// sampleRecord presents a sample to conditions as the field of a DataKit
// point: its tags by key (strings) and its own name as its value (a
// float).
type sampleRecord struct{ s *window.Sample }

func tagValue(tags []string, key string) (string, bool) {
	for _, t := range tags {
		if len(t) > len(key) && t[len(key)] == ':' && t[:len(key)] == key {
			return t[len(key)+1:], true
		}
	}
	return "", false
}

func (r sampleRecord) Field(name string) (filter.Value, bool) {
	if v, ok := tagValue(r.s.Tags, name); ok {
		return filter.Str(v), true
	}
	if name == r.s.Name {
		return filter.Num(r.s.Value), true
	}
	return filter.Value{}, false
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

// SetReplayCutoff makes the engine skip the windows drained at or before
// tick while a write-ahead log is replayed; zero ends it.
func (e *Engine) SetReplayCutoff(tick int64) { e.cutoff.Store(tick) }

// replayed reports whether the window of r holding ts was drained before
// the crash being replayed.
func (e *Engine) replayed(r *Rule, ts int64) bool {
	c := e.cutoff.Load()
	if c == 0 {
		return false
	}
	return e.timing.WindowDue(ts, int64(r.Window)) <= c
}

// ObserveSample applies the metric rules to s, which arrived at now, in
// aggregator shard shard. It reports whether a rule matched, and refuses
// (too_old, too_new) a matched sample whose time the windows refuse.
func (e *Engine) ObserveSample(shard int, t *window.Tenant, s *window.Sample, now int64) (bool, window.Reason) {
	set := e.set.Load()
	if set == nil {
		return false, window.Accepted
	}
	named := set.byName[s.Name]
	if len(named) == 0 && len(set.anyName) == 0 {
		return false, window.Accepted
	}
	ts := s.Timestamp
	if ts == 0 {
		ts = now
	}
	st := &e.shards[shard]
	matched := false
	for _, list := range [2][]*Rule{named, set.anyName} {
		for _, r := range list {
			if !e.matchSample(r, s) {
				continue
			}
			if !matched {
				if r := e.timing.Admit(ts, now); r != window.Accepted {
					return true, r
				}
			}
			matched = true
			if e.replayed(r, ts) {
				continue
			}
			r.counters.Matched.Add(1)
			g := e.groupFor(st, t, r, ts, func(key string) (string, bool) { return tagValue(s.Tags, key) })
			for i := range r.Algorithms {
				a := &r.Algorithms[i]
				if a.SourceField == s.Name {
					st.vals = st.vals[:0]
					if s.Values != nil {
						st.vals = append(st.vals, s.Values...)
					} else {
						st.vals = append(st.vals, s.Value)
					}
					for _, v := range st.vals {
						g.accs[i].add(a, v, "", ts)
					}
				} else if v, ok := tagValue(s.Tags, a.SourceField); ok {
					f, _ := strconv.ParseFloat(v, 64)
					g.accs[i].add(a, f, v, ts)
				}
			}
		}
	}
	return matched, window.Accepted
}

func (e *Engine) matchSample(r *Rule, s *window.Sample) bool {
	if len(r.Measurements) > 0 {
		m, _ := tagValue(s.Tags, "measurement")
		if !slices.Contains(r.Measurements, m) {
			return false
		}
	}
	return r.Cond.Match(sampleRecord{s})
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

// ObserveSpan applies the tracing rules to a span; it implements
// spans.Observer. A rule's metric_name lists span fields that must be
// present.
func (e *Engine) ObserveSpan(t *window.Tenant, sp *spans.Span, now int64) {
	set := e.set.Load()
	if set == nil || len(set.tracing) == 0 {
		return
	}
	e.spanMu.Lock()
	defer e.spanMu.Unlock()
	ts := sp.End()
	if e.timing.Admit(ts, now) != window.Accepted {
		return
	}
	st := &e.spanState
	for _, r := range set.tracing {
		if len(r.Measurements) > 0 && !slices.Contains(r.Measurements, spanMeasurement(sp)) {
			continue
		}
		present := true
		for _, f := range r.MetricNames {
			if _, ok := sp.Field(f); !ok {
				present = false
				break
			}
		}
		if !present || !r.Cond.Match(sp) || e.replayed(r, ts) {
			continue
		}
		r.counters.Matched.Add(1)
		g := e.groupFor(st, t, r, ts, func(key string) (string, bool) {
			v, ok := sp.Field(key)
			return valueString(v), ok
		})
		for i := range r.Algorithms {
			a := &r.Algorithms[i]
			if v, ok := sp.Field(a.SourceField); ok {
				f := v.Num
				switch v.Kind {
				case filter.Int:
					f = float64(v.I)
				case filter.String:
					f, _ = strconv.ParseFloat(v.Str, 64)
				}
				g.accs[i].add(a, f, valueString(v), ts)
			}
		}
	}
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

// groupFor finds or opens the group of (t, r, window of ts, group values).
// The key is built in scratch, so finding an open group does not allocate.
func (e *Engine) groupFor(st *state, t *window.Tenant, r *Rule, ts int64, lookup func(string) (string, bool)) *group {
	width := int64(r.Window)
	start := window.Start(ts, width)
	k := append(st.scratch[:0], t.ID...)
	k = append(k, 0)
	k = append(k, r.Name...)
	k = binary.BigEndian.AppendUint64(append(k, 0), uint64(start))
	for _, key := range r.GroupBy {
		v, _ := lookup(key)
		k = append(append(k, 0), v...)
	}
	st.scratch = k
	if g := st.groups[string(k)]; g != nil {
		return g
	}
	g := &group{tenant: t, rule: r, start: start, width: width, accs: make([]acc, len(r.Algorithms)),
		late: e.timing.Due(start, width) <= e.watermark.Load()}
	for _, key := range r.GroupBy {
		v, _ := lookup(key)
		g.tags = append(g.tags, key+":"+v)
	}
	st.groups[string(k)] = g
	return g
}

// add counts value v (text s, or "" for a sample's own value) at ts.
func (a *acc) add(alg *Algorithm, v float64, s string, ts int64) {
	a.n++
	a.sum += v
	if a.n == 1 {
		a.min, a.max, a.firstV, a.firstT, a.lastV, a.lastT = v, v, v, ts, v, ts
	} else {
		a.min, a.max = math.Min(a.min, v), math.Max(a.max, v)
		if ts < a.firstT {
			a.firstV, a.firstT = v, ts
		}
		if ts >= a.lastT {
			a.lastV, a.lastT = v, ts
		}
	}
	d := v - a.mean
	a.mean += d / a.n
	a.m2 += d * (v - a.mean)
	switch alg.Method {
	case CountDistinct:
		if a.distinct == nil {
			a.distinct = map[string]struct{}{}
		}
		if s == "" { // a sample's own value: only this method needs its text
			s = strconv.FormatFloat(v, 'g', -1, 64)
		}
		if _, ok := a.distinct[s]; !ok {
			a.distinct[strings.Clone(s)] = struct{}{}
		}
	case Quantiles:
		if a.sketch == nil {
			a.sketch, _ = ddsketch.LogCollapsingLowestDenseDDSketch(window.RelativeAccuracy, 2048)
		}
		a.sketch.Add(v)
	case Histogram:
		if a.buckets == nil {
			a.buckets = make([]float64, len(alg.Buckets)+1)
		}
		i := len(alg.Buckets)
		for j, b := range alg.Buckets {
			if v <= b {
				i = j
				break
			}
		}
		a.buckets[i]++
	}
}

// merge folds o, the same algorithm's state from another shard, into a.
func (a *acc) merge(o *acc) {
	if o.n == 0 {
		return
	}
	if a.n == 0 {
		*a = *o
		return
	}
	n := a.n + o.n
	d := o.mean - a.mean
	a.m2 += o.m2 + d*d*a.n*o.n/n
	a.mean += d * o.n / n
	a.n, a.sum = n, a.sum+o.sum
	a.min, a.max = math.Min(a.min, o.min), math.Max(a.max, o.max)
	if o.firstT < a.firstT {
		a.firstV, a.firstT = o.firstV, o.firstT
	}
	if o.lastT >= a.lastT {
		a.lastV, a.lastT = o.lastV, o.lastT
	}
	for k := range o.distinct {
		if a.distinct == nil {
			a.distinct = map[string]struct{}{}
		}
		a.distinct[k] = struct{}{}
	}
	if o.sketch != nil {
		if a.sketch == nil {
			a.sketch = o.sketch
		} else {
			a.sketch.MergeWith(o.sketch)
		}
	}
	for i, c := range o.buckets {
		if a.buckets == nil {
			a.buckets = make([]float64, len(o.buckets))
		}
		a.buckets[i] += c
	}
}

// Drain removes the windows due at tick (all of them when all is set),
// merges them across shards and appends their outputs to out. Windows end
// like buckets: at the first tick at or after their end plus grace. shard
// states are read under their locks by lockShard.
func (e *Engine) Drain(tick int64, all bool, lockShard func(i int, f func()), out []window.Metric) []window.Metric {
	merged := map[string]*group{}
	var order []string
	take := func(st *state) {
		for k, g := range st.groups {
			if !all && e.timing.Due(g.start, g.width) > tick {
				continue
			}
			delete(st.groups, k)
			if m, ok := merged[k]; ok {
				for i := range m.accs {
					m.accs[i].merge(&g.accs[i])
				}
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
	if tick > e.watermark.Load() {
		e.watermark.Store(tick)
	}
	for _, k := range order {
		out = e.outputs(merged[k], out)
	}
	return out
}

func (e *Engine) outputs(g *group, out []window.Metric) []window.Metric {
	emitted := 0
	for i := range g.rule.Algorithms {
		a, s := &g.rule.Algorithms[i], &g.accs[i]
		if s.n == 0 {
			continue
		}
		m := window.Metric{Tenant: g.tenant, Name: a.Output, Timestamp: g.start, Interval: g.width, Late: g.late, Type: window.TypeGauge}
		tags := append(append([]string(nil), g.tags...), a.AddTags...)
		emit := func(typ window.MetricType, v float64, extra ...string) {
			mm := m
			mm.Type, mm.Value = typ, v
			mm.Tags = append(append([]string(nil), tags...), extra...)
			out = append(out, mm)
			emitted++
		}
		switch a.Method {
		case Sum:
			emit(window.TypeCount, s.sum)
		case Count:
			emit(window.TypeCount, s.n)
		case Avg:
			emit(window.TypeGauge, s.sum/s.n)
		case Min:
			emit(window.TypeGauge, s.min)
		case Max:
			emit(window.TypeGauge, s.max)
		case Stdev:
			emit(window.TypeGauge, math.Sqrt(s.m2/s.n))
		case First:
			emit(window.TypeGauge, s.firstV)
		case Last:
			emit(window.TypeGauge, s.lastV)
		case CountDistinct:
			emit(window.TypeGauge, float64(len(s.distinct)))
		case Quantiles:
			q := window.Metric{Sketch: s.sketch, Min: s.min, Max: s.max}
			for _, p := range a.Quantiles {
				emit(window.TypeGauge, q.Quantile(p), "quantile:"+strconv.FormatFloat(p, 'g', -1, 64))
			}
		case Histogram:
			cum := 0.0
			for j, c := range s.buckets {
				cum += c
				le := "+Inf"
				if j < len(a.Buckets) {
					le = strconv.FormatFloat(a.Buckets[j], 'g', -1, 64)
				}
				emit(window.TypeCount, cum, "le:"+le)
			}
		}
	}
	g.rule.counters.Outputs.Add(int64(emitted))
	return out
}

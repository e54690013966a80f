package window

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

const sec = int64(time.Second)

// t0 is an arrival time at the start of a 10 s bucket.
const t0 = int64(1_700_000_000) * sec

type in struct {
	name  string
	typ   MetricType
	v     float64
	vals  []float64
	tags  []string
	rate  float64
	ts    int64 // sample timestamp
	now   int64 // arrival, default t0
	set   string
	host  string
	wantR Reason
}

type out struct {
	key   string // name|host|tags
	ts    int64
	value float64
	count float64
	sum   float64
	min   float64
	max   float64
	late  bool
}

func testConfig() Config {
	c := DefaultConfig()
	c.MaxSetSize = 3
	c.CounterExpiry = 0 // TestCounterZeroFill covers it
	return c
}

func add(t *testing.T, sh *Shard, tn *Tenant, s in) Reason {
	t.Helper()
	smp := Sample{Name: s.name, Type: s.typ, Value: s.v, Values: s.vals, Tags: slices.Clone(s.tags), SampleRate: s.rate, Timestamp: s.ts, SetMember: s.set, Host: s.host}
	if smp.SampleRate == 0 {
		smp.SampleRate = 1
	}
	smp.Prepare(tn, nil)
	now := s.now
	if now == 0 {
		now = t0
	}
	return sh.Add(tn, &smp, now)
}

func collect(buckets []*Bucket) []out {
	var got []out
	for _, b := range buckets {
		for m := range b.Metrics() {
			o := out{key: m.Name + "|" + m.Host + "|" + strings.Join(m.Tags, ","), ts: m.Timestamp / sec, value: m.Value, late: m.Late}
			if m.IsDist() {
				o.count, o.sum, o.min, o.max = m.Count, m.Sum, m.Min, m.Max
			}
			got = append(got, o)
		}
		b.Release()
	}
	sort.Slice(got, func(i, j int) bool {
		if got[i].key != got[j].key {
			return got[i].key < got[j].key
		}
		return got[i].ts < got[j].ts
	})
	return got
}

func TestShardSemantics(t *testing.T) {
	bs := t0 / sec // bucket start in seconds
	tests := []struct {
		name string
		in   []in
		want []out
	}{
		{"gauge last by timestamp, ties last received",
			[]in{
				{name: "g", typ: TypeGauge, v: 1, ts: t0 + 3*sec},
				{name: "g", typ: TypeGauge, v: 2, ts: t0 + 1*sec},
				{name: "g", typ: TypeGauge, v: 3, ts: t0 + 3*sec},
			},
			[]out{{key: "g||", ts: bs, value: 3}}},
		{"count divides by sample rate",
			[]in{
				{name: "c", typ: TypeCount, v: 1, rate: 0.5},
				{name: "c", typ: TypeCount, v: 2},
				{name: "c", typ: TypeCount, vals: []float64{1, 1, 1}},
			},
			[]out{{key: "c||", ts: bs, value: 7}}},
		{"tags sorted and deduplicated make one context",
			[]in{
				{name: "c", typ: TypeCount, v: 1, tags: []string{"b:2", "a:1"}},
				{name: "c", typ: TypeCount, v: 1, tags: []string{"a:1", "b:2", "a:1", ""}},
				{name: "c", typ: TypeCount, v: 1, tags: []string{"a:1"}},
				{name: "c", typ: TypeCount, v: 1, tags: []string{"a:1"}, host: "h"},
			},
			[]out{{key: "c|h|a:1", ts: bs, value: 1}, {key: "c||a:1", ts: bs, value: 1}, {key: "c||a:1,b:2", ts: bs, value: 2}}},
		{"rate of the last two samples",
			[]in{
				{name: "r", typ: TypeRate, v: 10, ts: t0},
				{name: "r", typ: TypeRate, v: 20, ts: t0 + 2*sec},
				{name: "r", typ: TypeRate, v: 50, ts: t0 + 4*sec},
			},
			[]out{{key: "r||", ts: bs, value: 15}}},
		{"rate keeps the previous sample across buckets",
			[]in{
				{name: "r", typ: TypeRate, v: 10, ts: t0 + 8*sec},
				{name: "r", typ: TypeRate, v: 30, ts: t0 + 12*sec},
			},
			[]out{{key: "r||", ts: bs + 10, value: 5}}},
		{"rate: single sample or negative gives no point",
			[]in{
				{name: "r1", typ: TypeRate, v: 10, ts: t0},
				{name: "r2", typ: TypeRate, v: 10, ts: t0},
				{name: "r2", typ: TypeRate, v: 5, ts: t0 + sec},
			},
			nil},
		{"monotonic count sums positive deltas, resets count from the new delta",
			[]in{
				{name: "m", typ: TypeMonotonicCount, v: 100},
				{name: "m", typ: TypeMonotonicCount, v: 110},
				{name: "m", typ: TypeMonotonicCount, v: 115},
				{name: "m", typ: TypeMonotonicCount, v: 3},
				{name: "m", typ: TypeMonotonicCount, v: 8},
			},
			[]out{{key: "m||", ts: bs, value: 20}}},
		{"monotonic count: first sample ever gives no point",
			[]in{{name: "m", typ: TypeMonotonicCount, v: 100}},
			nil},
		{"monotonic count carries across buckets",
			[]in{
				{name: "m", typ: TypeMonotonicCount, v: 100, ts: t0 + 9*sec},
				{name: "m", typ: TypeMonotonicCount, v: 104, ts: t0 + 11*sec},
			},
			[]out{{key: "m||", ts: bs + 10, value: 4}}},
		{"histogram weights count and sum by 1/rate, min/max exact",
			[]in{
				{name: "h", typ: TypeHistogram, v: 2, rate: 0.5},
				{name: "h", typ: TypeHistogram, vals: []float64{1, 7}},
			},
			[]out{{key: "h||", ts: bs, count: 4, sum: 12, min: 1, max: 7}}},
		{"distribution and timing",
			[]in{
				{name: "d", typ: TypeDistribution, vals: []float64{-5, 0, 5}},
				{name: "t", typ: TypeTiming, v: 3},
			},
			[]out{{key: "d||", ts: bs, count: 3, sum: 0, min: -5, max: 5}, {key: "t||", ts: bs, count: 1, sum: 3, min: 3, max: 3}}},
		{"set counts distinct members up to the bound",
			[]in{
				{name: "s", typ: TypeSet, set: "a"},
				{name: "s", typ: TypeSet, set: "b"},
				{name: "s", typ: TypeSet, set: "a"},
				{name: "s", typ: TypeSet, set: "c"},
				{name: "s", typ: TypeSet, set: "d", wantR: ReasonSetLimit},
				{name: "s", typ: TypeSet, set: "b"},
			},
			[]out{{key: "s||", ts: bs, value: 3}}},
		{"type conflict in the same bucket; a new bucket may change type",
			[]in{
				{name: "x", typ: TypeGauge, v: 1},
				{name: "x", typ: TypeCount, v: 1, wantR: ReasonTypeConflict},
				{name: "x", typ: TypeCount, v: 1, ts: t0 + 10*sec, now: t0 + 10*sec},
			},
			[]out{{key: "x||", ts: bs, value: 1}, {key: "x||", ts: bs + 10, value: 1}}},
		{"timestamped samples: too old and too new",
			[]in{
				{name: "c", typ: TypeCount, v: 1, ts: t0 - int64(time.Hour) - 1, wantR: ReasonTooOld},
				{name: "c", typ: TypeCount, v: 1, ts: t0 + int64(10*time.Minute) + 1, wantR: ReasonTooNew},
				{name: "c", typ: TypeCount, v: 2, ts: t0 - int64(time.Hour)},
				{name: "c", typ: TypeCount, v: 3, ts: t0 + int64(10*time.Minute)},
			},
			[]out{{key: "c||", ts: bs - 3600, value: 2}, {key: "c||", ts: bs + 600, value: 3}}},
		{"arrival time used without timestamp",
			[]in{{name: "c", typ: TypeCount, v: 1, now: t0 + 25*sec}},
			[]out{{key: "c||", ts: bs + 20, value: 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sh := NewShard(testConfig())
			tn := NewTenant("t")
			for i, s := range tt.in {
				if got := add(t, sh, tn, s); got != s.wantR {
					t.Errorf("sample %d: got %v, want %v", i, got, s.wantR)
				}
			}
			got := collect(sh.Drain(t0, true, nil))
			if !slices.Equal(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestDrainGraceAndLatePartials(t *testing.T) {
	sh := NewShard(testConfig()) // interval 10s, grace 2s
	tn := NewTenant("t")
	add(t, sh, tn, in{name: "c", typ: TypeCount, v: 1, now: t0 + 9*sec})
	// At t0+10s the bucket has ended but is in its grace period.
	if got := collect(sh.Drain(t0+10*sec, false, nil)); len(got) != 0 {
		t.Fatalf("drained during grace: %+v", got)
	}
	add(t, sh, tn, in{name: "c", typ: TypeCount, v: 2, ts: t0 + 5*sec, now: t0 + 11*sec})
	got := collect(sh.Drain(t0+20*sec, false, nil))
	want := []out{{key: "c||", ts: t0 / sec, value: 3}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	// A sample for the flushed bucket corrects it: the bucket is handed
	// out again with the context's total, to replace what was flushed.
	add(t, sh, tn, in{name: "c", typ: TypeCount, v: 4, ts: t0 + 1*sec, now: t0 + 21*sec})
	got = collect(sh.Drain(t0+30*sec, false, nil))
	want = []out{{key: "c||", ts: t0 / sec, value: 7, late: true}}
	if !slices.Equal(got, want) {
		t.Fatalf("late: got %+v, want %+v", got, want)
	}
	// Nothing new: nothing is sent again.
	if got := collect(sh.Drain(t0+40*sec, false, nil)); len(got) != 0 {
		t.Fatalf("drained %+v with no late sample", got)
	}
}

func TestLateCorrections(t *testing.T) {
	cfg := testConfig() // interval 10s, grace 2s, max lateness 1h, 3 set members
	late := t0 + 21*sec // the bucket at t0 was flushed at t0+20s
	bs := t0 / sec
	tests := []struct {
		name         string
		onTime, late []in
		want         []out // the correction
	}{
		{"only the contexts late samples change are resent",
			[]in{{name: "a", typ: TypeCount, v: 1, ts: t0}, {name: "b", typ: TypeCount, v: 1, ts: t0}},
			[]in{{name: "b", typ: TypeCount, v: 2, ts: t0 + 9*sec, now: late}},
			[]out{{key: "b||", ts: bs, value: 3, late: true}}},
		{"gauge: an older late sample leaves the value, a newer one replaces it",
			[]in{{name: "g", typ: TypeGauge, v: 1, ts: t0 + 5*sec}, {name: "h", typ: TypeGauge, v: 1, ts: t0 + 5*sec}},
			[]in{{name: "g", typ: TypeGauge, v: 2, ts: t0 + 4*sec, now: late}, {name: "h", typ: TypeGauge, v: 3, ts: t0 + 6*sec, now: late}},
			[]out{{key: "g||", ts: bs, value: 1, late: true}, {key: "h||", ts: bs, value: 3, late: true}}},
		{"distributions merge",
			[]in{{name: "d", typ: TypeDistribution, vals: []float64{1, 2}, ts: t0}},
			[]in{{name: "d", typ: TypeDistribution, vals: []float64{5}, ts: t0, now: late}},
			[]out{{key: "d||", ts: bs, count: 3, sum: 8, min: 1, max: 5, late: true}}},
		{"sets: members already held are not counted twice, the bound covers both",
			[]in{{name: "s", typ: TypeSet, set: "a", ts: t0}, {name: "s", typ: TypeSet, set: "b", ts: t0}},
			[]in{{name: "s", typ: TypeSet, set: "b", ts: t0, now: late}, {name: "s", typ: TypeSet, set: "c", ts: t0, now: late},
				{name: "s", typ: TypeSet, set: "d", ts: t0, now: late, wantR: ReasonSetLimit}},
			[]out{{key: "s||", ts: bs, value: 3, late: true}}},
		{"the flushed type decides conflicts",
			[]in{{name: "x", typ: TypeGauge, v: 1, ts: t0}},
			[]in{{name: "x", typ: TypeCount, v: 1, ts: t0, now: late, wantR: ReasonTypeConflict}},
			nil},
		{"a range flushed with no timestamped sample cannot be corrected exactly: refused",
			[]in{{name: "c", typ: TypeCount, v: 1}},
			[]in{{name: "c", typ: TypeCount, v: 1, ts: t0, now: late, wantR: ReasonTooOld}},
			nil},
		{"a range nothing was flushed for takes late samples as its whole",
			nil,
			[]in{{name: "c", typ: TypeCount, v: 2, ts: t0, now: late}},
			[]out{{key: "c||", ts: bs, value: 2, late: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sh := NewShard(cfg)
			tn := NewTenant("t")
			for _, s := range tt.onTime {
				if r := add(t, sh, tn, s); r != Accepted {
					t.Fatalf("on time %s: %v", s.name, r)
				}
			}
			collect(sh.Drain(t0+20*sec, false, nil))
			for _, s := range tt.late {
				if got := add(t, sh, tn, s); got != s.wantR {
					t.Errorf("late %s: got %v, want %v", s.name, got, s.wantR)
				}
			}
			if got := collect(sh.Drain(t0+30*sec, false, nil)); !slices.Equal(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestArrivalTimeSamplesAreNeverLate(t *testing.T) {
	sh := NewShard(testConfig())
	tn := NewTenant("t")
	add(t, sh, tn, in{name: "c", typ: TypeCount, v: 1, now: t0 + 9*sec})
	collect(sh.Drain(t0+20*sec, false, nil))
	// Arrived at t0+9s, added after the tick that flushed its bucket: it
	// goes to the bucket open at the last tick.
	if r := add(t, sh, tn, in{name: "c", typ: TypeCount, v: 2, now: t0 + 9*sec}); r != Accepted {
		t.Fatalf("got %v", r)
	}
	got := collect(sh.Drain(t0+40*sec, false, nil))
	if want := []out{{key: "c||", ts: t0/sec + 20, value: 2}}; !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// TestCounterZeroFill follows the Agent's TimeSampler: a counter context is
// flushed with 0 in every interval bucket it has no sample in, while the
// bucket starts before its last sample plus the expiry
// (countersSampleZeroValue: expiry + lastSampled > bucket start).
func TestCounterZeroFill(t *testing.T) {
	cfg := testConfig()
	cfg.CounterExpiry = 30 * time.Second
	sh := NewShard(cfg)
	tn := NewTenant("t")
	// The shard's first drain, at t0: no bucket before it is zero-filled.
	collect(sh.Drain(t0, false, nil))
	add(t, sh, tn, in{name: "c", typ: TypeCount, v: 2, now: t0 + 5*sec})
	add(t, sh, tn, in{name: "g", typ: TypeGauge, v: 1, now: t0 + 5*sec})
	var got []out
	for tick := t0 + 20*sec; tick <= t0+90*sec; tick += 10 * sec {
		if tick == t0+40*sec { // a sample in [t0+30, t0+40) pushes expiry on
			add(t, sh, tn, in{name: "c", typ: TypeCount, v: 3, now: t0 + 31*sec})
		}
		got = append(got, collect(sh.Drain(tick, false, nil))...)
	}
	sort.Slice(got, func(i, j int) bool {
		return got[i].key < got[j].key || got[i].key == got[j].key && got[i].ts < got[j].ts
	})
	bs := t0 / sec
	want := []out{
		{key: "c||", ts: bs, value: 2},
		{key: "c||", ts: bs + 10, value: 0},
		{key: "c||", ts: bs + 20, value: 0},
		{key: "c||", ts: bs + 30, value: 3},
		{key: "c||", ts: bs + 40, value: 0},
		{key: "c||", ts: bs + 50, value: 0},
		{key: "c||", ts: bs + 60, value: 0}, // 31 + 30 > 60
		{key: "g||", ts: bs, value: 1},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
	// The bucket at t0+70 is past t0+31+30: the counter left the list.
	if n := len(sh.counters); n != 0 {
		t.Fatalf("%d counters still zero-filled", n)
	}
}

// TestZeroFillSparesBucketsBeforeTheFirstDrain replays samples from before
// a restart: the buckets they fall in may hold what the previous process
// sent, so no zero may replace it.
func TestZeroFillSparesBucketsBeforeTheFirstDrain(t *testing.T) {
	cfg := testConfig()
	cfg.CounterExpiry = 5 * time.Minute
	sh := NewShard(cfg)
	tn := NewTenant("t")
	add(t, sh, tn, in{name: "c", typ: TypeCount, v: 2, now: t0 + 5*sec}) // replayed
	got := collect(sh.Drain(t0+40*sec, false, nil))
	got = append(got, collect(sh.Drain(t0+50*sec, false, nil))...) // [t0+30, t0+40) started before
	got = append(got, collect(sh.Drain(t0+60*sec, false, nil))...)
	want := []out{{key: "c||", ts: t0 / sec, value: 2}, {key: "c||", ts: t0/sec + 40, value: 0}}
	if !slices.Equal(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

// TestLateWindow keeps a flushed bucket for the late window only: a late
// sample for it after that is refused, while a range the shard never
// flushed still takes samples up to max lateness.
func TestLateWindow(t *testing.T) {
	cfg := testConfig()
	cfg.LateWindow = 30 * time.Second
	sh := NewShard(cfg)
	tn := NewTenant("t")
	add(t, sh, tn, in{name: "c", typ: TypeCount, v: 1, ts: t0})
	for tick := t0 + 20*sec; tick <= t0+50*sec; tick += 10 * sec {
		collect(sh.Drain(tick, false, nil))
	}
	// Due at t0+12s, kept until t0+42s: the drain at t0+50s let it go.
	if r := add(t, sh, tn, in{name: "c", typ: TypeCount, v: 1, ts: t0, now: t0 + 51*sec}); r != ReasonTooOld {
		t.Fatalf("late sample past the late window: %v, want too_old", r)
	}
	if r := add(t, sh, tn, in{name: "c", typ: TypeCount, v: 5, ts: t0 - 20*sec, now: t0 + 51*sec}); r != Accepted {
		t.Fatalf("sample for a range never flushed: %v", r)
	}
	if got, want := collect(sh.Drain(t0+60*sec, false, nil)), []out{{key: "c||", ts: t0/sec - 20, value: 5, late: true}}; !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestKeptBucketsLastMaxLateness(t *testing.T) {
	cfg := testConfig()
	cfg.MaxLateness = 2 * time.Minute
	cfg.LateWindow = cfg.MaxLateness
	sh := NewShard(cfg)
	tn := NewTenant("t")
	add(t, sh, tn, in{name: "c", typ: TypeCount, v: 1, ts: t0})
	collect(sh.Drain(t0+20*sec, false, nil))
	last := t0 + 10*sec + 2*sec + int64(cfg.MaxLateness)
	for tick := t0 + 30*sec; tick <= last; tick += 10 * sec {
		collect(sh.Drain(tick, false, nil))
	}
	lastArrival := t0 + 9*sec + int64(cfg.MaxLateness) // for a sample at t0+9s
	if r := add(t, sh, tn, in{name: "c", typ: TypeCount, v: 2, ts: t0 + 9*sec, now: lastArrival}); r != Accepted {
		t.Fatalf("late within max lateness: %v", r)
	}
	if got, want := collect(sh.Drain(last, false, nil)), []out{{key: "c||", ts: t0 / sec, value: 3, late: true}}; !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	collect(sh.Drain(last+10*sec, false, nil))
	if n := len(sh.kept); n != 0 {
		t.Fatalf("%d buckets kept past max lateness", n)
	}
	// A sample ingested after the drain that let its bucket go is refused,
	// whatever its arrival time says.
	if r := add(t, sh, tn, in{name: "c", typ: TypeCount, v: 2, ts: t0 + 9*sec, now: lastArrival}); r != ReasonTooOld {
		t.Fatalf("late past the kept bucket: %v, want too_old", r)
	}
}

func TestCollidingHashesNeverMerge(t *testing.T) {
	sh := NewShard(testConfig())
	tn := NewTenant("t")
	other := NewTenant("u")
	mk := func(name string, tn *Tenant) Sample {
		s := Sample{Name: name, Type: TypeCount, Value: 1, SampleRate: 1}
		s.Prepare(tn, nil)
		s.Hash = 42 // force every context into one chain
		return s
	}
	for _, s := range []struct {
		name string
		tn   *Tenant
	}{{"a", tn}, {"b", tn}, {"a", tn}, {"a", other}} {
		smp := mk(s.name, s.tn)
		if r := sh.Add(s.tn, &smp, t0); r != Accepted {
			t.Fatalf("add %s: %v", s.name, r)
		}
	}
	if sh.Contexts() != 3 {
		t.Fatalf("got %d contexts, want 3", sh.Contexts())
	}
	got := map[string]float64{}
	for _, b := range sh.Drain(t0, true, nil) {
		for m := range b.Metrics() {
			got[m.Tenant.ID+"/"+m.Name] += m.Value
		}
	}
	want := map[string]float64{"t/a": 2, "t/b": 1, "u/a": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestContextExpiry(t *testing.T) {
	cfg := testConfig()
	sh := NewShard(cfg)
	tn := NewTenant("t")
	add(t, sh, tn, in{name: "a", typ: TypeGauge, v: 1})
	add(t, sh, tn, in{name: "b", typ: TypeGauge, v: 1, now: t0 + int64(cfg.ContextTTL)})
	collect(sh.Drain(t0+int64(cfg.ContextTTL)+sec, false, nil))
	if sh.Contexts() != 1 || tn.Contexts.Load() != 1 {
		t.Fatalf("got %d contexts (tenant %d), want 1", sh.Contexts(), tn.Contexts.Load())
	}
}

func TestTenantContextLimitFoldsIntoOverflow(t *testing.T) {
	sh := NewShard(testConfig())
	tn, other := NewTenant("t"), NewTenant("u")
	tn.MaxContexts.Store(1)
	for _, s := range []in{
		{name: "a", typ: TypeCount, v: 1},
		{name: "b", typ: TypeCount, v: 2},                      // folds
		{name: "c", typ: TypeCount, v: 3, tags: []string{"x"}}, // folds
		{name: "g", typ: TypeGauge, v: 7},                      // folds, its own type
		{name: "a", typ: TypeCount, v: 4},                      // existing context
	} {
		if r := add(t, sh, tn, s); r != Accepted {
			t.Fatalf("%s: %v", s.name, r)
		}
	}
	add(t, sh, other, in{name: "b", typ: TypeCount, v: 1}) // another tenant is not bound
	got := map[string]float64{}
	for _, o := range collect(sh.Drain(t0, true, nil)) {
		got[o.key] += o.value
	}
	want := map[string]float64{"a||": 5, "aggd.overflow.count||": 5, "aggd.overflow.gauge||": 7, "b||": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) || tn.Overflowed.Load() != 3 {
		t.Fatalf("got %v (overflowed %d), want %v", got, tn.Overflowed.Load(), want)
	}
}

func TestQuantileNearestRank(t *testing.T) {
	sh := NewShard(testConfig())
	tn := NewTenant("t")
	vals := make([]float64, 0, 1000)
	for i := 1; i <= 1000; i++ {
		vals = append(vals, float64(i)*1.37)
	}
	add(t, sh, tn, in{name: "d", typ: TypeDistribution, vals: vals})
	add(t, sh, tn, in{name: "n", typ: TypeDistribution, vals: []float64{-3, -2, -1, 0, 1}})
	for _, b := range sh.Drain(t0, true, nil) {
		for m := range b.Metrics() {
			src := vals
			if m.Name == "n" {
				src = []float64{-3, -2, -1, 0, 1}
			}
			for _, q := range []float64{0, 0.01, 0.25, 0.5, 0.75, 0.95, 0.99, 1} {
				rank := int(math.Ceil(q*float64(len(src)))) - 1
				want := src[max(rank, 0)]
				got := m.Quantile(q)
				if math.Abs(got-want) > RelativeAccuracy*math.Abs(want)+1e-12 {
					t.Errorf("%s q%v: got %v, want %v ±1%%", m.Name, q, got, want)
				}
			}
		}
	}
}

func TestSplitKeyRoundTrip(t *testing.T) {
	tags := []string{"a", strings.Repeat("x", 300), "k:v\x00"}
	key := string(AppendKey(nil, "name", "host", tags))
	name, host, got := SplitKey(key, nil)
	if name != "name" || host != "host" || !slices.Equal(got, tags) {
		t.Fatalf("got %q %q %q", name, host, got)
	}
}

func FuzzSplitKey(f *testing.F) {
	f.Add("n", "h", "a,b")
	f.Fuzz(func(t *testing.T, name, host, tagList string) {
		tags := canonicalTags(strings.Split(tagList, ","))
		key := string(AppendKey(nil, name, host, tags))
		n, h, got := SplitKey(key, nil)
		if n != name || h != host || !slices.Equal(got, tags) {
			t.Fatalf("got %q %q %q, want %q %q %q", n, h, got, name, host, tags)
		}
		SplitKey(tagList, nil) // arbitrary input must not panic
	})
}

func TestExpirySweepIsIncrementalAndComplete(t *testing.T) {
	cfg := testConfig()
	sh := NewShard(cfg)
	tn := NewTenant("t")
	const n = 3*sweepBudget + 17
	ttl := int64(cfg.ContextTTL)
	for i := range n {
		now := t0
		if i%2 == 0 {
			now = t0 + ttl // these stay fresh
		}
		add(t, sh, tn, in{name: fmt.Sprintf("c%d", i), typ: TypeCount, v: 1, now: now})
	}
	tick := t0 + ttl + sec
	collect(sh.Drain(tick, false, nil))
	if got := sh.Contexts(); got >= n || got <= n/2 {
		t.Fatalf("after one drain %d contexts: the sweep must be bounded but make progress", got)
	}
	for range 4 {
		collect(sh.Drain(tick, false, nil))
	}
	if got, want := sh.Contexts(), (n+1)/2; got != want || tn.Contexts.Load() != int64(want) {
		t.Fatalf("got %d contexts (tenant %d), want %d", got, tn.Contexts.Load(), want)
	}
	// Survivors are still found; forgotten ones come back as new contexts.
	for i := range n {
		add(t, sh, tn, in{name: fmt.Sprintf("c%d", i), typ: TypeCount, v: 2, now: tick})
	}
	if got := sh.Contexts(); got != n {
		t.Fatalf("got %d contexts after re-adding, want %d", got, n)
	}
	sum := 0.0
	for _, b := range sh.Drain(tick, true, nil) {
		for m := range b.Metrics() {
			sum += m.Value
		}
	}
	// Every context's 2, plus the fresh half's first 1, whose bucket at
	// t0+ttl was still open.
	if want := float64(2*n + (n+1)/2); sum != want {
		t.Fatalf("sum %v, want %v", sum, want)
	}
}

// A Handle finds its context without a probe, and finds it again by key
// once the context expired; it never keeps an expired context alive, and
// once another context took the expired one's ID, the Handle does not
// reach it.
func TestHandleSurvivesContextExpiry(t *testing.T) {
	cfg := testConfig()
	sh := NewShard(cfg)
	tn := NewTenant("t")
	var h Handle
	smp := Sample{Name: "a", Type: TypeCount, Value: 1, SampleRate: 1, Tags: []string{"k:v"}, Handle: &h}
	smp.Prepare(tn, nil)
	if r := sh.Add(tn, &smp, t0); r != Accepted || h.sh != sh {
		t.Fatalf("first add: %v, handle %+v", r, h)
	}
	first := h
	if r := sh.Add(tn, &smp, t0+1); r != Accepted || h != first || sh.at(h.id).samples != 2 {
		t.Fatalf("second add: %v, handle moved or samples %d", r, sh.at(h.id).samples)
	}
	ttl := int64(cfg.ContextTTL)
	collect(sh.Drain(t0+ttl+2*sec, false, nil))
	if sh.Contexts() != 0 || sh.at(first.id).live() {
		t.Fatalf("%d contexts after the TTL, live %v; want 0, false", sh.Contexts(), sh.at(first.id).live())
	}
	// The next drain frees the ID: another context takes it, and the
	// stale Handle of the first must not reach that one.
	collect(sh.Drain(t0+ttl+3*sec, false, nil))
	other := Sample{Name: "b", Type: TypeCount, Value: 5, SampleRate: 1}
	other.Prepare(tn, nil)
	now := t0 + ttl + 4*sec
	if r := sh.Add(tn, &other, now); r != Accepted {
		t.Fatalf("other add: %v", r)
	}
	if c := sh.at(first.id); !c.live() || sh.keyOf(c) != string(other.Key) {
		t.Fatalf("the forgotten ID was not taken again: key %q", sh.keyOf(c))
	}
	if r := sh.Add(tn, &smp, now); r != Accepted || h == first || h.id == first.id || sh.Contexts() != 2 || tn.Contexts.Load() != 2 {
		t.Fatalf("add after expiry: %v, contexts %d (tenant %d), handle %+v (was %+v)", r, sh.Contexts(), tn.Contexts.Load(), h, first)
	}
	// A sample by full name reaches the context the handle holds.
	plain := Sample{Name: "a", Type: TypeCount, Value: 1, SampleRate: 1, Tags: []string{"k:v"}}
	plain.Prepare(tn, nil)
	if r := sh.Add(tn, &plain, now); r != Accepted || sh.Contexts() != 2 || sh.at(h.id).samples != 2 {
		t.Fatalf("full-name add: %v, contexts %d, samples %d", r, sh.Contexts(), sh.at(h.id).samples)
	}
	got := map[string]float64{}
	for _, b := range sh.Drain(now+time.Minute.Nanoseconds(), true, nil) {
		for m := range b.Metrics() {
			got[m.Name] += m.Value
		}
	}
	if want := map[string]float64{"a": 2, "b": 5}; !maps.Equal(got, want) {
		t.Fatalf("flushed %v, want %v", got, want)
	}
}

// TestWithheldIsNoReason: the marker for items kept out of one ingestion
// has no client code and no counter, so it can never be reported or
// counted as a rejection.
func TestWithheldIsNoReason(t *testing.T) {
	if Withheld < NumReasons {
		t.Fatalf("Withheld = %d is one of the %d reasons", Withheld, NumReasons)
	}
	for r := Accepted; r < NumReasons; r++ {
		if r.String() == Withheld.String() {
			t.Fatalf("reason %d has Withheld's code %q", r, r.String())
		}
	}
}

// TestSeedHandsOverThePreviousSample splits each stream at a bucket
// boundary between an old and a new shard, as a cluster splits a context
// between its owners; every sample before the boundary is also seeded into
// the new shard. The new shard's points from the boundary on must be those
// of one shard fed every sample.
func TestSeedHandsOverThePreviousSample(t *testing.T) {
	bs := t0 / sec
	boundary := t0 + 10*sec
	tests := []struct {
		name string
		in   []in
		want []out // of the new shard, from the boundary on
	}{
		{"rate: the first bucket's only sample takes its delta from the seed",
			[]in{
				{name: "r", typ: TypeRate, v: 10, ts: t0 + 6*sec},
				{name: "r", typ: TypeRate, v: 20, ts: t0 + 8*sec},
				{name: "r", typ: TypeRate, v: 40, ts: t0 + 12*sec},
				{name: "r", typ: TypeRate, v: 43, ts: t0 + 23*sec},
			},
			[]out{{key: "r||", ts: bs + 10, value: 5}, {key: "r||", ts: bs + 20, value: 3.0 / 11}}},
		{"monotonic count: the first delta is counted",
			[]in{
				{name: "m", typ: TypeMonotonicCount, v: 100, ts: t0 + 2*sec},
				{name: "m", typ: TypeMonotonicCount, v: 107, ts: t0 + 9*sec},
				{name: "m", typ: TypeMonotonicCount, v: 110, ts: t0 + 11*sec},
				{name: "m", typ: TypeMonotonicCount, v: 111, ts: t0 + 12*sec},
			},
			[]out{{key: "m||", ts: bs + 10, value: 4}}},
		{"monotonic count: a reset at the boundary counts nothing, but sends its point",
			[]in{
				{name: "m", typ: TypeMonotonicCount, v: 100, ts: t0 + 9*sec},
				{name: "m", typ: TypeMonotonicCount, v: 4, ts: t0 + 11*sec},
			},
			[]out{{key: "m||", ts: bs + 10, value: 0}}},
		{"a sample of several values seeds its last",
			[]in{
				{name: "m", typ: TypeMonotonicCount, vals: []float64{1, 5, 8}, ts: t0 + 9*sec},
				{name: "m", typ: TypeMonotonicCount, v: 10, ts: t0 + 11*sec},
			},
			[]out{{key: "m||", ts: bs + 10, value: 2}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := NewTenant("t")
			one, old, nw := NewShard(testConfig()), NewShard(testConfig()), NewShard(testConfig())
			now := t0 + 30*sec
			for _, s := range tt.in {
				s.now = now
				add(t, one, tn, s)
				if s.ts >= boundary {
					add(t, nw, tn, s)
					continue
				}
				add(t, old, tn, s)
				smp := Sample{Name: s.name, Type: s.typ, Value: s.v, Values: s.vals, Timestamp: s.ts, SampleRate: 1}
				smp.Prepare(tn, nil)
				if r := nw.Seed(tn, &smp, now, false); r != Accepted {
					t.Fatalf("seed: %v", r)
				}
			}
			var want []out
			for _, o := range collect(one.Drain(now, true, nil)) {
				if o.ts >= boundary/sec {
					want = append(want, o)
				}
			}
			if !slices.Equal(want, tt.want) {
				t.Fatalf("one shard: got %+v, want %+v", want, tt.want)
			}
			if got := collect(nw.Drain(now, true, nil)); !slices.Equal(got, tt.want) {
				t.Errorf("new owner: got  %+v\nwant %+v", got, tt.want)
			}
			unseeded := NewShard(testConfig())
			for _, s := range tt.in {
				if s.ts >= boundary {
					s.now = now
					add(t, unseeded, tn, s)
				}
			}
			if got := collect(unseeded.Drain(now, true, nil)); slices.Equal(got, tt.want) {
				t.Errorf("without the seed the new owner sends the same %+v: the case proves nothing", got)
			}
		})
	}
}

func TestSeedRefusals(t *testing.T) {
	tn := NewTenant("t")
	tn.MaxContexts.Store(1)
	sh := NewShard(testConfig())
	seed := func(name string, typ MetricType, ts int64) Reason {
		s := Sample{Name: name, Type: typ, Value: 1, Timestamp: ts, SampleRate: 1}
		s.Prepare(tn, nil)
		return sh.Seed(tn, &s, t0, false)
	}
	if r := seed("g", TypeGauge, t0); r != ReasonMalformed {
		t.Errorf("a gauge seeded: %v, want malformed", r)
	}
	if r := seed("r", TypeRate, t0-2*int64(time.Hour)); r != ReasonTooOld {
		t.Errorf("a seed past the lateness: %v, want too_old", r)
	}
	if r := seed("r", TypeRate, t0); r != Accepted || tn.Contexts.Load() != 0 || tn.Seeded.Load() != 1 {
		t.Errorf("seed: %v, %d contexts, %d seeded; want accepted, 0, 1", r, tn.Contexts.Load(), tn.Seeded.Load())
	}
	if r := seed("r2", TypeRate, t0); r != ReasonTenantLimit || tn.Seeded.Load() != 1 || tn.Overflowed.Load() != 0 {
		t.Errorf("a seed past the bound on seeded contexts: %v, %d seeded, %d folded; want tenant_limit, 1, 0", r, tn.Seeded.Load(), tn.Overflowed.Load())
	}
}

// TestSeededContextsBound: a context made by a seed is none the tenant
// sent to this replica: it counts in Seeded, apart from Contexts and
// bounded by the same MaxContexts, until its first sample makes it one
// of the tenant's contexts, within the bound; past it that sample folds
// into the overflow series as a new context's would.
func TestSeededContextsBound(t *testing.T) {
	tests := []struct {
		name         string
		taken        int // contexts the tenant sent before the seed
		sample       bool
		wantContexts int64
		wantSeeded   int64
		wantOverflow uint64
		wantPoint    bool // m's point, its delta from the seed
	}{
		{"a seed at the tenant's bound is kept, apart", 2, false, 2, 1, 0, false},
		{"its first sample makes it a context", 1, true, 2, 0, 0, true},
		// The overflow series is a context of its own; its first
		// monotonic count sample has no previous one: no point.
		{"its first sample past the bound folds", 2, true, 3, 1, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := NewTenant("t")
			tn.MaxContexts.Store(2)
			sh := NewShard(testConfig())
			for i := range tt.taken {
				add(t, sh, tn, in{name: fmt.Sprintf("c%d", i), typ: TypeCount, v: 1, ts: t0})
			}
			s := Sample{Name: "m", Type: TypeMonotonicCount, Value: 100, Timestamp: t0 + 2*sec, SampleRate: 1}
			s.Prepare(tn, nil)
			if r := sh.Seed(tn, &s, t0+5*sec, false); r != Accepted {
				t.Fatalf("seed: %v", r)
			}
			if tt.sample {
				add(t, sh, tn, in{name: "m", typ: TypeMonotonicCount, v: 107, ts: t0 + 4*sec, now: t0 + 5*sec})
			}
			if got, seeded, over := tn.Contexts.Load(), tn.Seeded.Load(), tn.Overflowed.Load(); got != tt.wantContexts || seeded != tt.wantSeeded || over != tt.wantOverflow {
				t.Errorf("%d contexts, %d seeded, %d folded; want %d, %d, %d", got, seeded, over, tt.wantContexts, tt.wantSeeded, tt.wantOverflow)
			}
			var points []out
			for _, o := range collect(sh.Drain(t0+30*sec, true, nil)) {
				if !strings.HasPrefix(o.key, "c") {
					points = append(points, o)
				}
			}
			var want []out
			if tt.wantPoint {
				want = []out{{key: "m||", ts: t0 / sec, value: 7}}
			}
			if !slices.Equal(points, want) {
				t.Errorf("points %+v, want %+v", points, want)
			}
			forgetNamed(t, sh, tn, "m")
			wantContexts := tt.wantContexts
			if tt.wantSeeded == 0 {
				wantContexts-- // m was one
			}
			if tn.Seeded.Load() != 0 || tn.Contexts.Load() != wantContexts {
				t.Errorf("after forgetting m: %d contexts, %d seeded; want %d, 0", tn.Contexts.Load(), tn.Seeded.Load(), wantContexts)
			}
		})
	}
}

// TestZeroFillInSteps zero-fills counters a few at a time with samples
// arriving between the steps, as the aggregator does with its lock
// released, and gets what one Drain with the samples after it gets.
func TestZeroFillInSteps(t *testing.T) {
	cfg := testConfig()
	cfg.CounterExpiry = 30 * time.Second
	bs := t0 / sec
	want := []out{{key: "c0||", ts: bs, value: 1}, {key: "c0||", ts: bs + 10, value: 0}, {key: "c0||", ts: bs + 20, value: 0},
		{key: "c0||", ts: bs + 30, value: 0}, {key: "c0||", ts: bs + 40, value: 100}, {key: "c0||", ts: bs + 50, value: 0}}
	for i := 1; i < 10; i++ {
		key := fmt.Sprintf("c%d||", i)
		want = append(want, out{key: key, ts: bs, value: float64(i + 1)}, out{key: key, ts: bs + 10, value: 0},
			out{key: key, ts: bs + 20, value: 0}, out{key: key, ts: bs + 30, value: 0})
	}
	want = append(want, out{key: "g||", ts: bs, value: 5}, out{key: "n||", ts: bs + 40, value: 7}, out{key: "n||", ts: bs + 50, value: 0})
	sort.Slice(want, func(i, j int) bool {
		return want[i].key < want[j].key || want[i].key == want[j].key && want[i].ts < want[j].ts
	})
	for _, step := range []int{0, 1, 3, 1 << 20} { // 0: one Drain
		t.Run(fmt.Sprint(step), func(t *testing.T) {
			sh := NewShard(cfg)
			tn := NewTenant("t")
			collect(sh.Drain(t0, false, nil))
			for i := range 10 {
				add(t, sh, tn, in{name: fmt.Sprintf("c%d", i), typ: TypeCount, v: float64(i + 1), now: t0 + 5*sec})
			}
			add(t, sh, tn, in{name: "g", typ: TypeGauge, v: 5, now: t0 + 5*sec})
			between := func(tick int64) {
				if tick == t0+40*sec {
					add(t, sh, tn, in{name: "c0", typ: TypeCount, v: 100, now: tick + sec})
					add(t, sh, tn, in{name: "n", typ: TypeCount, v: 7, now: tick + sec})
				}
			}
			var got []out
			for tick := t0 + 20*sec; tick <= t0+70*sec; tick += 10 * sec {
				if step == 0 {
					got = append(got, collect(sh.Drain(tick, false, nil))...)
					between(tick)
					continue
				}
				bs, steps := sh.BeginDrain(tick, false, nil), 0
				for done := false; !done; steps++ {
					bs, done = sh.FillZeros(step, bs)
					if steps == 0 {
						between(tick)
					}
				}
				if tick == t0+30*sec && step == 1 && steps < 10 {
					t.Errorf("10 counters filled in %d steps of 1", steps)
				}
				got = append(got, collect(bs)...)
			}
			sort.Slice(got, func(i, j int) bool {
				return got[i].key < got[j].key || got[i].key == got[j].key && got[i].ts < got[j].ts
			})
			if !slices.Equal(got, want) {
				t.Fatalf("got  %+v\nwant %+v", got, want)
			}
			if n := len(sh.counters); n != 2 { // c0 and n, until t0+71
				t.Fatalf("%d counters still zero-filled, want 2", n)
			}
		})
	}
}

// TestSeedAfterANewerSample: a seed is a sample of a bucket before the
// heir owns the context, so it cannot be the previous sample of one the
// heir took since. In a cluster it can come after one (sent by another
// replica): it then changes nothing, and the next delta is not counted
// again from the older value.
func TestSeedAfterANewerSample(t *testing.T) {
	tn := NewTenant("t")
	sh := NewShard(testConfig())
	now := t0 + 30*sec
	seed := func(v float64, ts int64) {
		t.Helper()
		s := Sample{Name: "m", Type: TypeMonotonicCount, Value: v, Timestamp: ts, SampleRate: 1}
		s.Prepare(tn, nil)
		if r := sh.Seed(tn, &s, now, false); r != Accepted {
			t.Fatalf("seed: %v", r)
		}
	}
	seed(100, t0+2*sec)
	add(t, sh, tn, in{name: "m", typ: TypeMonotonicCount, v: 110, ts: t0 + 11*sec, now: now})
	seed(107, t0+9*sec) // late: 110 at 11 s is newer
	add(t, sh, tn, in{name: "m", typ: TypeMonotonicCount, v: 111, ts: t0 + 12*sec, now: now})
	got := collect(sh.Drain(now, true, nil))
	want := []out{{key: "m||", ts: t0/sec + 10, value: 11}} // 110-100, 111-110
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// LastSamples lists every context with a last sample (seeded or taken),
// with its type; a seed older than the last one changes nothing.
func TestLastSamplesListsTheLastSamples(t *testing.T) {
	tn := NewTenant("t")
	sh := NewShard(testConfig())
	seed := func(v float64, ts int64) {
		s := Sample{Name: "r", Type: TypeRate, Value: v, Timestamp: ts, SampleRate: 1}
		s.Prepare(tn, nil)
		if r := sh.Seed(tn, &s, t0, false); r != Accepted {
			t.Fatal(r)
		}
	}
	seed(10, t0-2*sec)
	seed(5, t0-3*sec) // older: a hand-over read before the seed above
	add(t, sh, tn, in{name: "m", typ: TypeMonotonicCount, v: 3, ts: t0 - sec})
	add(t, sh, tn, in{name: "g", typ: TypeGauge, v: 3, ts: t0 - sec})
	got := map[string]string{}
	ls, next := sh.LastSamples(nil, -1, 100)
	if next != 0 {
		t.Fatalf("one call over 3 contexts resumes at %d, want 0 (done)", next)
	}
	for _, l := range ls {
		name, _, _ := SplitKey(l.Key, nil)
		got[name] = fmt.Sprintf("%v %v @%d", l.Type, l.Value, (l.Timestamp-t0)/sec)
	}
	want := map[string]string{"r": "rate 10 @-2", "m": "monotonic_count 3 @-1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("last samples %v, want %v", got, want)
	}
}

// A walk of LastSamples in steps, with the shard changing between them
// (its lock released): contexts forgotten and made. Every context that
// lives through the walk is listed, each step examines at most n
// contexts, and only RATE and MONOTONIC_COUNT contexts are listed.
func TestLastSamplesWalkInSteps(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 100} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			tn := NewTenant("t")
			sh := NewShard(testConfig())
			var victims []string
			want := map[string]bool{}
			for i := range 4 {
				name := fmt.Sprintf("x%d", i) // forgotten during the walk
				add(t, sh, tn, in{name: name, typ: TypeRate, v: 1, ts: t0})
				victims = append(victims, name)
			}
			for i := range 6 {
				name := fmt.Sprintf("r%d", i)
				add(t, sh, tn, in{name: name, typ: TypeRate, v: float64(i), ts: t0})
				add(t, sh, tn, in{name: "g" + name, typ: TypeGauge, v: 1, ts: t0})
				want[name] = true
			}
			for i := range 3 {
				name := fmt.Sprintf("m%d", i)
				add(t, sh, tn, in{name: name, typ: TypeMonotonicCount, v: 1, ts: t0})
				want[name] = true
			}
			got := map[string]bool{}
			var ls []Last
			for next, step := -1, 0; next != 0; step++ {
				ls = ls[:0]
				ls, next = sh.LastSamples(ls, next, n)
				if len(ls) > n {
					t.Fatalf("step %d listed %d contexts, more than the %d it may examine", step, len(ls), n)
				}
				for _, l := range ls {
					name, _, _ := SplitKey(l.Key, nil)
					if l.Type != TypeRate && l.Type != TypeMonotonicCount {
						t.Errorf("%s listed with type %v", name, l.Type)
					}
					got[name] = true
				}
				// Between steps: the oldest victim left is forgotten and a
				// context is made.
				if len(victims) > 0 {
					forgetNamed(t, sh, tn, victims[0])
					victims = victims[1:]
				}
				add(t, sh, tn, in{name: fmt.Sprintf("new%d", step), typ: TypeRate, v: 1, ts: t0})
				if step > 1000 {
					t.Fatal("the walk does not end")
				}
			}
			for name := range want {
				if !got[name] {
					t.Errorf("%s lived through the walk and was not listed (listed %v)", name, got)
				}
			}
		})
	}
}

// forgetNamed forgets the context of tenant tn named name (no tags, host).
func forgetNamed(t *testing.T, sh *Shard, tn *Tenant, name string) {
	t.Helper()
	for id := range sh.made {
		if c := sh.at(id); c.live() && c.tenant == tn && sh.keyOf(c) == string(AppendKey(nil, name, "", nil)) {
			sh.forget(id, c)
			return
		}
	}
	t.Fatalf("no context %s", name)
}

// TestSeedOrder: seeds of one context read in any order keep the later
// sample. At an equal timestamp a seed of a sample taken as it arrived
// (live) replaces the last sample, as a later arrival does, and a
// hand-over's seed (read from the old owner's state, perhaps before it
// took the live sample) does not.
func TestSeedOrder(t *testing.T) {
	type seed struct {
		v          float64
		ts         int64
		handedOver bool
	}
	tests := []struct {
		name  string
		seeds []seed
		want  float64 // the last sample kept
	}{
		{"live, then a hand-over of the same timestamp: live kept", []seed{{2, 5, false}, {1, 5, true}}, 2},
		{"hand-over, then live of the same timestamp: live kept", []seed{{1, 5, true}, {2, 5, false}}, 2},
		{"live, then an older hand-over: live kept", []seed{{2, 5, false}, {1, 4, true}}, 2},
		{"live, then a later hand-over: hand-over kept", []seed{{2, 5, false}, {3, 6, true}}, 3},
		{"hand-over, then an older live: hand-over kept", []seed{{3, 6, true}, {2, 5, false}}, 3},
		{"live, then live of the same timestamp: the later arrival", []seed{{2, 5, false}, {7, 5, false}}, 7},
		{"hand-over, then hand-over of the same timestamp: the first", []seed{{2, 5, true}, {7, 5, true}}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := NewTenant("t")
			sh := NewShard(testConfig())
			for _, sd := range tt.seeds {
				s := Sample{Name: "m", Type: TypeMonotonicCount, Value: sd.v, Timestamp: t0 + sd.ts*sec, SampleRate: 1}
				s.Prepare(tn, nil)
				if r := sh.Seed(tn, &s, t0+30*sec, sd.handedOver); r != Accepted {
					t.Fatalf("seed: %v", r)
				}
			}
			ls, _ := sh.LastSamples(nil, -1, 10)
			if len(ls) != 1 || ls[0].Value != tt.want {
				t.Errorf("last samples %+v, want one of value %v", ls, tt.want)
			}
		})
	}
}

// TestSplitKeyLengths: the parts of a key made from the lengths
// PartLengths writes are SplitKey's, for keys with few and many tags,
// short and long parts; lengths that do not fit leave a count of 0.
func TestSplitKeyLengths(t *testing.T) {
	const parts = 21 // a sum stream's (service.keyParts)
	for _, tc := range []struct {
		name, host string
		tags       int
		tagLen     int
	}{
		{"m", "", 0, 0}, {"m", "h", 1, 3}, {"load.sum", "node-1", 4, 12}, {"m", "h", parts - 2, 5},
		{"m", "h", parts - 1, 5}, {"m", "h", 40, 5}, {"m", strings.Repeat("h", 127), 2, 127},
		{"m", strings.Repeat("h", 128), 2, 4}, {"m", "h", 3, 200}, {"", "", 0, 0},
	} {
		var tags []string
		for i := range tc.tags {
			tags = append(tags, fmt.Sprintf("t%0*d", max(tc.tagLen-1, 1), i))
		}
		key := AppendKey(nil, tc.name, tc.host, tags)
		lengths := make([]uint8, parts+1)
		lengths[5] = 9 // left from an earlier key
		PartLengths(key, lengths)
		fits := tc.tags+2 <= parts && len(tc.host) < 128 && tc.tagLen < 128
		if got := lengths[0] != 0; got != fits {
			t.Errorf("%d tags of %d bytes, host of %d: lengths kept %v, want %v", tc.tags, tc.tagLen, len(tc.host), got, fits)
		}
		wn, wh, wt := SplitKey(string(key), []string{"x"})
		n, h, tg := SplitKeyLengths(string(key), lengths, []string{"x"})
		if n != wn || h != wh || !slices.Equal(tg, wt) {
			t.Errorf("%d tags of %d bytes: %q %q %q, want %q %q %q", tc.tags, tc.tagLen, n, h, tg, wn, wh, wt)
		}
	}
}

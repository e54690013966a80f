package spans

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/filter"
	"github.com/aggd/aggd/internal/window"
)

// datakitExample is DataKit's documented recommended tail-sampling.toml,
// with its logging and RUM examples.
const datakitExample = `
version = 2

[trace]
data_ttl = "1m"
group_key = "trace_id"

[[trace.sampling_pipeline]]
name = "keep-error-trace"
type = "condition"
condition = '{ status = "error" }'
action = "keep"

[[trace.sampling_pipeline]]
name = "keep-slow-trace"
type = "condition"
condition = '{ duration > 1000000000 }'
action = "keep"

[[trace.sampling_pipeline]]
name = "drop-health-check"
type = "condition"
condition = '{ resource IN ["/health", "/ready"] }'
action = "drop"

[[trace.sampling_pipeline]]
name = "sample-rest"
type = "probabilistic"
condition = '{ 1 = 1 }'
rate = 0.1

[logging]
data_ttl = "1m"

[[logging.group_dimensions]]
group_key = "trace_id"

[[logging.group_dimensions.pipelines]]
name = "sample-by-trace-id"
type = "probabilistic"
condition = '{ 1 = 1 }'
rate = 0.1

[rum]
data_ttl = "1m"

[[rum.group_dimensions]]
group_key = "session_id"

[[rum.group_dimensions.pipelines]]
name = "sample-by-session"
type = "probabilistic"
condition = '{ 1 = 1 }'
rate = 0.2
`

func mustPolicy(t *testing.T, text string) *Policy {
	t.Helper()
	p, err := ParsePolicy(text)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func traceID(n uint64) [16]byte {
	var id [16]byte
	binary.BigEndian.PutUint64(id[:8], n*0x9e3779b97f4a7c15+1)
	binary.BigEndian.PutUint64(id[8:], n)
	return id
}

func sp(id [16]byte, spanID byte, mod func(*Span)) Span {
	s := Span{TraceID: id, SpanID: [8]byte{spanID}, Service: "api", Name: "GET", Resource: "/items", Kind: KindServer,
		Start: 1e18, Duration: 5e6}
	if mod != nil {
		mod(&s)
	}
	return s
}

func TestDataKitExampleLoads(t *testing.T) {
	p := mustPolicy(t, datakitExample)
	if p.Version != 2 || p.DataTTL != time.Minute || p.LoggingTTL != time.Minute || len(p.Rules) != 4 || !p.Rules[3].Probabilistic || p.Rules[3].Rate != 0.1 {
		t.Fatalf("policy %+v", p)
	}
	if len(p.Logging) != 1 || p.Logging[0].GroupKey != "trace_id" || len(p.RUM) != 1 || p.RUM[0].Rules[0].Rate != 0.2 {
		t.Fatalf("logging %+v rum %+v", p.Logging, p.RUM)
	}
}

// datakitDocExamples are the tail-sampling examples of DataKit's
// aggregate documentation (feature-overview.md, sections 5.5 to 5.7), key
// for key.
const datakitDocExamples = `
[trace]
data_ttl = "5m"

  [[trace.builtin_metrics]]
  name = "trace_total_count"
  enabled = true

  [[trace.builtin_metrics]]
  name = "trace_duration"
  enabled = true

  [[trace.sampling_pipeline]]
  name = "keep_errors"
  type = "condition"
  condition = "{ status = 'error' }"
  action = "keep"

  [[trace.sampling_pipeline]]
  name = "default_sample"
  type = "probabilistic"
  condition = "{ 1 = 1 }"
  rate = 0.1

[logging]
data_ttl = "1m"

  [[logging.builtin_metrics]]
  name = "logging_total_count"
  enabled = true

  [[logging.group_dimensions]]
  group_key = "fields.user_id"

    [[logging.group_dimensions.pipelines]]
    name = "keep_error_logs"
    type = "condition"
    condition = "{ status = 'error' }"
    action = "keep"

    [[logging.group_dimensions.pipelines]]
    name = "sample_normal_logs"
    type = "probabilistic"
    condition = "{ 1 = 1 }"
    rate = 0.1

[rum]
data_ttl = "1m"

  [[rum.builtin_metrics]]
  name = "rum_total_count"
  enabled = true

  [[rum.group_dimensions]]
  group_key = "fields.session.id"

    [[rum.group_dimensions.pipelines]]
    name = "keep_error_sessions"
    type = "condition"
    condition = "{ status = 'error' }"
    action = "keep"
`

// TestDataKitDocExamplesLoad: the documented files load unchanged and
// decide as documented: errors kept, a tenth of the rest by DataKit's hash.
func TestDataKitDocExamplesLoad(t *testing.T) {
	p := mustPolicy(t, datakitDocExamples)
	if p.DataTTL != 5*time.Minute || len(p.Rules) != 2 || len(p.Logging) != 1 || p.Logging[0].GroupKey != "fields.user_id" || len(p.RUM) != 1 {
		t.Fatalf("policy %+v", p)
	}
	kept := 0
	for i := range 10000 {
		id := traceID(uint64(i))
		if Judge(p, id, []Span{sp(id, 0, nil)}) != KeepByRate(id, 0.1) {
			t.Fatal("a plain trace was not decided by rate 0.1")
		}
		if Judge(p, id, []Span{sp(id, 0, func(s *Span) { s.Error = true })}) != true {
			t.Fatal("an error trace was dropped")
		}
		if KeepByRate(id, 0.1) {
			kept++
		}
	}
	if kept < 900 || kept > 1100 {
		t.Fatalf("kept %d of 10000 at 0.1", kept)
	}
}

func TestPolicyErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"[trace]\ngroup_key = \"span_id\"", "only trace_id"},
		{"[[trace.sampling_pipeline]]\nname = \"x\"\ntype = \"condition\"\naction = \"maybe\"", "keep or drop"},
		{"[[trace.sampling_pipeline]]\nname = \"x\"\ntype = \"probabilistic\"\nrate = 1.5", "above 1"},
		{"[trace]\ndata_ttl = -5", "negative"},
		{"[trace]\ndata_ttl = true", "neither"},
		{"[[trace.sampling_pipeline]]\nname = \"x\"\ntype = \"latency\"", "condition or probabilistic"},
		{"[[trace.sampling_pipeline]]\nname = \"bad\"\ntype = \"condition\"\naction = \"keep\"\ncondition = \"{ a = }\"", `"bad"`},
		{"[trace]\ndata_ttl = \"soon\"", "data_ttl"},
		{"[[trace.derived_metrics]]\nname = \"x\"", "unsupported key"},
		{"[[logging.group_dimensions]]\ngroup_key = \"\"", "group_key is empty"},
	} {
		_, err := ParsePolicy(tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.text, err, tc.want)
		}
	}
}

func TestJudgeFirstDecisionWins(t *testing.T) {
	p := mustPolicy(t, datakitExample)
	tests := []struct {
		name  string
		spans []func(*Span)
		want  bool
	}{
		{"error anywhere keeps", []func(*Span){nil, func(s *Span) { s.Error = true; s.Resource = "/health" }}, true},
		// duration is in microseconds, as on DataKit's points: 1000000000
		// is 1000 s.
		{"slow keeps", []func(*Span){func(s *Span) { s.Duration = 1001e9 }}, true},
		{"2 s is not slow", []func(*Span){func(s *Span) { s.Duration = 2e9; s.Resource = "/ready" }}, false},
		{"health drops", []func(*Span){func(s *Span) { s.Resource = "/ready" }}, false},
		{"slow health check is kept: keep rules come first", []func(*Span){func(s *Span) { s.Resource = "/health"; s.Duration = 1001e9 }}, true},
	}
	for _, tt := range tests {
		id := traceID(1)
		var spans []Span
		for i, m := range tt.spans {
			spans = append(spans, sp(id, byte(i), m))
		}
		if got := Judge(p, id, spans); got != tt.want {
			t.Errorf("%s: got %v", tt.name, got)
		}
	}
	// No rule decides: dropped.
	only := mustPolicy(t, "[[trace.sampling_pipeline]]\nname = \"k\"\ntype = \"condition\"\naction = \"keep\"\ncondition = \"{ status = 'error' }\"")
	if Judge(only, traceID(2), []Span{sp(traceID(2), 0, nil)}) {
		t.Error("a trace no rule decides was kept")
	}
	if !Judge(nil, traceID(2), nil) {
		t.Error("without a policy a trace was dropped")
	}
}

// TestDataKitHashTraceID holds trace ids hashed by DataKit's hashTraceID
// and decided by its pipelineMatchedPacket (cliutils
// aggregate/tail-sampling.go) at rates 0.1, 0.5 and 0.9, recorded by running
// them.
func TestDataKitHashTraceID(t *testing.T) {
	tests := []struct {
		id   string
		hash uint64
		keep [3]bool
	}{
		{"00000000000000000000000000000001", 8935916118950687730, [3]bool{false, false, true}},
		{"4bf92f3577b34da6a3ce929d0e0e4736", 13292644768665065618, [3]bool{false, false, true}},
		{"0af7651916cd43dd8448eb211c80319c", 15769756344895788357, [3]bool{false, false, true}},
		{"5b8aa5a2d2c872e8321cf37308d69df2", 6861216161376086386, [3]bool{false, false, true}},
		{"ffffffffffffffffffffffffffffffff", 10131551463101250469, [3]bool{true, true, true}},
	}
	for _, tt := range tests {
		var id [16]byte
		if _, err := hex.Decode(id[:], []byte(tt.id)); err != nil {
			t.Fatal(err)
		}
		if got := HashTraceID(id); got != tt.hash {
			t.Errorf("%s: hash %d, DataKit %d", tt.id, got, tt.hash)
		}
		for i, rate := range []float64{0.1, 0.5, 0.9} {
			if got := KeepByRate(id, rate); got != tt.keep[i] {
				t.Errorf("%s at %v: keep %v, DataKit %v", tt.id, rate, got, tt.keep[i])
			}
		}
	}
	// Group values hash as they are: DataKit's hashTraceID("u-1").
	if got := hashString("u-1"); got != 5585686303297530434 {
		t.Errorf("hash of u-1: %d", got)
	}
}

func TestProbabilisticShareAndDeterminism(t *testing.T) {
	const n = 200_000
	for _, rate := range []float64{0.01, 0.1, 0.5, 0.9} {
		kept := 0
		for i := range n {
			if KeepByRate(traceID(uint64(i)), rate) {
				kept++
			}
		}
		// Four standard deviations of a binomial.
		if sd := math.Sqrt(n * rate * (1 - rate)); math.Abs(float64(kept)-n*rate) > 4*sd {
			t.Errorf("rate %v kept %d of %d", rate, kept, n)
		}
	}
	if KeepByRate(traceID(7), 0) || !KeepByRate(traceID(7), 1) {
		t.Error("rates 0 and 1 are not absolute")
	}
}

// TestDataKitPipelineRules covers DataKit's TailSamplingConfigs.Init and
// pipelineMatchesPoint: a condition rule without a condition never
// matches, a probabilistic one without a condition matches every trace, and
// a probabilistic rule of rate 0 is removed so later rules decide.
func TestDataKitPipelineRules(t *testing.T) {
	id := traceID(3)
	spans := []Span{sp(id, 0, nil)}
	p := mustPolicy(t, "[[trace.sampling_pipeline]]\nname = \"c\"\ntype = \"condition\"\naction = \"drop\"\n"+
		"[[trace.sampling_pipeline]]\nname = \"z\"\ntype = \"probabilistic\"\nrate = 0.0\ncondition = \"{ 1 = 1 }\"\n"+
		"[[trace.sampling_pipeline]]\nname = \"z2\"\ntype = \"probabilistic\"\ncondition = \"{ a = }\"\n"+
		"[[trace.sampling_pipeline]]\nname = \"all\"\ntype = \"probabilistic\"\nrate = 1.0\n")
	if len(p.Rules) != 2 || p.Rules[1].Name != "all" {
		t.Fatalf("rules %+v", p.Rules)
	}
	if !Judge(p, id, spans) {
		t.Error("the condition rule without a condition decided, or the rate-0 rule did")
	}
	if p := mustPolicy(t, "[trace]\ndata_ttl = 90000000000\n"); p.DataTTL != 90*time.Second {
		t.Errorf("data_ttl in nanoseconds: %v", p.DataTTL)
	}
	if p := mustPolicy(t, ""); p.DataTTL != 5*time.Minute || p.LoggingTTL != time.Minute {
		t.Errorf("default data_ttl %v, logging %v", p.DataTTL, p.LoggingTTL)
	}
}

func TestHoldUntilQuietThenDecide(t *testing.T) {
	p := mustPolicy(t, datakitExample)
	s := NewSampler(p, DefaultLimits())
	tn := window.NewTenant("t")
	const sec = int64(time.Second)
	errID, okID := traceID(10), traceID(11)
	e1, e2 := sp(errID, 1, nil), sp(errID, 2, func(s *Span) { s.Error = true })
	s.Add(tn, &e1, 0)
	s.Add(tn, &e2, 50*sec) // extends the error trace's wait
	h := sp(okID, 1, func(s *Span) { s.Resource = "/health" })
	s.Add(tn, &h, 0)
	if out := s.Advance(59*sec, false); len(out) != 0 {
		t.Fatalf("decided too early: %v", out)
	}
	if out := s.Advance(60*sec, false); len(out) != 0 || s.C.TracesDropped.Load() != 1 {
		t.Fatalf("the health check trace: out %v, dropped %d", out, s.C.TracesDropped.Load())
	}
	out := s.Advance(110*sec, false)
	if len(out) != 1 || out[0].TraceID != errID || len(out[0].Spans) != 2 {
		t.Fatalf("kept %+v", out)
	}
	// Late spans follow the decisions.
	late := sp(errID, 3, nil)
	s.Add(tn, &late, 111*sec)
	lateDrop := sp(okID, 2, nil)
	s.Add(tn, &lateDrop, 111*sec)
	out = s.Advance(112*sec, false)
	if len(out) != 1 || out[0].Spans[0].SpanID != late.SpanID || s.C.LateKept.Load() != 1 || s.C.LateDropped.Load() != 1 {
		t.Fatalf("late: %+v kept %d dropped %d", out, s.C.LateKept.Load(), s.C.LateDropped.Load())
	}
	if s.C.HeldTraces.Load() != 0 || s.C.HeldBytes.Load() != 0 || s.C.HeldSpans.Load() != 0 {
		t.Fatalf("held accounting not zero: %d %d %d", s.C.HeldTraces.Load(), s.C.HeldSpans.Load(), s.C.HeldBytes.Load())
	}
	// Decisions are forgotten after their TTL: a span after it starts anew.
	s.Advance(112*sec+int64(DefaultLimits().DecisionTTL)+1, false)
	again := sp(okID, 3, nil)
	s.Add(tn, &again, 500*sec)
	if s.C.HeldTraces.Load() != 1 {
		t.Fatal("an old decision was still applied")
	}
}

// TestDecidedWhenQuiet checks that a trace is decided at the first
// Advance at least data_ttl after its last span, to the nanosecond, however
// long its spans keep coming, and a decision forgotten at the first
// Advance more than the decision TTL after it was made.
func TestDecidedWhenQuiet(t *testing.T) {
	const ms = int64(time.Millisecond)
	p := mustPolicy(t, "[trace]\ndata_ttl = \"5s\"\n[[trace.sampling_pipeline]]\nname = \"all\"\ntype = \"probabilistic\"\nrate = 1\n")
	lim := DefaultLimits()
	lim.DecisionTTL = 30 * time.Second
	for _, c := range []struct {
		name     string
		arrivals []int64 // of the trace's spans, ms
		before   int64   // an Advance that must not decide it, ms
		at       int64   // the Advance that decides it, ms
	}{
		{"one span", []int64{200}, 5199, 5200},
		{"late in its second", []int64{200, 3700}, 8699, 8700},
		{"spans for longer than the TTL", []int64{200, 1200, 2200, 3200, 4200, 5200, 6200, 7200, 8200, 9200, 10200}, 15199, 15200},
		{"a gap just under the TTL", []int64{0, 4999}, 9998, 9999},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := NewSampler(p, lim)
			tn := window.NewTenant("t")
			id := traceID(7)
			// Advances every second, as the runner makes them, while the
			// spans arrive.
			next := int64(1000)
			for i, a := range c.arrivals {
				for ; next <= a; next += 1000 {
					if out := s.Advance(next*ms, false); len(out) != 0 {
						t.Fatalf("decided at %d ms, before span %d", next, i)
					}
				}
				span := sp(id, byte(i+1), nil)
				s.Add(tn, &span, a*ms)
			}
			if out := s.Advance(c.before*ms, false); len(out) != 0 {
				t.Fatalf("decided at %d ms", c.before)
			}
			out := s.Advance(c.at*ms, false)
			if len(out) != 1 || len(out[0].Spans) != len(c.arrivals) {
				t.Fatalf("at %d ms: %+v, want the trace's %d spans", c.at, out, len(c.arrivals))
			}
			// The decision holds for late spans until its TTL has passed.
			late := sp(id, 100, nil)
			s.Add(tn, &late, c.at*ms+1)
			s.Advance(c.at*ms+int64(lim.DecisionTTL), false)
			if s.C.LateKept.Load() != 1 || s.decided.Load() != 1 {
				t.Fatalf("late kept %d, decisions %d", s.C.LateKept.Load(), s.decided.Load())
			}
			s.Advance(c.at*ms+int64(lim.DecisionTTL)+1, false)
			if s.decided.Load() != 0 {
				t.Fatalf("%d decisions past their TTL", s.decided.Load())
			}
			again := sp(id, 101, nil)
			if s.Add(tn, &again, c.at*ms+int64(lim.DecisionTTL)+2); s.C.HeldTraces.Load() != 1 {
				t.Fatal("a span after the decision's TTL is not held anew")
			}
		})
	}
}

func TestBoundsDecideEarly(t *testing.T) {
	keepAll := mustPolicy(t, "[[trace.sampling_pipeline]]\nname = \"all\"\ntype = \"condition\"\naction = \"keep\"\ncondition = \"{ 1 = 1 }\"")
	tn := window.NewTenant("t")
	early := func(s *Sampler, reason string) int64 {
		v, ok := s.C.Early.Load(reason)
		if !ok {
			return 0
		}
		return v.(interface{ Load() int64 }).Load()
	}

	lim := DefaultLimits()
	lim.MaxSpansPerTrace = 3
	s := NewSampler(keepAll, lim)
	for i := range 5 {
		x := sp(traceID(1), byte(i), nil)
		s.Add(tn, &x, 0)
	}
	out := s.Advance(1, false)
	total := 0
	for _, tr := range out {
		total += len(tr.Spans)
	}
	// The first three were judged at the bound; the other two followed the
	// decision as late spans.
	if early(s, EarlySpansLimit) != 1 || total != 5 || len(out[0].Spans) != 3 || s.C.LateKept.Load() != 2 {
		t.Fatalf("spans limit: early %d, %d spans in %d entries", early(s, EarlySpansLimit), total, len(out))
	}

	lim = DefaultLimits()
	lim.MaxTracesPerTenant = 2
	s = NewSampler(keepAll, lim)
	other := window.NewTenant("u")
	for i := range 4 {
		x := sp(traceID(uint64(i)), 0, nil)
		s.Add(tn, &x, 0)
	}
	y := sp(traceID(99), 0, nil)
	s.Add(other, &y, 0) // another tenant is not limited by the first
	if early(s, EarlyTracesLimit) != 2 || s.C.HeldTraces.Load() != 3 {
		t.Fatalf("traces limit: early %d held %d", early(s, EarlyTracesLimit), s.C.HeldTraces.Load())
	}

	lim = DefaultLimits()
	lim.MaxBytes = 1
	s = NewSampler(keepAll, lim)
	for i := range 3 {
		x := sp(traceID(uint64(i)), 0, nil)
		s.Add(tn, &x, 0)
	}
	if early(s, EarlyMemoryLimit) != 2 || s.C.HeldTraces.Load() != 1 {
		t.Fatalf("memory limit: early %d held %d", early(s, EarlyMemoryLimit), s.C.HeldTraces.Load())
	}
	if out := s.Advance(0, true); len(out) != 3 {
		t.Fatalf("shutdown decided %d traces", len(out))
	}
}

func TestReloadKeepsHeldTraces(t *testing.T) {
	s := NewSampler(mustPolicy(t, "[[trace.sampling_pipeline]]\nname = \"none\"\ntype = \"condition\"\naction = \"drop\"\ncondition = \"{ 1 = 1 }\""), DefaultLimits())
	tn := window.NewTenant("t")
	x := sp(traceID(1), 0, nil)
	s.Add(tn, &x, 0)
	s.SetPolicy(mustPolicy(t, "[[trace.sampling_pipeline]]\nname = \"all\"\ntype = \"condition\"\naction = \"keep\"\ncondition = \"{ 1 = 1 }\""))
	if out := s.Advance(int64(time.Hour), false); len(out) != 1 {
		t.Fatalf("held trace lost or judged by the old policy: %v", out)
	}
}

func TestFieldsOfASpan(t *testing.T) {
	x := sp(traceID(1), 9, func(s *Span) { s.HTTPStatus = 304; s.Attrs = []Attr{{"user", "u1"}} })
	for name, want := range map[string]string{"service": "api", "name": "GET", "resource": "/items", "span_kind": "server", "status": "ok", "parent_id": "0", "user": "u1"} {
		if v, ok := x.Field(name); !ok || v.Str != want {
			t.Errorf("%s = %+v", name, v)
		}
	}
	if v, _ := x.Field("http_status_code"); v.Str != "304" { // a tag in DataKit
		t.Errorf("http_status_code %+v", v)
	}
	if v, _ := x.Field("duration"); v.Kind != filter.Int || v.I != 5000 { // microseconds
		t.Errorf("duration %+v", v)
	}
	if v, _ := x.Field("start"); v.I != 1e15 {
		t.Errorf("http_status_code %+v", v)
	}
	if _, ok := x.Field("nope"); ok {
		t.Error("unknown field found")
	}
}

// TestDecisionsPerTenant: one trace id sent by two tenants is two traces,
// decided apart, and late spans follow their own tenant's decision; a
// tenant is known by its id.
func TestDecisionsPerTenant(t *testing.T) {
	s := NewSampler(mustPolicy(t, datakitExample), DefaultLimits())
	a, b := window.NewTenant("a"), window.NewTenant("b")
	const sec = int64(time.Second)
	id := traceID(42)
	kept, dropped := sp(id, 1, func(s *Span) { s.Error = true }), sp(id, 1, func(s *Span) { s.Resource = "/health" })
	s.Add(a, &kept, 0)
	s.Add(b, &dropped, 0)
	out := s.Advance(60*sec, false)
	if len(out) != 1 || out[0].Tenant != a || s.C.TracesDropped.Load() != 1 {
		t.Fatalf("kept %+v, %d dropped; want tenant a's trace kept and b's dropped", out, s.C.TracesDropped.Load())
	}
	tests := []struct {
		tenant   *window.Tenant
		wantKept bool
	}{
		{a, true},
		{b, false},
		{window.NewTenant("a"), true},
		{window.NewTenant("c"), false}, // held: a new trace of tenant c
	}
	for i, tt := range tests {
		late := sp(id, byte(10+i), nil)
		s.Add(tt.tenant, &late, 61*sec)
		out := s.Advance(61*sec, false)
		if got := len(out) == 1; got != tt.wantKept {
			t.Errorf("tenant %s: late span exported %v, want %v", tt.tenant.ID, got, tt.wantKept)
		}
	}
	if s.C.LateKept.Load() != 2 || s.C.LateDropped.Load() != 1 || s.C.HeldTraces.Load() != 1 {
		t.Errorf("late kept %d, dropped %d, held traces %d; want 2, 1, 1", s.C.LateKept.Load(), s.C.LateDropped.Load(), s.C.HeldTraces.Load())
	}
}

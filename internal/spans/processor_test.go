package spans_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/cputime"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

func TestProcessorFeedsStatsAndSampler(t *testing.T) {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 4})
	s := spans.NewSampler(nil, spans.DefaultLimits())
	p := spans.NewProcessor(agg, s, nil)
	tn := window.NewTenant("t")
	now := time.Now().UnixNano()
	sp := []spans.Span{
		{TraceID: [16]byte{1}, SpanID: [8]byte{1}, Service: "api", Name: "op", Resource: "/r", Kind: spans.KindServer, Start: now - 1e9, Duration: 5e8, HTTPStatus: 200},
		{TraceID: [16]byte{1}, SpanID: [8]byte{2}, Service: "db", Name: "q", Start: now - 1e9, Duration: 1e8, Error: true, HasParent: true},
		{TraceID: [16]byte{2}, SpanID: [8]byte{3}, Service: "old", Name: "q", Start: now - int64(2*time.Hour), Duration: 1},
	}
	res := make([]window.Reason, len(sp))
	p.IngestSpans(tn, now, sp, res)
	if res[0] != window.Accepted || res[1] != window.Accepted || res[2] != window.ReasonTooOld {
		t.Fatalf("results %v", res)
	}
	// span 0: hits, duration sum, duration, top-level; span 1: hits, sum,
	// duration, errors.
	if n := agg.Contexts(); n != 8 {
		t.Fatalf("%d stats contexts, want 8", n)
	}
	if out := s.Advance(now, false); len(out) != 2 {
		t.Fatalf("sampler got %d traces, want the 2 accepted spans", len(out))
	}
}

// observer stands for the rules: it selects the spans of service "api".
type observer struct{ seen []string }

func (o *observer) ObserveSpan(_ *window.Tenant, sp *spans.Span, _, _ int64) bool {
	o.seen = append(o.seen, sp.Name)
	return sp.Service == "api"
}

// A span marked RulesOnly (its trace runs on another replica) is shown to
// the rules only: it makes no stats and is not held; one no rule selects
// is refused rules_mismatch.
func TestProcessorRulesOnlySpans(t *testing.T) {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 4})
	s := spans.NewSampler(nil, spans.DefaultLimits())
	var o observer
	p := spans.NewProcessor(agg, s, &o)
	tn := window.NewTenant("t")
	now := time.Now().UnixNano()
	sp := []spans.Span{
		{TraceID: [16]byte{1}, SpanID: [8]byte{1}, Service: "api", Name: "marked", Kind: spans.KindServer, Start: now - 1e9, Duration: 5e8, RulesOnly: true},
		{TraceID: [16]byte{2}, SpanID: [8]byte{2}, Service: "db", Name: "unmatched", Start: now - 1e9, Duration: 1e8, RulesOnly: true},
		{TraceID: [16]byte{3}, SpanID: [8]byte{3}, Service: "api", Name: "own", Kind: spans.KindServer, Start: now - 1e9, Duration: 5e8},
	}
	res := make([]window.Reason, len(sp))
	p.IngestSpans(tn, now, sp, res)
	if res[0] != window.Accepted || res[1] != window.ReasonRulesMismatch || res[2] != window.Accepted {
		t.Fatalf("results %v", res)
	}
	if len(o.seen) != 3 {
		t.Fatalf("the rules saw %v, want every span", o.seen)
	}
	// Only span 2's stats: hits, duration sum, duration, top-level.
	if n := agg.Contexts(); n != 4 {
		t.Fatalf("%d stats contexts, want span 2's 4", n)
	}
	if out := s.Advance(now, false); len(out) != 1 || out[0].Spans[0].Name != "own" {
		t.Fatalf("sampler got %v, want the unmarked span's trace only", out)
	}
}

func BenchmarkIngestSpans(b *testing.B) {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 0})
	policy, err := spans.ParsePolicy(`
[trace]
data_ttl = "10s"
[[trace.sampling_pipeline]]
name = "errors"
type = "condition"
condition = '{ status = "error" }'
action = "keep"
[[trace.sampling_pipeline]]
name = "rest"
type = "probabilistic"
rate = 0.1
`)
	if err != nil {
		b.Fatal(err)
	}
	sampler := spans.NewSampler(policy, spans.DefaultLimits())
	p := spans.NewProcessor(agg, sampler, nil)
	tn := window.NewTenant("t")
	now := time.Now().UnixNano()
	// Traces of 5 spans, each batch carrying spans of 100 traces; every
	// 20 batches time moves 1 s and held traces are decided.
	batch := make([]spans.Span, 500)
	res := make([]window.Reason, len(batch))
	resources := make([]string, 20)
	for i := range resources {
		resources[i] = "/r" + string(rune('a'+i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	mallocs := ms0.Mallocs
	cpu := cputime.Process()
	for i := 0; i < b.N; i++ {
		for j := range batch {
			tr := i*100 + j/5
			batch[j] = spans.Span{TraceID: [16]byte{byte(tr), byte(tr >> 8), byte(tr >> 16), byte(tr >> 24), 1}, SpanID: [8]byte{byte(j % 5), 1},
				HasParent: j%5 != 0, Service: "api", Name: "op", Resource: resources[j%20], Kind: spans.KindServer,
				Start: now, Duration: 1e6, HTTPStatus: 200, Error: tr%50 == 0}
		}
		clear(res)
		p.IngestSpans(tn, now, batch, res)
		if i%20 == 19 {
			now += 1e9
			sampler.Advance(now, false)
		}
	}
	b.StopTimer()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.Mallocs-mallocs)/float64(b.N*len(batch)), "allocs/span")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/span")
	b.ReportMetric(float64(cputime.Process()-cpu)/float64(b.N*len(batch)), "cpu-ns/span")
}

// TestMemoryPerHeldSpan reports the heap held per span waiting for its
// trace's decision (5-span traces, short strings).
func TestMemoryPerHeldSpan(t *testing.T) {
	if testing.Short() {
		t.Skip("holds 500k spans")
	}
	policy, _ := spans.ParsePolicy("[trace]\ndata_ttl = \"1h\"\n")
	s := spans.NewSampler(policy, spans.Limits{MaxTracesPerTenant: 1 << 30, MaxSpansPerTrace: 100, MaxBytes: 1 << 40, DecisionTTL: time.Hour, MaxDecisions: 1})
	tn := window.NewTenant("t")
	const n = 500_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		tr := i / 5
		x := spans.Span{TraceID: [16]byte{byte(tr), byte(tr >> 8), byte(tr >> 16), 1}, SpanID: [8]byte{byte(i % 5), 1}, HasParent: i%5 != 0,
			Service: "svc-3", Name: "http.request", Resource: "/r/17", Kind: spans.KindServer, Start: 1e18, Duration: 1e6, HTTPStatus: 200}
		s.Add(tn, &x, 0)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes of heap per held span (estimate used for --sampling-max-bytes: %d)", per, s.C.HeldBytes.Load()/n)
	runtime.KeepAlive(s)
}

// routingSink is a StatsSink as cluster mode has one: Ingest answers for
// the owners of the stats, refusing the samples named unreachable as an
// owner that cannot be reached does; IngestReplayed records that replay
// took the stats apart.
type routingSink struct {
	unreachable    string // a stats metric name
	live, replayed int
}

func (r *routingSink) Ingest(b *window.Batch) {
	r.live += len(b.Samples)
	for i := range b.Samples {
		if b.Samples[i].Name == r.unreachable {
			b.Results[i] = window.ReasonOwnerUnavailable
		}
	}
}

func (r *routingSink) IngestReplayed(b *window.Batch) { r.replayed += len(b.Samples) }

func TestProcessorRoutesStats(t *testing.T) {
	now := time.Now().UnixNano()
	span := spans.Span{TraceID: [16]byte{1}, SpanID: [8]byte{1}, Service: "api", Name: "op", Resource: "/r", Kind: spans.KindServer, Start: now - 1e9, Duration: 5e8}
	tests := []struct {
		name          string
		unreachable   string
		replay        bool
		want          window.Reason
		live, replays int
	}{
		{"every owner takes the stats", "", false, window.Accepted, 4, 0},
		{"the first stat's owner unreachable", spans.MetricHits, false, window.ReasonOwnerUnavailable, 4, 0},
		{"a later stat's owner unreachable refuses the span too", spans.MetricDuration, false, window.ReasonOwnerUnavailable, 4, 0},
		{"replayed stats go to the replay sink", spans.MetricDuration, true, window.Accepted, 0, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := &routingSink{unreachable: tt.unreachable}
			s := spans.NewSampler(nil, spans.DefaultLimits())
			p := spans.NewProcessor(sink, s, nil)
			res := []window.Reason{window.Accepted}
			if tt.replay {
				p.ReplaySpans(window.NewTenant("t"), now, []spans.Span{span}, res, 0, true)
			} else {
				p.IngestSpans(window.NewTenant("t"), now, []spans.Span{span}, res)
			}
			if res[0] != tt.want || sink.live != tt.live || sink.replayed != tt.replays {
				t.Errorf("span %v, %d stats live, %d replayed; want %v, %d, %d", res[0], sink.live, sink.replayed, tt.want, tt.live, tt.replays)
			}
			if held := len(s.Advance(now+int64(time.Hour), true)); (res[0] == window.Accepted) != (held == 1) {
				t.Errorf("span %v, and %d traces held for sampling", res[0], held)
			}
		})
	}
}

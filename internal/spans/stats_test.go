package spans

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/cputime"
	"github.com/aggd/aggd/internal/window"
)

// preparedStats is the stats samples of s as a sample of each series
// built from its name and tags alone and prepared for t: what the cached
// samples must equal.
func preparedStats(t *window.Tenant, s *Span) []window.Sample {
	tags := []string{"service:" + s.Service, "operation:" + s.Name, "resource:" + s.Resource,
		"span.kind:" + s.Kind.String(), "status:" + s.Status()}
	if s.HTTPStatus != 0 {
		tags = append(tags, fmt.Sprintf("http.status_code:%d", s.HTTPStatus))
	}
	secs := float64(s.Duration) / 1e9
	var out []window.Sample
	add := func(name string, typ window.MetricType, v float64) {
		smp := window.Sample{Name: name, Type: typ, Value: v, SampleRate: 1, Timestamp: s.End(), Tags: slices.Clone(tags)}
		smp.Prepare(t, nil)
		out = append(out, smp)
	}
	add(MetricHits, window.TypeCount, 1)
	add(MetricDurationSum, window.TypeCount, secs)
	add(MetricDuration, window.TypeDistribution, secs)
	if s.Error {
		add(MetricErrors, window.TypeCount, 1)
	}
	if s.TopLevel() {
		add(MetricTopLevelHits, window.TypeCount, 1)
	}
	return out
}

func TestStatsMatchPreparedSamples(t *testing.T) {
	now := time.Now().UnixNano()
	tenants := []*window.Tenant{window.NewTenant("a"), window.NewTenant("b")}
	base := Span{Service: "api", Name: "http.request", Resource: "/r", Kind: KindServer, Start: now, Duration: 1500}
	tests := []struct {
		name string
		edit func(*Span)
	}{
		{"server root", func(*Span) {}},
		{"client child", func(s *Span) { s.Kind, s.HasParent = KindClient, true }},
		{"server child is top-level", func(s *Span) { s.HasParent = true }},
		{"error", func(s *Span) { s.Error = true }},
		{"HTTP status", func(s *Span) { s.HTTPStatus = 503 }},
		{"uncommon HTTP status", func(s *Span) { s.HTTPStatus = 799 }},
		{"empty resource", func(s *Span) { s.Resource = "" }},
		{"parts that run into each other", func(s *Span) { s.Service, s.Name = "api:http", ".request" }},
		{"the same, split elsewhere", func(s *Span) { s.Service, s.Name = "api:http.", "request" }},
		{"tags out of order", func(s *Span) { s.Service = "zz" }},
		{"unspecified kind", func(s *Span) { s.Kind = KindUnspecified }},
	}
	// A cache of 1 entry per shard and generation: most spans miss, and
	// entries move between the generations.
	for _, size := range []int{1, statsCacheShardSize} {
		st := Stats{cache: newStatsCache(size)}
		for round := range 3 {
			for _, tt := range tests {
				for _, tn := range tenants {
					s := base
					tt.edit(&s)
					s.Duration += int64(round)
					b := window.Batch{Tenant: tn}
					st.Reset()
					n := st.Add(&b, &s)
					want := preparedStats(tn, &s)
					if n != len(want) || len(b.Samples) != len(want) || len(b.Results) != len(want) {
						t.Fatalf("%s (size %d): %d samples, want %d", tt.name, size, len(b.Samples), len(want))
					}
					for i, got := range b.Samples {
						w := want[i]
						if got.Name != w.Name || got.Type != w.Type || got.Value != w.Value || got.SampleRate != 1 ||
							got.Timestamp != w.Timestamp || string(got.Key) != string(w.Key) || got.Hash != w.Hash ||
							!slices.Equal(got.Tags, w.Tags) || got.Handle == nil {
							t.Errorf("%s (size %d, tenant %s): sample %d is\n%+v, want\n%+v", tt.name, size, tn.ID, i, got, w)
						}
					}
				}
			}
		}
	}
}

// recordingSink is a StatsSink that sends each batch on to the windows
// through a shard per hash range, as flush.Aggregator does, under one lock
// per shard.
type recordingSink struct {
	mu     [4]sync.Mutex
	shards [4]*window.Shard
}

func (r *recordingSink) Ingest(b *window.Batch) {
	for i := range b.Samples {
		si := b.Samples[i].Hash >> 62
		r.mu[si].Lock()
		b.Results[i] = r.shards[si].Add(b.Tenant, &b.Samples[i], b.Now)
		r.mu[si].Unlock()
	}
}

// TestStatsHandlesFromManyStreams feeds the same spans from several
// goroutines through one processor: the shared handles must land every
// sample in its own context (run with -race).
func TestStatsHandlesFromManyStreams(t *testing.T) {
	sink := &recordingSink{}
	for i := range sink.shards {
		sink.shards[i] = window.NewShard(window.DefaultConfig())
	}
	p := NewProcessor(sink, NewSampler(nil, DefaultLimits()), nil)
	p.cache = newStatsCache(4) // rotates often
	tn := window.NewTenant("t")
	now := time.Now().UnixNano()
	const services, streams, rounds = 50, 4, 20
	batch := make([]Span, services)
	for i := range batch {
		batch[i] = Span{TraceID: [16]byte{byte(i + 1)}, SpanID: [8]byte{1}, Service: fmt.Sprintf("svc-%d", i),
			Name: "op", Kind: KindServer, Start: now - 1e9, Duration: 1e6}
	}
	var wg sync.WaitGroup
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := make([]window.Reason, len(batch))
			for range rounds {
				clear(res)
				p.IngestSpans(tn, now, batch, res)
				for i, r := range res {
					if r != window.Accepted {
						t.Errorf("span %d: %v", i, r)
					}
				}
			}
		}()
	}
	wg.Wait()
	var top []window.ContextStat
	for _, sh := range sink.shards {
		top = sh.Top(tn, 1000, top)
	}
	// hits, duration.sum, duration and top_level_hits per service.
	if len(top) != 4*services {
		t.Fatalf("%d contexts, want %d", len(top), 4*services)
	}
	for _, c := range top {
		if c.Samples != streams*rounds {
			name, _, tags := window.SplitKey(c.Key, nil)
			t.Errorf("%s %v: %d samples, want %d", name, tags, c.Samples, streams*rounds)
		}
	}
}

func BenchmarkStatsAdd(b *testing.B) {
	st := Stats{cache: newStatsCache(statsCacheShardSize)}
	tn := window.NewTenant("t")
	// As many tag sets as aggload's default 100k contexts make.
	spans := make([]Span, 100_000)
	for i := range spans {
		spans[i] = Span{Service: fmt.Sprintf("svc-%d", i%10), Name: "http.request", Resource: fmt.Sprintf("/r/%d", i),
			Kind: KindServer, Start: 1e18, Duration: 1e6, HTTPStatus: 200}
	}
	bt := window.Batch{Tenant: tn}
	for i := range spans { // warm the cache
		st.Add(&bt, &spans[i])
		st.Reset()
		bt.Samples, bt.Results = bt.Samples[:0], bt.Results[:0]
	}
	b.ReportAllocs()
	cpu := cputime.Process()
	n := 0
	for i := 0; b.Loop(); i++ {
		if i%500 == 0 {
			st.Reset()
			bt.Samples, bt.Results = bt.Samples[:0], bt.Results[:0]
		}
		st.Add(&bt, &spans[i*7919%len(spans)])
		n++
	}
	b.ReportMetric(float64(cputime.Process()-cpu)/float64(n), "cpu-ns/span")
}

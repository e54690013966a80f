package service_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/flush/flushtest"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/rules"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/wal"
	"github.com/aggd/aggd/internal/window"
)

// journaled is a server with a write-ahead log over real aggregation
// state, as cmd/aggd builds it.
type journaled struct {
	srv     *service.Server
	agg     *flush.Aggregator
	log     *wal.Log
	jnl     *journal.Journal
	tenants *service.Tenants
	client  aggdv1.AggregatorServiceClient
	conn    *grpc.ClientConn
}

// startJournaled starts it on the log in dir; withSpans takes spans into
// stats and tail sampling, and replays them; set, if not nil, is the
// aggregation rules the aggregator applies.
func startJournaled(t *testing.T, dir string, withSpans bool, set *rules.Set) *journaled {
	t.Helper()
	tenants, err := service.NewTenants(service.TenantsConfig{Tenants: []service.TenantConfig{{ID: "acme", TenantLimits: window.TenantLimits{SamplesPerSecond: 10}}}, MaxTenants: 10})
	if err != nil {
		t.Fatal(err)
	}
	cfg := window.DefaultConfig()
	cfg.Grace = 0
	ac := flush.AggregatorConfig{Window: cfg, Shards: 4}
	if set != nil {
		ac.Rules = rules.NewEngine(set, flush.ShardCount(ac.Shards), cfg)
	}
	agg := flush.NewAggregator(ac)
	l, err := wal.Open(dir, wal.Options{Sync: wal.SyncAlways})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	sc := service.Config{Ingest: agg, Tenants: tenants, Limits: codec.DefaultLimits(), Seeder: agg, Logger: slog.New(slog.DiscardHandler)}
	jc := journal.Config{Log: l, Due: agg.Due, SpanHold: time.Minute, LateWindow: cfg.LateWindow, Tenants: tenants, Limits: codec.DefaultLimits(), Ingest: agg, Seeder: agg, Logger: slog.New(slog.DiscardHandler)}
	if withSpans {
		proc := spans.NewProcessor(agg, spans.NewSampler(nil, spans.DefaultLimits()), nil)
		sc.Spans = proc
		jc.Spans = proc
	}
	jnl, err := journal.New(jc)
	if err != nil {
		t.Fatal(err)
	}
	sc.Journal = jnl
	srv, err := service.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	conn := serveBufconn(t, srv)
	return &journaled{srv: srv, agg: agg, log: l, jnl: jnl, tenants: tenants, conn: conn, client: aggdv1.NewAggregatorServiceClient(conn)}
}

func (j *journaled) submit(t *testing.T, b *aggdv1.Batch) *aggdv1.Ack {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", "acme")
	resp, err := j.client.Submit(ctx, &aggdv1.SubmitRequest{Batch: b})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Ack
}

func counts(name string, n int, ts int64) []*aggdv1.Sample {
	var out []*aggdv1.Sample
	for range n {
		out = append(out, &aggdv1.Sample{Name: name, Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, TimestampUnixNano: ts})
	}
	return out
}

// TestReplaySkipsWhatAFlushCarried records batches, flushes part of them
// with a checkpoint, then replays the log into fresh state as a restart
// after kill -9 does: what the flush carried (a past bucket, the events
// and checks) is not taken again, what it did not (the open bucket, a
// later batch) is, and items refused at first (by the tenant's rate) stay
// refused.
func TestReplaySkipsWhatAFlushCarried(t *testing.T) {
	dir := t.TempDir()
	j := startJournaled(t, dir, false, nil)
	now := time.Now()
	tick := now.Truncate(10 * time.Second) // drains past buckets, not the open one
	past := now.Add(-5 * time.Minute).UnixNano()

	a := &aggdv1.Batch{Samples: append(counts("open", 5, 0), counts("past", 3, past)...),
		Events:        []*aggdv1.Event{{Title: "e1", Text: "first"}},
		ServiceChecks: []*aggdv1.ServiceCheck{{Name: "c1", Status: aggdv1.ServiceCheckStatus_SERVICE_CHECK_STATUS_OK}}}
	a.Samples = append(a.Samples, counts("limited", 4, 0)...) // 8 + 4 > 10 per second
	if ack := j.submit(t, a); ack.Accepted != 10+2 || ack.Rejected != 2 {
		t.Fatalf("first batch: %v", ack)
	}
	exp := &flushtest.Exporter{}
	fl, err := flush.NewFlusher(j.agg, exp, noTenants{}, flush.Config{Interval: 10 * time.Second, WAL: j.jnl}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fl.Flush(tick, false)
	if got := sum(exp.Points(), "past"); got != 3 {
		t.Fatalf("the flush carried %v of the past bucket, want 3", got)
	}
	if len(exp.Events()) != 1 || len(exp.Checks()) != 1 {
		t.Fatalf("the flush carried %d events and %d checks, want 1 each", len(exp.Events()), len(exp.Checks()))
	}
	time.Sleep(time.Second) // a new second of the tenant's rate
	if ack := j.submit(t, &aggdv1.Batch{Samples: counts("open", 2, 0), Events: []*aggdv1.Event{{Title: "e2", Text: "second"}}}); ack.Rejected != 0 {
		t.Fatalf("second batch: %v", ack)
	}

	// kill -9: the first log is left as it is; state starts empty.
	k := startJournaled(t, dir, false, nil)
	replayed := 0
	if _, err := k.log.Replay(func(rec []byte, flushed bool, tick int64) (int64, error) {
		replayed++
		return k.jnl.ReplayRecord(rec, flushed, tick)
	}); err != nil {
		t.Fatal(err)
	}
	if replayed != 2 {
		t.Fatalf("replayed %d records, want 2", replayed)
	}
	exp2 := &flushtest.Exporter{}
	fl2, err := flush.NewFlusher(k.agg, exp2, noTenants{}, flush.Config{Interval: 10 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fl2.Flush(time.Now(), true)
	pts := exp2.Points()
	for name, want := range map[string]float64{"open": 7, "past": 0, "limited": 2} {
		if got := sum(pts, name); got != want {
			t.Errorf("%s = %v after replay, want %v", name, got, want)
		}
	}
	if ev := exp2.Events(); len(ev) != 1 || ev[0].Title != "e2" || len(exp2.Checks()) != 0 {
		t.Errorf("after replay: events %v, %d checks; want e2 alone", ev, len(exp2.Checks()))
	}
}

// TestReplayedEventsMeetLogRulesOnce: after a kill -9, a replayed event a
// flush already sent is not sent again, and a logging rule counts it once:
// in its window when the flush had not drained that window, not at all
// when it had.
func TestReplayedEventsMeetLogRulesOnce(t *testing.T) {
	set, err := rules.Parse(`
[[aggregate_rules]]
name = "logs"
window = "60s"
[aggregate_rules.select]
category = "logging"
metric_name = ["message"]
[aggregate_rules.algorithms.n]
method = "count"
source_field = "message"
`)
	if err != nil {
		t.Fatal(err)
	}
	counted := func(pts []flushtest.Point) map[int64]float64 {
		out := map[int64]float64{}
		for _, p := range pts {
			if p.Name == "n" {
				out[p.TS] += p.Value
			}
		}
		return out
	}
	dir := t.TempDir()
	j := startJournaled(t, dir, false, set)
	now := time.Now()
	tick := now.Truncate(10 * time.Second) // drains past windows, not the open one
	past := now.Add(-5 * time.Minute)
	if ack := j.submit(t, &aggdv1.Batch{Events: []*aggdv1.Event{
		{Title: "open", Text: "a", TimestampUnixNano: now.UnixNano()},
		{Title: "past", Text: "b", TimestampUnixNano: past.UnixNano()},
	}}); ack.Rejected != 0 {
		t.Fatalf("first batch: %v", ack)
	}
	exp := &flushtest.Exporter{}
	fl, err := flush.NewFlusher(j.agg, exp, noTenants{}, flush.Config{Interval: 10 * time.Second, WAL: j.jnl}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fl.Flush(tick, false)
	if got := counted(exp.Points()); len(got) != 1 || len(exp.Events()) != 2 {
		t.Fatalf("first flush: rule outputs %v, %d events; want the past window's 1 and both events", got, len(exp.Events()))
	}
	if ack := j.submit(t, &aggdv1.Batch{Events: []*aggdv1.Event{{Title: "later", Text: "c", TimestampUnixNano: now.UnixNano()}}}); ack.Rejected != 0 {
		t.Fatalf("second batch: %v", ack)
	}

	// kill -9: state starts empty and the log is replayed.
	k := startJournaled(t, dir, false, set)
	if _, err := k.log.Replay(k.jnl.ReplayRecord); err != nil {
		t.Fatal(err)
	}
	exp2 := &flushtest.Exporter{}
	fl2, err := flush.NewFlusher(k.agg, exp2, noTenants{}, flush.Config{Interval: 10 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fl2.Flush(time.Now(), true)
	open := now.Add(-time.Nanosecond).Truncate(time.Minute).Unix() // the window holding now
	if got := counted(exp2.Points()); len(got) != 1 || got[open] != 2 {
		t.Errorf("after replay: rule outputs %v; want 2 (open and later) in the window at %d alone", got, open)
	}
	if ev := exp2.Events(); len(ev) != 1 || ev[0].Title != "later" {
		t.Errorf("after replay: events %v; want later alone", ev)
	}
}

type noTenants struct{}

func (noTenants) List() []*window.Tenant { return nil }

func sum(pts []flushtest.Point, name string) (v float64) {
	for _, p := range pts {
		if p.Name == name {
			v += p.Value
		}
	}
	return v
}

// TestReplayRefusesForeignRecords reports records it cannot read rather
// than taking them in.
func TestReplayRefusesForeignRecords(t *testing.T) {
	j := startJournaled(t, t.TempDir(), false, nil)
	for _, rec := range [][]byte{nil, {9, 1}, {1, 7}, {1, 1, 0xff}, []byte("\x01\x01\x04acme")} {
		if _, err := j.jnl.ReplayRecord(rec, false, 0); err == nil {
			t.Errorf("record %q was taken", rec)
		}
	}
}

// TestOTLPExportsAreJournaled records OTLP exports, metrics and spans, as
// the aggd.v1 batches they amount to: after a replay into fresh state the
// same aggregates and span stats come out, a histogram point's exact sum,
// minimum and maximum included.
func TestOTLPExportsAreJournaled(t *testing.T) {
	dir := t.TempDir()
	j := startJournaled(t, dir, true, nil)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", "otel")
	now := uint64(time.Now().UnixNano())
	hist := &metricspb.Metric{Name: "h", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
		DataPoints: []*metricspb.HistogramDataPoint{{TimeUnixNano: now, Count: 6, Sum: proto.Float64(30), ExplicitBounds: []float64{1, 10},
			BucketCounts: []uint64{1, 2, 3}}},
	}}}
	gauge := &metricspb.Metric{Name: "g", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{
		DataPoints: []*metricspb.NumberDataPoint{{TimeUnixNano: now, Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: 2.5}}}}}}
	if _, err := colmetricspb.NewMetricsServiceClient(j.conn).Export(ctx, request(hist, gauge)); err != nil {
		t.Fatal(err)
	}
	span := &tracepb.Span{TraceId: make16(1), SpanId: make16(2)[8:], Name: "GET /x", Kind: tracepb.Span_SPAN_KIND_SERVER,
		StartTimeUnixNano: now - 2e6, EndTimeUnixNano: now}
	if _, err := coltracepb.NewTraceServiceClient(j.conn).Export(ctx, &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{span}}}}}}); err != nil {
		t.Fatal(err)
	}
	want := flushPoints(t, j.agg)

	k := startJournaled(t, dir, true, nil)
	if _, err := k.log.Replay(func(rec []byte, flushed bool, tick int64) (int64, error) {
		return k.jnl.ReplayRecord(rec, flushed, tick)
	}); err != nil {
		t.Fatal(err)
	}
	got := flushPoints(t, k.agg)
	if len(want) < 3 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after replay:\n%v\nbefore:\n%v", got, want)
	}
	if h := got["h{}"]; !strings.Contains(h, "sum 30 min 1 max 10") {
		t.Errorf("histogram after replay: %s, want the point's sum 30 (its bins give more), min 1, max 10", h)
	}
}

// flushPoints flushes everything agg holds and returns the aggregates by
// name and tags.
func flushPoints(t *testing.T, agg *flush.Aggregator) map[string]string {
	t.Helper()
	exp := &flushtest.Exporter{}
	{
		fl, err := flush.NewFlusher(agg, exp, noTenants{}, flush.Config{Interval: time.Hour}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		fl.Flush(time.Now(), true)
	}
	out := map[string]string{}
	for _, p := range exp.Points() {
		v := fmt.Sprintf("%v %v %v", p.Type, p.Value, p.Count)
		if p.Type == window.TypeDistribution {
			v += fmt.Sprintf(" sum %v min %v max %v", p.Sum, p.Min, p.Max)
		}
		out[p.Name+"{"+p.Tags+"}"] = v
	}
	return out
}

// TestSeriesRefsAreJournaledPerGeneration streams series references
// across a rotation of the log: a record holds the definitions its
// references need once per generation (the batch declaring them carries
// them itself), so that each generation replays alone, and a replay of the
// whole log takes every sample once.
func TestSeriesRefsAreJournaledPerGeneration(t *testing.T) {
	dir := t.TempDir()
	j := startJournaled(t, dir, false, nil)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", "refs")
	st, err := j.client.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byRef := func(refs ...uint32) []*aggdv1.Sample {
		var out []*aggdv1.Sample
		for _, r := range refs {
			out = append(out, &aggdv1.Sample{SeriesRef: r, Value: 1})
		}
		return out
	}
	send := func(seq uint64, samples []*aggdv1.Sample) {
		t.Helper()
		if err := st.Send(&aggdv1.StreamRequest{Sequence: seq, Batch: &aggdv1.Batch{Samples: samples}}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if a := resp.GetAck(); a.Rejected != 0 || int(a.Accepted) != len(samples) {
			t.Fatalf("batch %d: %v", seq, a)
		}
	}
	var decl []*aggdv1.Sample
	for r := uint32(1); r <= 3; r++ {
		decl = append(decl, &aggdv1.Sample{Name: "r", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, Tags: []string{fmt.Sprintf("ref:%d", r)}, SeriesRef: r})
	}
	send(1, append(decl, byRef(1, 2)...))
	if _, err := j.log.Rotate(nil); err != nil {
		t.Fatal(err)
	}
	send(2, append(byRef(1, 3), &aggdv1.Sample{Name: "plain", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1}))
	send(3, byRef(1, 2, 3))
	st.CloseSend()
	want := flushPoints(t, j.agg)
	if want["r{ref:1}"] != "count 4 0" || want["r{ref:2}"] != "count 3 0" || want["r{ref:3}"] != "count 3 0" {
		t.Fatalf("before replay: %v", want)
	}

	var recs [][]byte
	if _, err := startJournaled(t, dir, false, nil).log.Replay(func(rec []byte, _ bool, _ int64) (int64, error) {
		recs = append(recs, append([]byte(nil), rec...))
		return 0, nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3", len(recs))
	}
	var defs []int
	for _, rec := range recs {
		r, err := journal.ParseRecord(rec)
		if err != nil {
			t.Fatal(err)
		}
		var b aggdv1.Batch
		if err := proto.Unmarshal(r.Defs, &b); err != nil {
			t.Fatal(err)
		}
		defs = append(defs, len(b.Samples))
		if r.Stream == 0 {
			t.Fatal("a stream's record has no stream")
		}
	}
	// The first record declares in its frame; the second, first of its
	// generation, carries the two definitions it uses (1 and 3); the
	// third only the one its generation lacks (2).
	if fmt.Sprint(defs) != "[0 2 1]" {
		t.Fatalf("definitions per record %v, want [0 2 1]", defs)
	}

	// The second generation alone replays: its references resolve.
	k := startJournaled(t, dir, false, nil)
	for _, rec := range recs[1:] {
		if _, err := k.jnl.ReplayRecord(rec, false, 0); err != nil {
			t.Fatal(err)
		}
	}
	got := flushPoints(t, k.agg)
	if got["r{ref:1}"] != "count 2 0" || got["r{ref:2}"] != "count 1 0" || got["r{ref:3}"] != "count 2 0" || got["plain{}"] != "count 1 0" {
		t.Fatalf("second generation replayed: %v", got)
	}

	// The whole log replays to what was taken live.
	m := startJournaled(t, dir, false, nil)
	if err := m.jnl.Replay(); err != nil {
		t.Fatal(err)
	}
	if got := flushPoints(t, m.agg); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after replay:\n%v\nbefore:\n%v", got, want)
	}
}

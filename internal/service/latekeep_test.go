package service_test

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestKeptBucketsSurviveACrash flushes a bucket of timestamped samples
// into an intake that keeps the last write per series and timestamp, then
// drops every bit of state as kill -9 does and replays the log: a sample
// logged after the flush but before the crash, and one arriving after the
// restart, both late for that bucket, must leave the intake holding the
// bucket's true total, not a partial that replaces it.
func TestKeptBucketsSurviveACrash(t *testing.T) {
	dir := t.TempDir()
	intake := upstreamtest.NewDatadogIntake(t)
	flushOnce := flushInto(t, intake)
	now := time.Now()
	tick := now.Truncate(10 * time.Second)
	ts := tick.Add(-15 * time.Second) // in [tick-20s, tick-10s), due at tick-10s
	bucket := tick.Add(-20 * time.Second).Unix()
	sample := func(v float64) []*aggdv1.Sample {
		return []*aggdv1.Sample{
			{Name: "c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: v, TimestampUnixNano: ts.UnixNano()},
			{Name: "g", Type: aggdv1.MetricType_METRIC_TYPE_GAUGE, Value: v, TimestampUnixNano: ts.Add(time.Duration(v) * time.Millisecond).UnixNano()},
		}
	}

	j := startJournaled(t, dir, false, nil)
	if ack := j.submit(t, &aggdv1.Batch{Samples: sample(1)}); ack.Rejected != 0 {
		t.Fatalf("first batch: %v", ack)
	}
	flushOnce(j.agg, tick, j.log, false) // the intake holds c = 1 and a checkpoint is written
	if ack := j.submit(t, &aggdv1.Batch{Samples: sample(2)}); ack.Rejected != 0 {
		t.Fatalf("logged, not flushed: %v", ack)
	}

	// kill -9: nothing in memory survives; the log is replayed.
	k := startJournaled(t, dir, false, nil)
	if err := k.jnl.Replay(); err != nil {
		t.Fatal(err)
	}
	if ack := k.submit(t, &aggdv1.Batch{Samples: sample(4)}); ack.Rejected != 0 {
		t.Fatalf("late after the restart: %v", ack)
	}
	flushOnce(k.agg, tick.Add(10*time.Second), nil, false)
	if err := intake.Err(); err != nil {
		t.Fatal(err)
	}

	got := map[string]float64{}
	for _, p := range intake.Series() {
		if p.TS == bucket {
			got[p.Metric] = p.Held()
		}
	}
	for name, want := range map[string]float64{"c": 7, "g": 4} {
		if got[name] != want {
			t.Errorf("intake holds %s = %v at the bucket, want %v (all: %v)", name, got[name], want, got)
		}
	}
}

// flushInto returns a function that flushes agg at tick (final: as a
// clean stop does) through the real Datadog upstream into intake, with
// wal when it is not nil, and waits until the intake has it.
func flushInto(t *testing.T, intake *upstreamtest.DatadogIntake) func(agg *flush.Aggregator, tick time.Time, wal flush.WAL, final bool) {
	return func(agg *flush.Aggregator, tick time.Time, wal flush.WAL, final bool) {
		t.Helper()
		dd := upstream.NewDatadog(upstream.DatadogConfig{Pipeline: upstream.DefaultPipelineConfig("dd"), URL: intake.URL, APIKey: "k",
			Compression: upstream.CompressZstd, Histogram: upstream.DefaultHistogramConfig()}, &upstreamtest.Metrics{}, slog.New(slog.DiscardHandler))
		router, err := upstream.NewRouter([]upstream.Upstream{dd}, []string{"dd"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := router.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		cfg := flush.Config{Interval: 10 * time.Second}
		if wal != nil {
			cfg.WAL = wal
		}
		fl, err := flush.NewFlusher(agg, router, noTenants{}, cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		fl.Flush(tick, final)
		if err := router.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOpenBucketSurvivesACleanStop stops cleanly (a final flush, which
// sends the open bucket) and replays the log: the bucket is restored as
// flushed, not sent again, and samples for it after the restart, before
// and after its due tick, send its corrected total, so the last-write
// intake holds the true total.
func TestOpenBucketSurvivesACleanStop(t *testing.T) {
	dir := t.TempDir()
	intake := upstreamtest.NewDatadogIntake(t)
	flushOnce := flushInto(t, intake)
	tick := time.Now().Truncate(10 * time.Second)
	ts := tick.Add(5 * time.Second) // in [tick, tick+10s), due at tick+10s: open at the stop
	bucket := tick.Unix()
	sample := func(name string, v float64) *aggdv1.Batch {
		return &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: name, Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: v, TimestampUnixNano: ts.UnixNano()}}}
	}
	// holds returns what the intake holds for name at the bucket.
	holds := func(name string) float64 {
		for _, p := range intake.Series() {
			if p.Metric == name && p.TS == bucket {
				return p.Held()
			}
		}
		return 0
	}

	j := startJournaled(t, dir, false, nil)
	if ack := j.submit(t, sample("c", 1)); ack.Rejected != 0 {
		t.Fatalf("first batch: %v", ack)
	}
	if ack := j.submit(t, sample("u", 1)); ack.Rejected != 0 {
		t.Fatalf("first batch: %v", ack)
	}
	flushOnce(j.agg, tick, j.log, true) // the clean stop sends c = 1 and u = 1
	for _, name := range []string{"c", "u"} {
		if v := holds(name); v != 1 {
			t.Fatalf("after the final flush the intake holds %s = %v, want 1", name, v)
		}
	}
	stopped := intake.Replaced()

	k := startJournaled(t, dir, false, nil)
	if err := k.jnl.Replay(); err != nil {
		t.Fatal(err)
	}
	// Before the bucket's due tick: u's sample corrects what the stop sent.
	if ack := k.submit(t, sample("u", 2)); ack.Rejected != 0 {
		t.Fatalf("after the restart: %v", ack)
	}
	flushOnce(k.agg, tick.Add(10*time.Second), nil, false)
	if r := intake.Replaced() - stopped; r != 1 {
		t.Fatalf("the bucket's due tick after the restart replaced %d points, want 1 (u's correction): c was sent again though the stop delivered it (%v)", r, intake.Series())
	}
	// After it: a late sample corrects the kept bucket.
	if ack := k.submit(t, sample("c", 2)); ack.Rejected != 0 {
		t.Fatalf("late after the restart: %v", ack)
	}
	flushOnce(k.agg, tick.Add(20*time.Second), nil, false)
	if err := intake.Err(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"c", "u"} {
		if v := holds(name); v != 3 {
			t.Errorf("intake holds %s = %v at the bucket, want 3 (%v)", name, v, intake.Series())
		}
	}
}

// alignToInterval waits, when the wall clock is within 2 s of the next
// multiple of 10 s, for that boundary, so that the samples a test sends
// arrive in one interval bucket. Were the clock to cross anyway, the
// untimed samples of the test would go to the later bucket by arrival,
// and the test would pass without testing what it means to.
func alignToInterval() time.Time {
	now := time.Now()
	if next := now.Truncate(10 * time.Second).Add(10 * time.Second); next.Sub(now) < 2*time.Second {
		time.Sleep(next.Sub(now))
	}
	return time.Now()
}

// TestUntimedSampleReplaysIntoItsBucket: a sample without a timestamp
// that arrives in one interval but is taken in after the tick that
// drained that interval's bucket goes to the bucket open then, and is
// flushed with it. After a crash, replay must restore it there, not in
// its arrival's bucket one interval earlier: late samples for both
// buckets then send corrections that hold exactly what was sent for each.
func TestUntimedSampleReplaysIntoItsBucket(t *testing.T) {
	dir := t.TempDir()
	intake := upstreamtest.NewDatadogIntake(t)
	flushOnce := flushInto(t, intake)
	start := alignToInterval().Truncate(10 * time.Second) // the bucket of every arrival below
	tick := start.Add(10 * time.Second)                   // drains it
	at := func(d time.Duration) *aggdv1.Sample {
		return &aggdv1.Sample{Name: "c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, TimestampUnixNano: start.Add(d).UnixNano()}
	}
	with := func(s *aggdv1.Sample, v float64) *aggdv1.Sample { s.Value = v; return s }

	j := startJournaled(t, dir, false, nil)
	if ack := j.submit(t, &aggdv1.Batch{Samples: []*aggdv1.Sample{with(at(time.Second), 1)}}); ack.Rejected != 0 {
		t.Fatalf("first batch: %v", ack)
	}
	flushOnce(j.agg, tick, j.log, false) // start: c = 1
	// Arrives before tick, by the wall clock, and is taken in after it:
	// the untimed 10 goes to the next bucket, with the timestamped 100.
	untimed := &aggdv1.Sample{Name: "c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 10}
	if ack := j.submit(t, &aggdv1.Batch{Samples: []*aggdv1.Sample{untimed, with(at(11*time.Second), 100)}}); ack.Rejected != 0 {
		t.Fatalf("second batch: %v", ack)
	}
	flushOnce(j.agg, tick.Add(10*time.Second), j.log, false) // start+10s: c = 110, and a checkpoint covering the batch

	k := startJournaled(t, dir, false, nil) // kill -9
	if err := k.jnl.Replay(); err != nil {
		t.Fatal(err)
	}
	if ack := k.submit(t, &aggdv1.Batch{Samples: []*aggdv1.Sample{with(at(2*time.Second), 1000), with(at(12*time.Second), 1000)}}); ack.Rejected != 0 {
		t.Fatalf("late after the restart: %v", ack)
	}
	flushOnce(k.agg, tick.Add(20*time.Second), nil, false)
	if err := intake.Err(); err != nil {
		t.Fatal(err)
	}
	got := map[int64]float64{}
	for _, p := range intake.Series() {
		if p.Metric == "c" {
			got[p.TS] = p.Held()
		}
	}
	first, second := start.Unix(), start.Add(10*time.Second).Unix()
	if got[first] != 1001 || got[second] != 1110 {
		t.Errorf("intake holds c = %v at the first bucket and %v at the second, want 1001 and 1110 (all: %v)", got[first], got[second], got)
	}
}

// drainHook is a flush.WAL that runs during in the flush's drain, after
// the log's rotation.
type drainHook struct {
	flush.WAL
	during func()
}

func (h drainHook) Rotate(drain func()) (uint64, error) {
	return h.WAL.Rotate(func() { h.during(); drain() })
}

// TestBatchDuringAFlushCountsOnce sends a batch while a flush drains,
// after the log's rotation, and crashes before the next checkpoint. The
// batch must wait for the drain: had it gone in between, the flush would
// have sent it while its record lies after the checkpoint, and replay
// would send its untimed sample a second time, one bucket later.
func TestBatchDuringAFlushCountsOnce(t *testing.T) {
	dir := t.TempDir()
	intake := upstreamtest.NewDatadogIntake(t)
	flushOnce := flushInto(t, intake)
	start := alignToInterval().Truncate(10 * time.Second)
	tick := start.Add(10 * time.Second)

	j := startJournaled(t, dir, false, nil)
	untimed := func(v float64) *aggdv1.Batch {
		return &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: v}}}
	}
	if ack := j.submit(t, untimed(1)); ack.Rejected != 0 {
		t.Fatalf("first batch: %v", ack)
	}
	type result struct {
		resp *aggdv1.SubmitResponse
		err  error
	}
	done := make(chan result, 1)
	acked := false
	flushOnce(j.agg, tick, drainHook{WAL: j.log, during: func() {
		go func() {
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", "acme")
			resp, err := j.client.Submit(ctx, &aggdv1.SubmitRequest{Batch: untimed(10)})
			done <- result{resp, err}
		}()
		// Either the batch waits for the drain, or it is taken in before
		// the drain: which one, the intake tells below.
		acked = blockedOrDone(done)
	}}, false)
	if r := <-done; r.err != nil || r.resp.Ack.Rejected != 0 {
		t.Fatalf("batch during the flush: %v %v", r.resp, r.err)
	}
	t.Logf("the batch sent during the drain was acked before the drain ended: %v", acked)

	k := startJournaled(t, dir, false, nil) // kill -9 before the next checkpoint
	if err := k.jnl.Replay(); err != nil {
		t.Fatal(err)
	}
	flushOnce(k.agg, tick.Add(10*time.Second), nil, false)
	if err := intake.Err(); err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, p := range intake.Series() {
		if p.Metric == "c" {
			total += p.Held()
		}
	}
	if total != 11 {
		t.Errorf("intake holds c = %v over its buckets, want 11, each sample once (%v)", total, intake.Series())
	}
}

// blockedOrDone waits until the batch being submitted is either acked
// (done is ready: true) or held out of the log's bracket, blocked in
// wal.(*Log).Enter (false).
func blockedOrDone[T any](done chan T) bool {
	buf := make([]byte, 1<<20)
	for {
		if len(done) > 0 {
			return true
		}
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(g, "[sync.Cond.Wait") && strings.Contains(g, "wal.(*Log).Enter") {
				return false
			}
		}
		runtime.Gosched()
	}
}

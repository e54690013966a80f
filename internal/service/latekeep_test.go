package service_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

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

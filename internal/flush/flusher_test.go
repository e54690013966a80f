package flush_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/flush/flushtest"
	"github.com/aggd/aggd/internal/window"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type tenants []*window.Tenant

func (t tenants) List() []*window.Tenant { return t }

func count(tn *window.Tenant, name string, v float64, ts time.Time) window.Batch {
	b := window.Batch{Tenant: tn, Now: time.Now().UnixNano()}
	s := window.Sample{Name: name, Type: window.TypeCount, Value: v, SampleRate: 1}
	if !ts.IsZero() {
		s.Timestamp = ts.UnixNano()
	}
	s.Prepare(tn, nil)
	b.Samples = append(b.Samples, s)
	b.Results = append(b.Results, window.Accepted)
	tn.Accepted.Add(1) // as the service counts it
	return b
}

// TestAggdUpOnlyForActiveTenants flushes tenants of which some sent
// items, accepted or refused, since the last flush: only those get an
// aggd.up check.
func TestAggdUpOnlyForActiveTenants(t *testing.T) {
	a, b, c := window.NewTenant("a"), window.NewTenant("b"), window.NewTenant("c")
	exp := &flushtest.Exporter{}
	fl, err := flush.NewFlusher(flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 1}), exp, tenants{a, b, c}, flush.Config{Interval: 10 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name   string
		active func()
		want   []string
	}{
		{"all three sent", func() { a.Accepted.Add(1); b.Accepted.Add(5); c.Rejected[window.ReasonMalformed].Add(1) }, []string{"a", "b", "c"}},
		{"none sent", func() {}, nil},
		{"b had items refused", func() { b.Rejected[window.ReasonTooOld].Add(2) }, []string{"b"}},
		{"a and c sent", func() { a.Accepted.Add(1); c.Accepted.Add(1) }, []string{"a", "c"}},
	}
	tick := time.Unix(1000, 0)
	for _, s := range steps {
		before := len(exp.Checks())
		s.active()
		tick = tick.Add(10 * time.Second)
		fl.Flush(tick, false)
		var got []string
		for _, ch := range exp.Checks()[before:] {
			if ch.Name == "aggd.up" {
				got = append(got, ch.Tenant.ID)
			}
		}
		if !slices.Equal(got, s.want) {
			t.Errorf("%s: aggd.up for %v, want %v", s.name, got, s.want)
		}
	}
}

func TestFlusherTicksGraceAndLatePartials(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The bubble's clock starts at 2000-01-01T00:00:00Z, a multiple
		// of every interval used here.
		epoch := time.Now()
		at := func(d time.Duration) int64 { return epoch.Add(d).Unix() }
		cfg := window.DefaultConfig() // interval 10s, grace 2s
		agg := flush.NewAggregator(flush.AggregatorConfig{Window: cfg, Shards: 4})
		exp := &flushtest.Exporter{}
		tn := window.NewTenant("acme")
		fl, err := flush.NewFlusher(agg, exp, tenants{tn}, flush.Config{Interval: cfg.Interval}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		fl.Start(t.Context())

		time.Sleep(3 * time.Second)
		b := count(tn, "c", 1, time.Time{}) // arrival 3s: bucket [0,10)
		agg.Ingest(&b)
		time.Sleep(8 * time.Second) // 11s: tick 10 passed, bucket in grace
		b = count(tn, "c", 2, epoch.Add(9*time.Second))
		agg.Ingest(&b)
		synctest.Wait()
		if p := exp.Points(); len(p) != 0 {
			t.Fatalf("flushed during grace: %+v", p)
		}
		time.Sleep(10 * time.Second)                    // 21s: tick 20 flushed [0,10)
		b = count(tn, "c", 4, epoch.Add(5*time.Second)) // late: corrects the bucket
		agg.Ingest(&b)
		time.Sleep(10 * time.Second) // 31s: tick 30
		synctest.Wait()

		want := []flushtest.Point{
			{Tick: at(20 * time.Second), Tenant: "acme", Name: "c", Type: window.TypeCount, TS: at(0), Value: 3},
			{Tick: at(30 * time.Second), Tenant: "acme", Name: "c", Type: window.TypeCount, TS: at(0), Value: 7, Late: true}, // the corrected total
			// A counter without samples is flushed with 0 until its
			// expiry, as the Agent does.
			{Tick: at(30 * time.Second), Tenant: "acme", Name: "c", Type: window.TypeCount, TS: at(10 * time.Second), Value: 0},
		}
		if got := exp.Points(); !slices.Equal(got, want) {
			t.Fatalf("got  %+v\nwant %+v", got, want)
		}
		if got, want := exp.Ticks(), []int64{at(10 * time.Second), at(20 * time.Second), at(30 * time.Second)}; !slices.Equal(got, want) {
			t.Fatalf("ticks %v, want %v", got, want)
		}
		if n := len(exp.Checks()); n != 3 {
			t.Fatalf("%d aggd.up checks, want one per tick", n)
		}
		fl.Shutdown(context.Background())
	})
}

func TestFlusherAlignsToTheIntervalFromAnyStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		time.Sleep(7300 * time.Millisecond) // start off the grid
		agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 1})
		exp := &flushtest.Exporter{}
		fl, err := flush.NewFlusher(agg, exp, tenants{}, flush.Config{Interval: 10 * time.Second}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		fl.Start(t.Context())
		time.Sleep(25 * time.Second)
		fl.Shutdown(context.Background())
		ticks := exp.Ticks()
		if len(ticks) < 2 || ticks[0]%10 != 0 || ticks[1]-ticks[0] != 10 {
			t.Fatalf("ticks %v are not on 10s multiples", ticks)
		}
	})
}

func TestShutdownFlushesOpenBucketsEventsAndChecks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 2})
		exp := &flushtest.Exporter{}
		tn := window.NewTenant("acme")
		fl, err := flush.NewFlusher(agg, exp, tenants{tn}, flush.Config{Interval: 10 * time.Second, Hostname: "h1"}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		fl.Start(t.Context())
		time.Sleep(time.Second)
		b := count(tn, "c", 5, time.Time{})
		b.Events = []window.Event{{Tenant: tn, Title: "deploy"}}
		b.Checks = []window.ServiceCheck{{Tenant: tn, Name: "db", Status: window.StatusCritical}}
		agg.Ingest(&b)
		b = count(tn, "future", 1, time.Now().Add(5*time.Minute))
		agg.Ingest(&b)
		if err := fl.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := fl.Shutdown(context.Background()); err != nil {
			t.Fatalf("second Shutdown: %v", err)
		}
		got := exp.Points()
		if len(got) != 2 || got[0].Value+got[1].Value != 6 {
			t.Fatalf("got %+v, want both open buckets", got)
		}
		if ev := exp.Events(); len(ev) != 1 || ev[0].Title != "deploy" {
			t.Fatalf("events %+v", ev)
		}
		checks := exp.Checks()
		// One aggd.up: the second Shutdown's flush found the tenant idle.
		if len(checks) != 2 || checks[0].Name != "db" || checks[1].Name != "aggd.up" || checks[1].Host != "h1" {
			t.Fatalf("checks %+v", checks)
		}
	})
}

func TestIngestIsConcurrentWithFlush(t *testing.T) {
	// Many writers over every shard while ticks drain: totals must match.
	cfg := window.DefaultConfig()
	cfg.Interval, cfg.Grace = time.Second, 0
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: cfg, Shards: 8})
	exp := &flushtest.Exporter{}
	tn := window.NewTenant("t")
	fl, err := flush.NewFlusher(agg, exp, tenants{tn}, flush.Config{Interval: cfg.Interval}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fl.Start(t.Context())
	done := make(chan struct{})
	const writers, per = 4, 3000
	for w := range writers {
		go func() {
			defer func() { done <- struct{}{} }()
			names := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
			for i := range per {
				b := count(tn, names[(i+w)%len(names)], 1, time.Time{})
				agg.Ingest(&b)
			}
		}()
	}
	for range writers {
		<-done
	}
	fl.Shutdown(context.Background())
	var sum float64
	for _, p := range exp.Points() {
		sum += p.Value
	}
	if sum != writers*per {
		t.Fatalf("flushed %v, want %d", sum, writers*per)
	}
}

// TestReplayCutoffSkipsFlushedBuckets: while a write-ahead log is
// replayed, samples whose bucket a flush already carried are not added
// again; the others are, and Due says when each is flushed.
func TestReplayCutoffSkipsFlushedBuckets(t *testing.T) {
	cfg := window.DefaultConfig() // 10 s buckets, 2 s grace
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: cfg, Shards: 2})
	tn := window.NewTenant("t")
	base := time.Now().Truncate(10 * time.Second)
	cutoff := base.Add(2 * time.Second) // the flush that drained [base-10s, base)
	for _, ts := range []time.Time{base.Add(-5 * time.Second), base.Add(5 * time.Second)} {
		b := count(tn, "c", 1, ts)
		b.Cutoff = cutoff.UnixNano() // replayed
		agg.Ingest(&b)
		if b.Results[0] != window.Accepted {
			t.Fatalf("sample at %v: %v", ts, b.Results[0])
		}
	}
	exp := &flushtest.Exporter{}
	{
		fl, err := flush.NewFlusher(agg, exp, tenants{}, flush.Config{Interval: 10 * time.Second}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		fl.Flush(base.Add(time.Hour), true)
	}
	if pts := exp.Points(); len(pts) != 1 || pts[0].TS != base.Unix() {
		t.Fatalf("flushed %+v, want only the bucket at %v", pts, base)
	}
	if d, want := agg.Due(base.Add(5*time.Second).UnixNano(), 0), base.Add(12*time.Second).UnixNano(); d != want {
		t.Fatalf("Due = %v, want %v", time.Unix(0, d), time.Unix(0, want))
	}
}

// TestNewFlusherRefusesInvalidConfig: a flusher is not built on a config
// Validate refuses.
func TestNewFlusherRefusesInvalidConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  flush.Config
		ok   bool
	}{
		{"interval", flush.Config{Interval: 10 * time.Second}, true},
		{"no interval", flush.Config{}, false},
		{"negative interval", flush.Config{Interval: -time.Second}, false},
		{"negative timeout", flush.Config{Interval: 10 * time.Second, Timeout: -time.Second}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fl, err := flush.NewFlusher(flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 1}), &flushtest.Exporter{}, tenants{}, tc.cfg, slog.New(slog.DiscardHandler))
			if (err == nil) != tc.ok || (fl != nil) != tc.ok {
				t.Fatalf("NewFlusher(%+v) = %v, %v; want a flusher: %v", tc.cfg, fl, err, tc.ok)
			}
		})
	}
}

// TestReplayKeepsThePreviousSampleOfAFlushedBucket: a RATE's or
// MONOTONIC_COUNT's sample replayed into a bucket that was flushed and is
// no longer kept for late samples is not aggregated again, but it is still
// the previous sample of the context's next point, so the first point
// after a restart has its delta, as without the restart.
func TestReplayKeepsThePreviousSampleOfAFlushedBucket(t *testing.T) {
	for _, typ := range []window.MetricType{window.TypeMonotonicCount, window.TypeRate} {
		t.Run(typ.String(), func(t *testing.T) {
			cfg := window.DefaultConfig() // 10 s buckets, 2 s grace
			agg := flush.NewAggregator(flush.AggregatorConfig{Window: cfg, Shards: 2})
			tn := window.NewTenant("t")
			base := time.Now().Truncate(10 * time.Second)
			agg.Resume(base.Add(2 * time.Second).UnixNano()) // an earlier process flushed up to base
			sample := func(v float64, ts time.Time, cutoff int64) {
				b := count(tn, "m", v, ts)
				b.Samples[0].Type = typ
				b.Cutoff = cutoff
				agg.Ingest(&b)
				if b.Results[0] != window.Accepted {
					t.Fatalf("sample %v at %v: %v", v, ts, b.Results[0])
				}
			}
			// Replayed: its bucket was flushed 25 minutes ago, past the
			// 2-minute late window, within the hour of lateness.
			first := base.Add(-25 * time.Minute)
			sample(100, first, base.Add(2*time.Second).UnixNano())
			sample(130, base.Add(5*time.Second), 0)
			exp := &flushtest.Exporter{}
			fl, err := flush.NewFlusher(agg, exp, tenants{}, flush.Config{Interval: 10 * time.Second}, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			fl.Flush(base.Add(time.Hour), true)
			pts := exp.Points()
			want := 30.0 // the monotonic count's delta
			if typ == window.TypeRate {
				want = 30 / base.Add(5*time.Second).Sub(first).Seconds() // per second between the samples
			}
			if len(pts) != 1 || pts[0].Value != want {
				t.Fatalf("flushed %+v, want one point of %v", pts, want)
			}
		})
	}
}

// TestFlushedDistributionsAreSorted checks that the flusher hands its
// exporters every distribution's exact samples in increasing order, which
// the drain no longer does under the shard's lock: the median of samples
// that arrived out of order, in the bucket's flush and in the correction
// that late samples make of it.
func TestFlushedDistributionsAreSorted(t *testing.T) {
	tn := window.NewTenant("t")
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 2})
	exp := &flushtest.Exporter{}
	fl, err := flush.NewFlusher(agg, exp, tenants{tn}, flush.Config{Interval: 10 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	epoch := time.Unix(1_700_000_000, 0)
	dist := func(arrival time.Duration, vals ...float64) {
		b := window.Batch{Tenant: tn, Now: epoch.Add(arrival).UnixNano()}
		for _, v := range vals {
			s := window.Sample{Name: "d", Type: window.TypeDistribution, Value: v, SampleRate: 1, Timestamp: epoch.Add(5 * time.Second).UnixNano()}
			s.Prepare(tn, nil)
			b.Samples = append(b.Samples, s)
			b.Results = append(b.Results, window.Accepted)
		}
		agg.Ingest(&b)
	}
	dist(6*time.Second, 9, 8, 1)
	fl.Flush(epoch.Add(20*time.Second), false)
	dist(21*time.Second, 2, 3) // late: corrects the flushed bucket
	fl.Flush(epoch.Add(30*time.Second), false)
	var got []float64
	for _, p := range exp.Points() {
		if p.Name == "d" {
			got = append(got, p.P50)
		}
	}
	// Nearest rank: the 2nd of [1 8 9], the 3rd of [1 2 3 8 9].
	if want := []float64{8, 3}; !slices.Equal(got, want) {
		t.Errorf("medians %v, want %v", got, want)
	}
}

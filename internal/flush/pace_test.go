package flush_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/window"
)

// TestFlushPacesEncoding flushes counters in a bubble, where only sleeping
// moves the clock, and reads the time at which the encoder was handed
// each aggregate: after the n-th, no earlier than n/total of the pace's
// length (the least of total × PacePerAggregate and the spread), and the
// whole encoding within that length. Small, unpaced and final flushes
// take no time at all.
func TestFlushPacesEncoding(t *testing.T) {
	cases := []struct {
		name     string
		contexts int
		spread   time.Duration
		final    bool
		want     time.Duration // the pace's length; 0: not paced
	}{
		{"paced by the rate", 20_000, 10 * time.Second, false, 20_000 * flush.PacePerAggregate},
		{"bounded by the spread", 20_000, 30 * time.Millisecond, false, 30 * time.Millisecond},
		{"default spread of a 10 s interval", 20_000, 0, false, 20_000 * flush.PacePerAggregate},
		{"fewer aggregates than a step", window.YieldEvery - 1, 10 * time.Second, false, 0},
		{"pacing off", 20_000, -time.Second, false, 0},
		{"final flush", 20_000, 10 * time.Second, true, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tn := window.NewTenant("t")
				now := time.Now()
				agg := counters(tn, c.contexts, now)
				var seen []time.Duration // when each aggregate reached the encoder
				var start time.Time
				exp := flush.ExporterFunc(func(_ context.Context, f *window.Flush) error {
					for range f.Metrics() {
						seen = append(seen, time.Since(start))
					}
					return nil
				})
				fl, err := flush.NewFlusher(agg, exp, tenants{tn}, flush.Config{Interval: 10 * time.Second, Spread: c.spread}, slog.New(slog.DiscardHandler))
				if err != nil {
					t.Fatal(err)
				}
				start = time.Now()
				fl.Flush(now.Add(time.Minute), c.final)
				took := time.Since(start)
				if len(seen) != c.contexts {
					t.Fatalf("encoded %d aggregates, want %d", len(seen), c.contexts)
				}
				if took > c.want {
					t.Errorf("the flush took %v, want at most %v", took, c.want)
				}
				for i, at := range seen {
					// The encoder got aggregate i once i aggregates were
					// yielded, paced every YieldEvery.
					steps := i / window.YieldEvery * window.YieldEvery
					due := time.Duration(float64(c.want) * float64(steps) / float64(c.contexts))
					if at < due-time.Microsecond {
						t.Fatalf("aggregate %d reached the encoder %v into the flush, before %v", i, at, due)
					}
				}
				if last := seen[len(seen)-1]; c.want > 0 && last < c.want*9/10 {
					t.Errorf("the last aggregate reached the encoder %v into the flush, want about %v", last, c.want)
				}
			})
		})
	}
}

// counters returns an aggregator holding n counters of tenant tn.
func counters(tn *window.Tenant, n int, now time.Time) *flush.Aggregator {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 4})
	for i := 0; i < n; i += 500 {
		b := window.Batch{Tenant: tn, Now: now.UnixNano()}
		for j := i; j < min(i+500, n); j++ {
			s := window.Sample{Name: "c", Type: window.TypeCount, Value: 1, SampleRate: 1, Tags: []string{fmt.Sprintf("id:%d", j)}}
			s.Prepare(tn, nil)
			b.Samples = append(b.Samples, s)
			b.Results = append(b.Results, window.Accepted)
		}
		agg.Ingest(&b)
	}
	return agg
}

// TestShutdownEndsPacing lets a tick begin a paced flush and shuts the
// flusher down while it waits: the flush under way goes on unpaced, so
// that Shutdown waits for none of its pace (in the bubble only waiting
// moves the clock), and every aggregate is still exported once.
func TestShutdownEndsPacing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 20_000
		tn := window.NewTenant("t")
		now := time.Now() // a multiple of the interval: the bubble's epoch
		encoded := 0
		exp := flush.ExporterFunc(func(_ context.Context, f *window.Flush) error {
			for range f.Metrics() {
				encoded++
			}
			return nil
		})
		fl, err := flush.NewFlusher(counters(tn, n, now), exp, tenants{tn}, flush.Config{Interval: 10 * time.Second, Spread: time.Hour}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		fl.Start(context.Background())
		// The tick at 20 s drains the bucket of the first 10 s (due at
		// 12 s) and paces its encoding over 40 ms.
		time.Sleep(20*time.Second + time.Millisecond)
		synctest.Wait()
		start := time.Now()
		if err := fl.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took != 0 {
			t.Errorf("shutdown waited %v of the flush's pace, want no wait", took)
		}
		if encoded != n {
			t.Errorf("%d aggregates exported, want %d", encoded, n)
		}
	})
}

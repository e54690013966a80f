package flush_test

import (
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/cputime"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/wal"
	"github.com/aggd/aggd/internal/window"
)

// BenchmarkFlush1M flushes 1M counter contexts (drain, iterate, encode as
// JSON lines to io.Discard) while another goroutine keeps ingesting
// 500-sample batches, and reports the longest single Ingest call seen
// during the flush: how long ingest was held up. With a write-ahead log
// batches enter the log's bracket, which the drain holds them out of.
func BenchmarkFlush1M(b *testing.B) {
	b.Run("memory", func(b *testing.B) { benchmarkFlush1M(b, false) })
	b.Run("wal", func(b *testing.B) { benchmarkFlush1M(b, true) })
}

func benchmarkFlush1M(b *testing.B, logged bool) {
	const n = 1_000_000
	cfg := window.DefaultConfig()
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: cfg, Shards: 8})
	tn := window.NewTenant("t")
	json := upstream.NewJSONLines("json", io.Discard, upstream.JSONLinesConfig{Histogram: upstream.DefaultHistogramConfig()})
	exp, err := upstream.NewRouter([]upstream.Upstream{json}, []string{"json"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	fc := flush.Config{Interval: cfg.Interval}
	var log *wal.Log
	if logged {
		if log, err = wal.Open(b.TempDir(), wal.Options{Sync: wal.SyncNever}); err != nil {
			b.Fatal(err)
		}
		defer log.Close()
		fc.WAL = log
	}
	fl, err := flush.NewFlusher(agg, exp, tenants{tn}, fc, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}

	batches := make([]window.Batch, n/500)
	for i := range batches {
		bt := &batches[i]
		bt.Tenant = tn
		for j := range 500 {
			s := window.Sample{Name: "svc.requests", Type: window.TypeCount, Value: 1, SampleRate: 1,
				Tags: []string{fmt.Sprintf("id:%d", i*500+j), "env:prod"}}
			s.Prepare(tn, nil)
			bt.Samples = append(bt.Samples, s)
			bt.Results = append(bt.Results, window.Accepted)
		}
	}
	ingest := func(bt *window.Batch, now int64) {
		bt.Now = now
		for k := range bt.Results {
			bt.Results[k] = window.Accepted
		}
		if log != nil {
			tk := log.Enter(true)
			defer log.Leave(tk)
			if _, err := log.Append([]byte("r"), 0); err != nil {
				panic(err)
			}
		}
		agg.Ingest(bt)
	}
	var worst time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		t0 := time.Unix(1_700_000_000+int64(i)*20, 0)
		for k := range batches {
			ingest(&batches[k], t0.UnixNano())
		}
		var stop atomic.Bool
		maxPause := make(chan time.Duration)
		go func() { // ingest into the next bucket during the flush
			var m time.Duration
			for k := 0; !stop.Load(); k++ {
				start := time.Now()
				ingest(&batches[k%len(batches)], t0.Add(15*time.Second).UnixNano())
				m = max(m, time.Since(start))
			}
			maxPause <- m
		}()
		b.StartTimer()
		fl.Flush(t0.Add(15*time.Second), false)
		b.StopTimer()
		stop.Store(true)
		worst = max(worst, <-maxPause)
		fl.Flush(t0.Add(time.Hour), true) // clear what the writer added
	}
	b.ReportMetric(float64(worst.Microseconds()), "max-ingest-µs")
}

// BenchmarkIngest adds 500-sample batches of existing counter contexts
// (100k of them) to the aggregator: the locking and shard work per
// sample, without decoding. ns/sample is the figure to watch.
func BenchmarkIngest(b *testing.B) {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 0})
	tn := window.NewTenant("t")
	const batch, contexts = 500, 100_000
	batches := make([]window.Batch, contexts/batch)
	for i := range batches {
		bt := &batches[i]
		bt.Tenant = tn
		for j := range batch {
			s := window.Sample{Name: "c", Type: window.TypeCount, Value: 1, SampleRate: 1, Tags: []string{fmt.Sprintf("ctx:%d", i*batch+j)}}
			s.Prepare(tn, nil)
			bt.Samples = append(bt.Samples, s)
			bt.Results = append(bt.Results, window.Accepted)
		}
	}
	now := time.Now().UnixNano()
	for i := range batches {
		batches[i].Now = now
		agg.Ingest(&batches[i])
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cputime.Process()
	for i := 0; i < b.N; i++ {
		bt := &batches[i%len(batches)]
		for j := range bt.Results {
			bt.Results[j] = window.Accepted
		}
		agg.Ingest(bt)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/sample")
	b.ReportMetric(float64(cputime.Process()-cpu)/float64(b.N*batch), "cpu-ns/sample")
}

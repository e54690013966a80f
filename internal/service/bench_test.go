package service_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/cputime"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/wal"
	"github.com/aggd/aggd/internal/window"
)

// BenchmarkStreamLoopback sends 500-sample batches of 100k contexts over a
// real TCP loopback stream into the aggregator, one batch in flight: the
// whole path per batch, client included. ns/sample is the figure to watch;
// allocs/op counts per batch (gRPC's and the ack's), never per sample.
//
// Sub-benchmarks: in memory, and with the write-ahead log under each fsync
// policy and compression (the log is never truncated here: no flusher
// runs). cpu-ns/sample is the process's CPU time, client included, user
// and system (the kernel's writes to the page cache count): on a busy
// machine it says more than ns/sample.
func BenchmarkStreamLoopback(b *testing.B) {
	b.Run("memory", func(b *testing.B) { benchStream(b, nil) })
	for _, p := range []struct{ sync, comp string }{{"interval", "none"}, {"interval", "s2"}, {"always", "none"}} {
		b.Run("wal-"+p.sync+"-"+p.comp, func(b *testing.B) {
			sync, _ := wal.ParseSync(p.sync)
			comp, _ := wal.ParseCompression(p.comp)
			l, err := wal.Open(b.TempDir(), wal.Options{Sync: sync, Compression: comp})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			benchStream(b, l)
		})
	}
}

func benchStream(b *testing.B, l *wal.Log) {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 0})
	addr := servicetest.ServeWith(b, agg, func(cfg *service.Config) {
		if l != nil {
			tenants, _ := service.NewTenants(service.TenantsConfig{MaxTenants: 100}) // for replay, which does not run here
			jnl, err := journal.New(journal.Config{Log: l, Due: agg.Due, SpanHold: time.Minute, Tenants: tenants,
				Limits: codec.DefaultLimits(), Ingest: agg, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			cfg.Journal = jnl
		}
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	st, err := aggdv1.NewAggregatorServiceClient(conn).Stream(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	const batch, contexts = 500, 100_000
	reqs := make([]*aggdv1.StreamRequest, contexts/batch)
	for i := range reqs {
		reqs[i] = &aggdv1.StreamRequest{Batch: &aggdv1.Batch{}}
		for j := range batch {
			c := i*batch + j
			reqs[i].Batch.Samples = append(reqs[i].Batch.Samples, &aggdv1.Sample{
				Name: "load.metric", Type: aggdv1.MetricType(1 + c%2), Value: 1,
				Tags: []string{fmt.Sprintf("ctx:%d", c), "env:prod", "service:api"},
			})
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cputime.Process()
	for i := 0; i < b.N; i++ {
		r := reqs[i%len(reqs)]
		r.Sequence = uint64(i)
		if err := st.Send(r); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/sample")
	b.ReportMetric(float64(cputime.Process()-cpu)/float64(b.N*batch), "cpu-ns/sample")
}

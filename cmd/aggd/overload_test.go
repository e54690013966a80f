package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/overload"
)

// TestOverloadKeepsMemoryAndSmallTenants runs aggd under a memory budget
// while one tenant streams new contexts as fast as acks allow, far more
// than the budget holds, and another submits a steady trickle. The
// process stays within its budget and up, the flood is slowed (and
// refused past the hard limit), and the small tenant is never refused.
func TestOverloadKeepsMemoryAndSmallTenants(t *testing.T) {
	const budget = 64 << 20
	in := startAggd(t, "--memory-limit", fmt.Sprint(budget), "--interval", "1s", "--output", os.DevNull)
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	tenantCtx := func(ctx context.Context, id string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "x-tenant-id", id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	// The process's memory, as the guard counts it, and aggd's pressure
	// level, sampled throughout.
	var peak atomic.Uint64
	var pressured atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			if m := overload.ReadRuntime(); m > peak.Load() {
				peak.Store(m)
			}
			if i%10 == 0 && metric(scrape(t, in.admin), "aggd_memory_pressure") >= 1 {
				pressured.Store(true)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	// The flood: 4 streams of batches of 1000 new contexts each.
	var flooded, refused atomic.Int64
	var next atomic.Int64
	for range 4 {
		wg.Go(func() {
			batch := &aggdv1.Batch{Samples: make([]*aggdv1.Sample, 1000)}
			for i := range batch.Samples {
				batch.Samples[i] = &aggdv1.Sample{Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1}
			}
			for ctx.Err() == nil {
				st, err := client.Stream(tenantCtx(ctx, "flood"))
				if err != nil {
					return
				}
				for seq := uint64(1); ; seq++ {
					for _, s := range batch.Samples {
						s.Name = fmt.Sprintf("flood.%d", next.Add(1))
					}
					if err = st.Send(&aggdv1.StreamRequest{Sequence: seq, Batch: batch}); err == nil {
						_, err = st.Recv()
					}
					if err != nil {
						break
					}
					flooded.Add(int64(len(batch.Samples)))
				}
				if status.Code(err) == codes.ResourceExhausted {
					refused.Add(1)
					time.Sleep(100 * time.Millisecond) // shorter than its RetryInfo, to press harder
				}
			}
		})
	}

	// The trickle: one small batch every 10 ms from a tenant with few
	// contexts, until 200 of them went in under pressure.
	var lat []time.Duration
	var trickled, underPressure int
	small := tenantCtx(context.Background(), "small")
	for i := 0; ctx.Err() == nil && underPressure < 200; i++ {
		if pressured.Load() {
			underPressure++
		}
		b := &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "small.count", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, Tags: []string{fmt.Sprintf("i:%d", i%20)}}}}
		start := time.Now()
		callCtx, callCancel := context.WithTimeout(small, 2*time.Second)
		resp, err := client.Submit(callCtx, &aggdv1.SubmitRequest{Batch: b})
		callCancel()
		if err != nil {
			t.Fatalf("small tenant refused or stalled after %d batches (peak %d MiB): %v", trickled, peak.Load()>>20, err)
		}
		if resp.Ack.Accepted != 1 {
			t.Fatalf("small tenant ack %v", resp.Ack)
		}
		lat = append(lat, time.Since(start))
		trickled++
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	if underPressure < 200 {
		t.Fatalf("memory pressure never came (flood: %d samples acked)", flooded.Load())
	}
	if p := peak.Load(); p > budget {
		t.Errorf("memory peaked at %d MiB, over the %d MiB budget", p>>20, budget>>20)
	}
	slices.Sort(lat)
	t.Logf("flood: %d samples acked, %d refusals; small: %d batches (%d under pressure), p50 %v p99 %v max %v; peak memory %d MiB of %d",
		flooded.Load(), refused.Load(), trickled, underPressure, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1], peak.Load()>>20, budget>>20)
	in.stop(t)
}

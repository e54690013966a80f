package main

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strings"
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
//
// Pressure comes from an amount, not a duration: the flood's contexts
// carry about 800 bytes of name and tags each, and it sends up to four
// times the budget of them, however slow the machine; the trickle runs
// until 200 of its batches went in under pressure. The deadlines only
// catch a hang.
func TestOverloadKeepsMemoryAndSmallTenants(t *testing.T) {
	const budget = 64 << 20
	const (
		perContext  = 800 // bytes of name and tags
		maxContexts = 4 * budget / perContext
	)
	// aggd runs in the test's process, whose memory the guard reads:
	// hand back what earlier tests freed, so that the budget is aggd's.
	debug.FreeOSMemory()
	if m := overload.ReadRuntime(); m > budget/2 {
		t.Fatalf("the test process holds %d MiB before aggd starts: an earlier test keeps memory", m>>20)
	} else {
		t.Logf("the test process holds %d MiB before aggd starts", m>>20)
	}
	in := startAggd(t, "--memory-limit", fmt.Sprint(budget), "--interval", "1s", "--output", os.DevNull)
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	tenantCtx := func(ctx context.Context, id string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "x-tenant-id", id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
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

	// The flood: 4 streams of batches of 250 new contexts each, until
	// the trickle is done or maxContexts were sent.
	var flooded, refused atomic.Int64
	var next atomic.Int64
	flood, floodCancel := context.WithCancel(ctx)
	defer floodCancel()
	var floods sync.WaitGroup
	pad := strings.Repeat("p", (perContext-40)/4)
	for range 4 {
		floods.Go(func() {
			batch := &aggdv1.Batch{Samples: make([]*aggdv1.Sample, 250)}
			for i := range batch.Samples {
				batch.Samples[i] = &aggdv1.Sample{Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, Tags: make([]string, 4)}
			}
			for flood.Err() == nil {
				st, err := client.Stream(tenantCtx(flood, "flood"))
				if err != nil {
					return
				}
				for seq := uint64(1); ; seq++ {
					if next.Load() >= maxContexts {
						floodCancel()
					}
					for _, s := range batch.Samples {
						n := next.Add(1)
						s.Name = fmt.Sprintf("flood.%d", n)
						for j := range s.Tags {
							s.Tags[j] = fmt.Sprintf("t%d:%d%s", j, n, pad)
						}
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

	floodDone := make(chan struct{})
	go func() { floods.Wait(); close(floodDone) }()

	// The trickle: one small batch every 10 ms from a tenant with few
	// contexts, until 200 of them went in under pressure.
	var lat []time.Duration
	var trickled, underPressure int
	small := tenantCtx(context.Background(), "small")
	exhausted := func() bool {
		select {
		case <-floodDone:
			return !pressured.Load()
		default:
			return false
		}
	}
	for i := 0; ctx.Err() == nil && underPressure < 200 && !exhausted(); i++ {
		if pressured.Load() {
			underPressure++
		}
		b := &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "small.count", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, Tags: []string{fmt.Sprintf("i:%d", i%20)}}}}
		start := time.Now()
		callCtx, callCancel := context.WithTimeout(small, time.Minute)
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
	floodCancel()
	<-floodDone
	cancel()
	wg.Wait()
	if underPressure < 200 {
		t.Fatalf("memory pressure never came (flood: %d samples acked, %d contexts sent)", flooded.Load(), next.Load())
	}
	if p := peak.Load(); p > budget {
		t.Errorf("memory peaked at %d MiB, over the %d MiB budget", p>>20, budget>>20)
	}
	slices.Sort(lat)
	t.Logf("flood: %d samples acked, %d refusals; small: %d batches (%d under pressure), p50 %v p99 %v max %v; peak memory %d MiB of %d",
		flooded.Load(), refused.Load(), trickled, underPressure, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1], peak.Load()>>20, budget>>20)
	in.stop(t)
}

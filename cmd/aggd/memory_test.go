package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/client"
)

// peakRSS returns a process's peak resident set (VmHWM), bytes.
func peakRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}

// bigBatch is n samples of about 16 bytes each: one context, packed.
func bigBatch(n int) *aggdv1.Batch {
	b := &aggdv1.Batch{Samples: make([]*aggdv1.Sample, n)}
	s := &aggdv1.Sample{Name: "m", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1}
	for i := range b.Samples {
		b.Samples[i] = s
	}
	return b
}

// TestRequestsInFlightStayWithinTheMemoryBudget sends aggd, run with a
// 256 MiB budget, four streams each carrying one 16 MB request of 1,000,000
// samples, at once. Each request is acked or refused with
// RESOURCE_EXHAUSTED, and aggd's peak resident set stays within the budget
// plus the receive buffers of the four requests (which gRPC takes before
// aggd sees their size). The amount drives the test: the requests are
// the same however fast the machine is.
func TestRequestsInFlightStayWithinTheMemoryBudget(t *testing.T) {
	const (
		budget  = 256 << 20
		streams = 4
		samples = 1_000_000
	)
	p := startProcess(t, buildAggd(t), "--memory-limit", fmt.Sprint(budget), "--output", os.DevNull, "--interval", "1s")
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(32<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw := aggdv1.NewAggregatorServiceClient(conn)
	req := &aggdv1.StreamRequest{Sequence: 1, Batch: bigBatch(samples)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	codesGot := make([]codes.Code, streams)
	for i := range streams {
		wg.Go(func() {
			st, err := raw.Stream(ctx)
			if err == nil {
				err = st.Send(req)
			}
			if err == nil {
				_, err = st.Recv()
			}
			codesGot[i] = status.Code(err)
		})
	}
	wg.Wait()
	peak := peakRSS(t, p.cmd.Process.Pid)
	const limit = budget + streams*16<<20
	t.Logf("peak RSS %d MiB with a budget of %d MiB (bound %d MiB); results %v", peak>>20, budget>>20, limit>>20, codesGot)
	for i, c := range codesGot {
		if c != codes.OK && c != codes.ResourceExhausted {
			t.Errorf("stream %d: %v, want OK or ResourceExhausted", i, c)
		}
	}
	if peak > limit {
		t.Errorf("peak RSS %d MiB, over the budget of %d MiB plus %d MiB of receive buffers", peak>>20, budget>>20, (limit-budget)>>20)
	}

	// A Go client, given the same batch, splits what is refused as too
	// large and gets every sample in. One keeps the test's time
	// reasonable under the race detector (TestClientRefusalsDoNotWedge
	// covers the client's refusals more widely).
	const clients = 1
	var cwg sync.WaitGroup
	for range clients {
		cwg.Go(func() {
			c := client.New(conn, client.Options{BatchSize: samples, MaxBatchBytes: 32 << 20})
			for _, s := range bigBatch(samples).Samples {
				if err := c.Add(ctx, s); err != nil {
					t.Error(err)
					break
				}
			}
			if err := c.Close(ctx); err != nil {
				t.Errorf("client: %v", err)
			}
		})
	}
	cwg.Wait()
	if got := metric(scrape(t, p.admin), `aggd_items_accepted_total{tenant="default"}`); got != clients*samples {
		t.Errorf("aggd accepted %v samples from the clients, want %d", got, clients*samples)
	}
	peak = peakRSS(t, p.cmd.Process.Pid)
	t.Logf("after the clients: peak RSS %d MiB", peak>>20)
	if peak > limit {
		t.Errorf("peak RSS %d MiB, over the budget of %d MiB plus %d MiB of receive buffers", peak>>20, budget>>20, (limit-budget)>>20)
	}
}

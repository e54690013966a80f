package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/client"
)

// TestClientRefusalsDoNotWedge runs the Go client against aggd on
// loopback with a 64 KiB message limit and room for one tenant. A batch
// over the limit is split to fit and every sample arrives; the second
// tenant's batches are refused (tenant_limit) and reported to OnReject,
// one by one, while later batches go on; Close returns. aggd counts and
// logs the refusals.
func TestClientRefusalsDoNotWedge(t *testing.T) {
	in := startAggd(t, "--max-recv-msg-size", "65536", "--max-tenants", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// 2000 samples of about 100 bytes: one batch of about 200 KB (with
	// full names: by series reference it would fit).
	big := client.New(in.conn, client.Options{BatchSize: 2000, FullNames: true, Metadata: map[string]string{"x-tenant-id": "big"}})
	const n = 2000
	tag := "pad:" + strings.Repeat("x", 80)
	for i := range n {
		if err := big.Add(ctx, smp(fmt.Sprintf("m%d", i%10), aggdv1.MetricType_METRIC_TYPE_COUNT, 1, tag)); err != nil {
			t.Fatal(err)
		}
	}
	if err := big.Close(ctx); err != nil {
		t.Fatalf("closing the client of the oversized batch: %v", err)
	}
	text := scrape(t, in.admin)
	if got := metric(text, `aggd_items_accepted_total{tenant="big"}`); got != n {
		t.Fatalf("aggd accepted %v samples, want %d", got, n)
	}

	var mu sync.Mutex
	reasons := map[string]int{}
	other := client.New(in.conn, client.Options{BatchSize: 10, MaxInFlight: 2, Metadata: map[string]string{"x-tenant-id": "other"},
		OnReject: func(_ *aggdv1.Batch, r *aggdv1.Rejection) {
			mu.Lock()
			reasons[r.Reason]++
			mu.Unlock()
		}})
	const m = 50 // five batches, more than MaxInFlight
	for i := range m {
		if err := other.Add(ctx, smp("o", aggdv1.MetricType_METRIC_TYPE_COUNT, float64(i))); err != nil {
			t.Fatalf("Add %d: %v", i, err)
		}
	}
	if err := other.Close(ctx); err != nil {
		t.Fatalf("closing the client of the refused tenant: %v", err)
	}
	mu.Lock()
	if reasons["tenant_limit"] != m || len(reasons) != 1 {
		t.Errorf("OnReject got %v, want %d tenant_limit", reasons, m)
	}
	mu.Unlock()
	text = scrape(t, in.admin)
	if got := metric(text, `aggd_requests_refused_total{reason="tenant_limit"}`); !(got >= m/10) {
		t.Errorf("aggd_requests_refused_total{reason=\"tenant_limit\"} = %v, want at least %d", got, m/10)
	}
	if got := metric(text, `aggd_requests_refused_total{reason="too_large"}`); !(got >= 1) {
		t.Errorf("aggd_requests_refused_total{reason=\"too_large\"} = %v, want at least 1", got)
	}
}

package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/client"
)

// TestSeriesRefsAcrossExpiryAndResumes sends the same counters through
// aggd on loopback from a Go client using series references and one
// sending full names, in two rounds: between them every context expires
// (the references' cached contexts are gone), and aggd's one-second stream
// age makes the first client resume and declare its references again.
// Every sample is counted once in the flushed output. A reference never
// declared on a stream is refused by itself as unknown_series.
func TestSeriesRefsAcrossExpiryAndResumes(t *testing.T) {
	in := startAggd(t, "--interval", "1s", "--grace", "0s", "--max-future", "0s", "--context-ttl", "2s",
		"--counter-expiry", "0s", "--max-stream-age", "1s")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	md := map[string]string{"x-tenant-id": "refs"}
	var rejected []string
	refs := client.New(in.conn, client.Options{BatchSize: 50, MaxInFlight: 2, Metadata: md,
		OnReject: func(_ *aggdv1.Batch, r *aggdv1.Rejection) { rejected = append(rejected, r.Reason+": "+r.Detail) }})
	full := client.New(in.conn, client.Options{BatchSize: 50, FullNames: true, Metadata: md})
	const series, rounds, each = 20, 2, 10
	send := func() {
		for i := range series * each {
			tag := fmt.Sprintf("i:%d", i%series)
			s := &aggdv1.Sample{Name: "ref.c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, Host: "h", Tags: []string{tag, "env:test"}}
			if err := refs.Add(ctx, s); err != nil {
				t.Fatal(err)
			}
			f := &aggdv1.Sample{Name: "ref.c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 2, Host: "h", Tags: []string{"env:test", tag}}
			if err := full.Add(ctx, f); err != nil {
				t.Fatal(err)
			}
		}
		if err := refs.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := full.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for round := range rounds {
		send()
		if round == rounds-1 {
			break
		}
		// Every context expires: idle past the TTL, swept by a tick.
		for deadline := time.Now().Add(60 * time.Second); ; {
			if metric(scrape(t, in.admin), `aggd_contexts{tenant="refs"}`) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the contexts did not expire")
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if err := refs.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := full.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(rejected) > 0 {
		t.Fatalf("refused: %v", rejected)
	}
	if refs.Resumes.Load() == 0 {
		t.Fatal("the client never resumed its stream")
	}

	// A reference the stream never declared.
	st, err := aggdv1.NewAggregatorServiceClient(in.conn).Stream(metadata.AppendToOutgoingContext(ctx, "x-tenant-id", "refs"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&aggdv1.StreamRequest{Sequence: 1, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
		{SeriesRef: 7, Value: 1},
		{Name: "ref.other", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1, SeriesRef: 8},
		{SeriesRef: 8, Value: 1},
	}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if a := resp.GetAck(); a.Accepted != 2 || a.Rejected != 1 || a.Rejections[0].Index != 0 || a.Rejections[0].Reason != "unknown_series" ||
		!strings.Contains(a.Rejections[0].Detail, "series_ref 7") {
		t.Fatalf("ack %v, want sample 0 refused as unknown_series", a)
	}
	st.CloseSend()

	got := map[string]float64{}
	for _, l := range in.stop(t) {
		if l["name"] == "ref.c" {
			got[key(l)] += l["value"].(float64)
		}
	}
	if len(got) != series {
		t.Fatalf("%d series flushed, want %d: %v", len(got), series, got)
	}
	for k, v := range got {
		if v != rounds*each*3 {
			t.Errorf("%s: %v, want %d", k, v, rounds*each*3)
		}
	}
}

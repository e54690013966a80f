package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestIntakeOutageLosesNothing keeps a client streaming counts while the
// Datadog intake answers 503 for 60 s, then lets it upAt: every acked
// sample reaches the intake exactly once and nothing is counted lost.
func TestIntakeOutageLosesNothing(t *testing.T) {
	outage := 60 * time.Second
	if testing.Short() {
		outage = 5 * time.Second
	}
	var down atomic.Bool
	var refused atomic.Int64
	down.Store(true)
	dd := upstreamtest.NewDatadogIntake(t)
	dd.Answer = func(path string, _ int) upstreamtest.Answer {
		if down.Load() {
			refused.Add(1)
			return upstreamtest.Answer{Status: http.StatusServiceUnavailable}
		}
		return upstreamtest.Answer{}
	}
	cfgFile := filepath.Join(t.TempDir(), "aggd.toml")
	os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
default_upstreams = ["dd"]

[[upstream]]
name = "dd"
type = "datadog"
url = %q
api_key = "k"
initial_backoff = "50ms"
max_backoff = "1s"
`, dd.URL)), 0o600)
	in := startAggd(t, "--config", cfgFile, "--interval", "1s", "--grace", "0s")
	client := aggdv1.NewAggregatorServiceClient(in.conn)

	const contexts, perBatch = 50, 500
	st, err := client.Stream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	batch := &aggdv1.Batch{}
	for i := range perBatch {
		batch.Samples = append(batch.Samples, &aggdv1.Sample{
			Name: "outage.count", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1,
			Tags: []string{fmt.Sprintf("ctx:%d", i%contexts)},
		})
	}
	var acked int
	upAt := time.Now().Add(outage)
	end := upAt.Add(3 * time.Second) // load continues past the recovery
	for seq := uint64(1); time.Now().Before(end); seq++ {
		if down.Load() && time.Now().After(upAt) {
			down.Store(false)
		}
		if err := st.Send(&aggdv1.StreamRequest{Sequence: seq, Batch: batch}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if a := resp.GetAck(); a.Rejected != 0 {
			t.Fatalf("ack %d: %v", seq, a)
		}
		acked += perBatch
		time.Sleep(2 * time.Millisecond)
	}
	st.CloseSend()
	if refused.Load() == 0 {
		t.Fatal("the intake refused nothing: there was no outage")
	}

	delivered := func() (sum float64) {
		for _, p := range dd.Series() {
			if p.Metric == "outage.count" {
				sum += p.Value
			}
		}
		return sum
	}
	// Closed windows drain through the retries; the open one waits for
	// shutdown.
	deadline := time.Now().Add(30 * time.Second)
	for delivered() < float64(acked)*0.9 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	metrics := scrape(t, in.admin)
	if v := metric(metrics, `aggr_send_failed_total{reason="http_503",upstream="dd"}`); !(v > 0) {
		t.Errorf("aggr_send_failed_total http_503 = %v after an outage", v)
	}
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "aggr_lost_points_total{") && !strings.HasSuffix(line, " 0") {
			t.Errorf("points lost: %s", line)
		}
	}
	in.stop(t)
	if err := dd.Err(); err != nil {
		t.Fatal(err)
	}
	if got := delivered(); got != float64(acked) {
		t.Fatalf("intake received %v, acked %d (%d requests refused during the %v outage)", got, acked, refused.Load(), outage)
	}
	t.Logf("%d samples acked over a %v outage, all delivered; %d requests refused", acked, outage, refused.Load())
}

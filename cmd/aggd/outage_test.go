package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	dd, down, cfgFile := flakyIntake(t, "initial_backoff = \"50ms\"\nmax_backoff = \"1s\"")
	var refused atomic.Int64
	down.Store(true)
	answer := dd.Answer
	dd.Answer = func(path string, n int) upstreamtest.Answer {
		a := answer(path, n)
		if a.Status != 0 {
			refused.Add(1)
		}
		return a
	}
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
				sum += p.Value * float64(p.Interval) // a rate of sum ÷ interval
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

// TestFullSendQueuePushesBack keeps the Datadog intake down until the send
// queue on disk reaches --queue-max-bytes: aggd_send_queue_full turns on
// and batches are refused with RESOURCE_EXHAUSTED instead of piling up.
// When the intake comes back the queue drains and batches are taken again.
func TestFullSendQueuePushesBack(t *testing.T) {
	_, down, cfgFile := flakyIntake(t, "compression = \"none\"\ninitial_backoff = \"20ms\"\nmax_backoff = \"100ms\"")
	down.Store(true)
	dir := t.TempDir()
	in := startAggd(t, "--config", cfgFile, "--wal-dir", filepath.Join(dir, "data"), "--queue-max-bytes", "1048576",
		"--interval", "1s", "--grace", "0s", "--export-timeout", "500ms")
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	// queueRefusal reports whether err refuses a batch for the full send
	// queue; a refusal for memory says nothing about the queue.
	queueRefusal := func(err error) bool {
		st := status.Convert(err)
		return st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "send queue")
	}
	refused := false
	for i := 0; !refused && i < 2000; i++ {
		b := newContexts("queue.fill", aggdv1.MetricType_METRIC_TYPE_GAUGE, i, 500)
		_, err := client.Submit(context.Background(), &aggdv1.SubmitRequest{Batch: b})
		switch {
		case err == nil, status.Code(err) == codes.ResourceExhausted && !queueRefusal(err):
			time.Sleep(5 * time.Millisecond)
		case queueRefusal(err):
			refused = true
		default:
			t.Fatal(err)
		}
	}
	if !refused {
		t.Fatal("batches were never refused while the send queue filled")
	}
	// The intake is down: nothing leaves the queue, so it stays full.
	if v := metric(scrape(t, in.admin), "aggd_send_queue_full"); v != 1 {
		t.Fatalf("aggd_send_queue_full = %v while batches are refused", v)
	}
	down.Store(false)
	// The queue drains, and then a batch is taken. The flushes held back
	// while it was full may fill it again for a moment, and a refusal then
	// asks the client to retry, as it does. Only a hang reaches the bound.
	deadline := time.Now().Add(2 * time.Minute)
	drained := false
	for {
		if !drained {
			drained = metric(scrape(t, in.admin), "aggd_send_queue_full") == 0
		}
		if drained {
			_, err := client.Submit(context.Background(), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
				{Name: "queue.after", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1}}}})
			if err == nil {
				break
			}
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("a batch after the queue drained: %v", err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the intake came back: the send queue drained %v, and no batch was taken", drained)
		}
		time.Sleep(50 * time.Millisecond)
	}
	in.stop(t)
}

// newContexts is batch i of n samples of value 1, each of a new context:
// big payloads.
func newContexts(name string, typ aggdv1.MetricType, i, n int) *aggdv1.Batch {
	b := &aggdv1.Batch{}
	for j := range n {
		b.Samples = append(b.Samples, &aggdv1.Sample{Name: name, Type: typ, Value: 1,
			Tags: []string{fmt.Sprintf("batch:%d", i), fmt.Sprintf("n:%d", j)}})
	}
	return b
}

// flakyIntake is a loopback Datadog intake answering 503 while down is
// set, and the aggd.toml that makes it the only upstream (extra: more
// keys of its [[upstream]] table).
func flakyIntake(t *testing.T, extra string) (dd *upstreamtest.DatadogIntake, down *atomic.Bool, cfgFile string) {
	t.Helper()
	down = &atomic.Bool{}
	dd = upstreamtest.NewDatadogIntake(t)
	dd.Answer = func(string, int) upstreamtest.Answer {
		if down.Load() {
			return upstreamtest.Answer{Status: http.StatusServiceUnavailable}
		}
		return upstreamtest.Answer{}
	}
	cfgFile = filepath.Join(t.TempDir(), "aggd.toml")
	os.WriteFile(cfgFile, []byte(fmt.Sprintf(`
default_upstreams = ["dd"]

[[upstream]]
name = "dd"
type = "datadog"
url = %q
api_key = "k"
%s
`, dd.URL, extra)), 0o600)
	return dd, down, cfgFile
}

// TestCleanStopDeliversEverythingAcked fills the send queue on disk while
// the intake is down, with an export timeout far shorter than the outage:
// flushes wait for room instead of dropping payloads, and batches are
// refused meanwhile. With the intake back, a clean stop delivers every
// sample acked and returns no error. With the intake still down, a stop
// whose deadline passes returns an error naming what was not handed on.
func TestCleanStopDeliversEverythingAcked(t *testing.T) {
	for _, comesBack := range []bool{true, false} {
		t.Run(fmt.Sprint("intake back ", comesBack), func(t *testing.T) {
			dd, down, cfgFile := flakyIntake(t, "compression = \"none\"\ninitial_backoff = \"20ms\"\nmax_backoff = \"100ms\"")
			down.Store(true)
			dir := t.TempDir()
			// The stop that sends the queue gets a deadline far past what
			// it needs on a quiet machine (about 1 s), so that a slow one
			// still shows the queue delivered; the stop with the intake
			// down waits out its deadline, so it is shorter.
			stopWithin := "10s"
			if comesBack {
				stopWithin = "120s"
			}
			in := startAggd(t, "--config", cfgFile, "--wal-dir", filepath.Join(dir, "data"), "--queue-max-bytes", "1048576",
				"--interval", "1s", "--grace", "0s", "--export-timeout", "100ms", "--shutdown-timeout", stopWithin)
			client := aggdv1.NewAggregatorServiceClient(in.conn)
			acked, refusals := 0, 0
			// Batches until 20 refusals: the queue filled and stayed full
			// across several flushes.
			for i := 0; refusals < 20 && i < 5000; i++ {
				b := newContexts("stop.count", aggdv1.MetricType_METRIC_TYPE_COUNT, i, 200)
				_, err := client.Submit(context.Background(), &aggdv1.SubmitRequest{Batch: b})
				switch status.Code(err) {
				case codes.OK:
					acked += len(b.Samples)
				case codes.ResourceExhausted:
					refusals++
					time.Sleep(50 * time.Millisecond)
				default:
					t.Fatal(err)
				}
			}
			if refusals < 20 {
				t.Fatal("batches were never refused while the send queue filled")
			}
			if comesBack {
				down.Store(false)
			}
			start := time.Now()
			in.cancel()
			in.conn.Close()
			err := <-in.done
			in.cancel = nil
			took := time.Since(start)
			if !comesBack {
				if err == nil || !strings.Contains(err.Error(), "--wal-dir") {
					t.Fatalf("stop with the intake down: %v, want an error naming what the log keeps", err)
				}
				t.Logf("stop with the intake down: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("clean stop: %v", err)
			}
			delivered := 0.0
			for _, p := range dd.Series() {
				if p.Metric == "stop.count" {
					delivered += p.Value * float64(p.Interval) // a rate of sum ÷ interval
				}
			}
			if delivered != float64(acked) {
				t.Fatalf("intake received %v, acked %d", delivered, acked)
			}
			t.Logf("%d samples acked, all delivered; the stop that sent the queue took %v", acked, took)
		})
	}
}

// TestFailedStartStopsWhatStarted fails a start at its last step, the
// gRPC port being taken, after the router has opened its send queue on
// disk: the error names the port, and what had started is stopped again,
// so that a second start on the same --wal-dir opens the queue (a file
// one process holds at a time) and serves.
func TestFailedStartStopsWhatStarted(t *testing.T) {
	_, _, cfgFile := flakyIntake(t, "")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := filepath.Join(t.TempDir(), "data")
	args := []string{"--config", cfgFile, "--wal-dir", dir, "--admin-listen", "", "--pprof-listen", "", "--listen", taken.Addr().String()}
	err = run(context.Background(), args, func(string) string { return "" }, io.Discard, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Fatalf("start on a taken port: %v, want an error naming it", err)
	}
	startAggd(t, "--config", cfgFile, "--wal-dir", dir)
}

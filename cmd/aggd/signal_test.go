package main

import (
	"bufio"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

// TestSIGTERMDrainsAndFlushes runs the aggd binary, acks a batch on a stream
// that stays open, sends SIGTERM and checks that the process exits cleanly
// within its deadline having flushed the acked samples.
func TestSIGTERMDrainsAndFlushes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "aggd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "out.jsonl")
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--admin-listen", "", "--pprof-listen", "", "--output", out, "--drain-timeout", "1s", "--interval", "1h", "--context-ttl", "3h")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logs := bufio.NewScanner(stderr)
	addrRE := regexp.MustCompile(`grpc=(\S+)`)
	var addr string
	for addr == "" && logs.Scan() {
		if m := addrRE.FindStringSubmatch(logs.Text()); m != nil {
			addr = m[1]
		}
	}
	go func() { // keep draining the pipe
		for logs.Scan() {
		}
	}()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := aggdv1.NewAggregatorServiceClient(conn).Stream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&aggdv1.StreamRequest{Sequence: 1, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
		{Name: "before.term", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 42},
	}}})
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	watch, err := healthpb.NewHealthClient(conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if h, err := watch.Recv(); err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before SIGTERM: %v %v", h, err)
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	if h, err := watch.Recv(); err != nil || h.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health after SIGTERM: %v %v, want NOT_SERVING", h, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("aggd did not exit within 15s of SIGTERM")
	}
	t.Logf("shutdown took %v with an idle stream open (drain timeout 1s)", time.Since(start))
	if _, err := st.Recv(); err == nil {
		t.Fatal("stream still open after exit")
	}
	var sum float64
	for _, l := range readLines(t, out) {
		if l["name"] == "before.term" {
			sum += l["value"].(float64)
		}
	}
	if sum != 42 {
		t.Fatalf("flushed %v, want 42", sum)
	}
}

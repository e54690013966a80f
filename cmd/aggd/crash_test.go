package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

// buildAggd builds the aggd binary into a temporary directory.
func buildAggd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "aggd")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// process is aggd running as a child process.
type process struct {
	cmd   *exec.Cmd
	addr  string
	admin string
	done  chan struct{} // closed when it has exited, with err set
	err   error
	log   *logTail
}

// logTail keeps a child's stderr for the test log.
type logTail struct {
	mu    sync.Mutex
	lines []string
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

var servingLine = regexp.MustCompile(`msg="aggd serving" .*\bgrpc=(\S+) admin=(\S+)`)

// startProcess runs bin with args and waits until it serves.
func startProcess(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--pprof-listen", ""}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan struct{}), log: &logTail{}}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.log.mu.Lock()
			p.log.lines = append(p.log.lines, line)
			p.log.mu.Unlock()
			if m := servingLine.FindStringSubmatch(line); m != nil && p.addr == "" {
				p.addr, p.admin = m[1], m[2]
				close(ready)
			}
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	select {
	case <-ready:
	case <-p.done:
		t.Fatalf("aggd exited before serving: %v\n%s", p.err, p.log)
	case <-time.After(60 * time.Second):
		t.Fatalf("aggd did not serve within 60s\n%s", p.log)
	}
	return p
}

// TestKillNineLosesNoAckedSample streams counts into aggd with its
// write-ahead log on, while the Datadog intake is up, then down (payloads
// pile up in the send queue on disk), kills aggd with SIGKILL mid-load,
// brings the intake back and restarts aggd on the same directory (with
// the other --wal-compression). Every
// acked sample must reach the intake; duplicates stay within the
// documented bound: what was acked in the last flush interval before the
// kill, plus the batches in flight.
func TestKillNineLosesNoAckedSample(t *testing.T) {
	bin := buildAggd(t)
	dd, down, cfgFile := flakyIntake(t, "initial_backoff = \"20ms\"\nmax_backoff = \"200ms\"")
	dir := t.TempDir()
	args := []string{"--config", cfgFile, "--wal-dir", filepath.Join(dir, "data"), "--interval", "1s", "--grace", "0s"}
	// The first process stores its records as they came; the second,
	// with the default s2, replays them.
	p := startProcess(t, bin, append(args, "--wal-compression", "none")...)

	const streams, inflight, perBatch, contexts = 2, 4, 200, 100
	var acked atomic.Int64
	var mu sync.Mutex
	var ackTimes []time.Time // one per acked batch
	load := func(addr string, stop <-chan struct{}) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		st, err := aggdv1.NewAggregatorServiceClient(conn).Stream(context.Background())
		if err != nil {
			t.Error(err)
			return
		}
		batch := &aggdv1.Batch{}
		for i := range perBatch {
			batch.Samples = append(batch.Samples, &aggdv1.Sample{Name: "crash.count", Type: aggdv1.MetricType_METRIC_TYPE_COUNT,
				Value: 1, Tags: []string{fmt.Sprintf("ctx:%d", i%contexts)}})
		}
		sem := make(chan struct{}, inflight)
		recvDone := make(chan struct{})
		go func() {
			defer close(recvDone)
			for {
				resp, err := st.Recv()
				if err != nil {
					return // the kill
				}
				a := resp.GetAck()
				if a.Rejected != 0 {
					t.Errorf("ack %d: %v", a.Sequence, a)
				}
				acked.Add(int64(a.Accepted))
				mu.Lock()
				ackTimes = append(ackTimes, time.Now())
				mu.Unlock()
				<-sem
			}
		}()
		for seq := uint64(1); ; seq++ {
			select {
			case <-stop:
				<-recvDone
				return
			case <-recvDone:
				return
			case sem <- struct{}{}:
			}
			if st.Send(&aggdv1.StreamRequest{Sequence: seq, Batch: batch}) != nil {
				<-recvDone
				return
			}
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range streams {
		wg.Go(func() { load(p.addr, stop) })
	}
	// Run until flushes have reached the intake, then until sends fail
	// during the outage (queued on disk and in the log): at least 2.5 s
	// each, longer on a slow machine; only a hang reaches the bound.
	waitFor := func(what string, least time.Duration, cond func() bool) {
		t.Helper()
		start := time.Now()
		for time.Since(start) < least || !cond() {
			if time.Since(start) > 60*time.Second {
				t.Fatalf("no %s within 60s\n%s", what, p.log)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("delivery before the outage", 2500*time.Millisecond, func() bool { return len(dd.Series()) > 0 })
	down.Store(true)
	waitFor("failed send during the outage", 2500*time.Millisecond, func() bool {
		return metric(scrape(t, p.admin), `aggr_send_failed_total{reason="http_503",upstream="dd"}`) > 0
	})
	before := len(dd.Series())
	killed := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	close(stop)
	wg.Wait()
	down.Store(false)
	if before == 0 {
		t.Fatal("nothing reached the intake before the outage")
	}

	// The restart replays the log and sends the queue; a clean stop then
	// flushes the open windows.
	p2 := startProcess(t, bin, args...)
	time.Sleep(1500 * time.Millisecond)
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p2.done:
		if p2.err != nil {
			t.Fatalf("aggd after restart: %v\n%s", p2.err, p2.log)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("aggd did not stop\n%s", p2.log)
	}
	if err := dd.Err(); err != nil {
		t.Fatal(err)
	}
	var delivered float64
	for _, pt := range dd.Series() {
		if pt.Metric == "crash.count" {
			delivered += pt.Value * float64(pt.Interval) // a rate of sum ÷ interval
		}
	}
	a := float64(acked.Load())
	mu.Lock()
	last := 0
	for _, at := range ackTimes {
		if at.After(killed.Add(-2 * time.Second)) {
			last++
		}
	}
	mu.Unlock()
	bound := float64((last + streams*inflight) * perBatch)
	t.Logf("acked %.0f, delivered %.0f: %.0f duplicates (bound %.0f)", a, delivered, delivered-a, bound)
	if delivered < a {
		t.Fatalf("%v acked samples lost: acked %v, delivered %v\nrestart log:\n%s", a-delivered, a, delivered, p2.log)
	}
	if delivered-a > bound {
		t.Fatalf("%v duplicates, over the bound of %v", delivered-a, bound)
	}
}

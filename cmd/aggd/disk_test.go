package main

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

// unlimited is RLIM_INFINITY.
const unlimited = ^uint64(0)

// setFileSizeLimit sets the RLIMIT_FSIZE of process pid: no file it
// writes may grow past limit bytes, as if its disk were full there.
func setFileSizeLimit(t *testing.T, pid int, limit uint64) {
	t.Helper()
	rl := syscall.Rlimit{Cur: limit, Max: unlimited}
	if _, _, errno := syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), uintptr(syscall.RLIMIT_FSIZE),
		uintptr(unsafe.Pointer(&rl)), 0, 0, 0); errno != 0 {
		t.Fatalf("prlimit: %v", errno)
	}
}

// TestFullDiskStopsAcksAndResumes runs aggd with its write-ahead log and
// send queue, then caps the size of the files it may write, as a full
// disk does. Batches are refused with a status that names the file that
// could not be written (or the full queue), and none of them is acked;
// once the cap is lifted batches are acked again, and after a clean stop
// the intake has every sample aggd acked.
func TestFullDiskStopsAcksAndResumes(t *testing.T) {
	dd, _, cfgFile := flakyIntake(t, "compression = \"none\"\ninitial_backoff = \"20ms\"\nmax_backoff = \"100ms\"")
	dir := t.TempDir()
	p := startProcess(t, buildAggd(t), "--config", cfgFile, "--wal-dir", filepath.Join(dir, "data"),
		"--interval", "1s", "--grace", "0s", "--shutdown-timeout", "20s")
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := aggdv1.NewAggregatorServiceClient(conn)
	acked, sent, batch := 0, 0, 0
	submit := func() (codes.Code, string) {
		b := newContexts("disk.count", aggdv1.MetricType_METRIC_TYPE_COUNT, batch, 100)
		batch++
		sent += len(b.Samples)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := client.Submit(ctx, &aggdv1.SubmitRequest{Batch: b})
		if err == nil {
			acked += len(b.Samples)
		}
		return status.Code(err), status.Convert(err).Message()
	}
	for range 20 {
		if c, msg := submit(); c != codes.OK {
			t.Fatalf("before the disk filled: %v %s", c, msg)
		}
	}

	setFileSizeLimit(t, p.cmd.Process.Pid, 64<<10)
	// Until 20 refusals, however long the files take to reach the cap.
	refusals := map[string]int{}
	for i := 0; len(refusals) == 0 || sum(refusals) < 20; i++ {
		if i == 20000 {
			t.Fatalf("no batch refused after %d with files capped at 64 KiB", i)
		}
		switch c, msg := submit(); c {
		case codes.OK:
		case codes.Unavailable, codes.ResourceExhausted:
			if !strings.Contains(msg, "file too large") && !strings.Contains(msg, "send queue on disk") {
				t.Fatalf("refused with %v %q: it names neither the file nor the queue", c, msg)
			}
			refusals[c.String()]++
			time.Sleep(20 * time.Millisecond)
		default:
			t.Fatalf("%v %s", c, msg)
		}
	}

	setFileSizeLimit(t, p.cmd.Process.Pid, unlimited)
	// Service resumes: 20 batches acked in a row, however long the
	// queue takes to be written again.
	for ok, i := 0, 0; ok < 20; i++ {
		if i == 20000 {
			t.Fatal("batches still refused after the cap was lifted")
		}
		if c, _ := submit(); c == codes.OK {
			ok++
		} else {
			ok = 0
			time.Sleep(20 * time.Millisecond)
		}
	}

	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	if p.err != nil {
		t.Fatalf("aggd exited with %v after the disk came back\n%s", p.err, p.log)
	}
	delivered := 0.0
	for _, pt := range dd.Series() {
		if pt.Metric == "disk.count" {
			delivered += pt.Value * float64(pt.Interval)
		}
	}
	if delivered < float64(acked) || delivered > float64(sent) {
		t.Fatalf("intake received %v samples; %d were acked and %d sent", delivered, acked, sent)
	}
	t.Logf("refusals while full %v; %d samples acked, %d delivered of %d sent; stop took %v", refusals, acked, int(delivered), sent, time.Since(start))
}

func sum(m map[string]int) (n int) {
	for _, v := range m {
		n += v
	}
	return n
}

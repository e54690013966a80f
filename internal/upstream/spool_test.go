package upstream_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

func openSpool(t *testing.T, path string, max int64) *upstream.Spool {
	t.Helper()
	s, err := upstream.OpenSpool(path, max)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSpoolKeepsPayloadsAcrossRestarts hands out payloads oldest first,
// and after a reopen hands out again every one not deleted, whole.
func TestSpoolKeepsPayloadsAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q")
	s := openSpool(t, path, 1<<20)
	ctx := context.Background()
	for i, k := range []string{"a", "b", "c"} {
		pl := &upstream.Payload{Tenant: "t", Kind: k, Body: bytes.Repeat([]byte(k), 100+i), Encoding: "zstd",
			Header: http.Header{"Dd-Api-Key": {"key-" + k}}, Points: i + 1}
		if _, err := s.Put(ctx, pl, nil); err != nil {
			t.Fatal(err)
		}
	}
	key, pl, err := s.Next(ctx)
	if err != nil || pl.Kind != "a" {
		t.Fatalf("first = %v, %v", pl, err)
	}
	if err := s.Delete(key); err != nil {
		t.Fatal(err)
	}
	if _, pl, _ := s.Next(ctx); pl.Kind != "b" { // handed out, not deleted
		t.Fatalf("second = %v", pl.Kind)
	}
	s.Close()

	s = openSpool(t, path, 1<<20)
	defer s.Close()
	if n, _ := s.Len(); n != 2 {
		t.Fatalf("%d payloads after reopening, want 2", n)
	}
	for i, k := range []string{"b", "c"} {
		_, pl, err := s.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pl.Kind != k || pl.Tenant != "t" || len(pl.Body) != 101+i || pl.Body[0] != k[0] || pl.Encoding != "zstd" ||
			pl.Header.Get("DD-API-KEY") != "key-"+k || pl.Points != i+2 {
			t.Fatalf("payload %d = %+v", i, pl)
		}
	}
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, _, err := s.Next(waitCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next on an exhausted spool = %v", err)
	}
}

// TestSpoolFullWaitsForRoom bounds the bytes held: a Put past the bound
// waits, says so once, and goes in when a Delete makes room.
func TestSpoolFullWaitsForRoom(t *testing.T) {
	s := openSpool(t, filepath.Join(t.TempDir(), "q"), 1000)
	defer s.Close()
	ctx := context.Background()
	body := bytes.Repeat([]byte("x"), 300) // about 450 bytes stored
	var keys []uint64
	for range 2 {
		k, err := s.Put(ctx, &upstream.Payload{Kind: "k", Body: body}, nil)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if s.Full() {
		t.Fatal("full below the bound")
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	full := 0
	if _, err := s.Put(short, &upstream.Payload{Kind: "k", Body: body}, func() { full++ }); !errors.Is(err, context.DeadlineExceeded) || full != 1 {
		t.Fatalf("Put past the bound = %v, onFull called %d times", err, full)
	}
	done := make(chan error)
	go func() {
		_, err := s.Put(ctx, &upstream.Payload{Kind: "k", Body: body}, nil)
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if err := s.Delete(keys[0]); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Len(); n != 2 {
		t.Fatalf("%d payloads, want 2", n)
	}
	// A payload bigger than the bound goes into an empty spool.
	empty := openSpool(t, filepath.Join(t.TempDir(), "q"), 10)
	defer empty.Close()
	if _, err := empty.Put(ctx, &upstream.Payload{Body: body}, nil); err != nil {
		t.Fatal(err)
	}
}

// TestSpooledPipelineResendsAfterRestart queues payloads while the intake
// is down, stops the pipeline (nothing is counted lost: the payloads stay
// on disk), and a new pipeline on the same file delivers every one.
func TestSpooledPipelineResendsAfterRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q")
	down := &script{block: true}
	m := &upstreamtest.Metrics{}
	p := newSpooledPipeline(t, path, down, m)
	for _, k := range []string{"a", "b", "c", "d"} {
		if err := p.Enqueue(context.Background(), &upstream.Payload{Kind: k, Points: 10, Body: []byte(k)}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with the intake down = %v", err)
	}
	if _, _, _, lost := m.Snapshot(); len(lost) != 0 {
		t.Fatalf("lost %v: payloads on disk are not lost", lost)
	}

	up := &recorder{}
	m2 := &upstreamtest.Metrics{}
	p2 := newSpooledPipeline(t, path, up, m2)
	if err := p2.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := up.kinds(); got != "abcd" {
		t.Fatalf("delivered %q after the restart, want abcd in order", got)
	}
	if sent, points, _, lost := m2.Snapshot(); sent != 4 || points != 40 || len(lost) != 0 {
		t.Fatalf("sent %d (%d points), lost %v", sent, points, lost)
	}
	s := openSpool(t, path, 1<<20)
	defer s.Close()
	if n, _ := s.Len(); n != 0 {
		t.Fatalf("%d payloads left on disk after delivery", n)
	}
}

// TestSpooledPipelineFullIsVisible fills the spool while the intake is
// down: Full turns on, the wait is counted as queue_full, and a payload
// that cannot get in before its deadline is counted lost.
func TestSpooledPipelineFullIsVisible(t *testing.T) {
	down := &script{block: true}
	m := &upstreamtest.Metrics{}
	cfg := upstream.DefaultPipelineConfig("test")
	cfg.Spool = openSpool(t, filepath.Join(t.TempDir(), "q"), 1000)
	p := upstream.NewPipeline(cfg, down, m, slog.New(slog.DiscardHandler))
	p.Start(context.Background())
	body := bytes.Repeat([]byte("x"), 300)
	for range 2 {
		if err := p.Enqueue(context.Background(), &upstream.Payload{Kind: "k", Body: body, Points: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if p.Full() {
		t.Fatal("Full before the bound was reached")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := p.Enqueue(ctx, &upstream.Payload{Kind: "k", Body: body, Points: 5}); err == nil {
		t.Fatal("Enqueue past the bound succeeded")
	}
	if !p.Full() {
		t.Fatal("Full is off after a payload waited for room")
	}
	_, _, failed, lost := m.Snapshot()
	if failed["queue_full"] == 0 || lost["queue_full"] != 5 {
		t.Fatalf("failed %v, lost %v", failed, lost)
	}
	if st := p.State(); st.Depth != 2 || st.MaxBytes != 1000 {
		t.Fatalf("state %+v", st)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	p.Shutdown(short)
}

func newSpooledPipeline(t *testing.T, path string, s upstream.Sender, m upstream.PipelineMetrics) *upstream.Pipeline {
	t.Helper()
	cfg := upstream.DefaultPipelineConfig("test")
	cfg.Senders = 1 // in order
	cfg.Spool = openSpool(t, path, 1<<20)
	p := upstream.NewPipeline(cfg, s, m, slog.New(slog.DiscardHandler))
	p.Start(context.Background())
	return p
}

// recorder accepts every payload and remembers their kinds in order.
type recorder struct {
	mu  sync.Mutex
	got []byte
}

func (r *recorder) Send(_ context.Context, p *upstream.Payload) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, p.Kind...)
	return nil
}

func (r *recorder) kinds() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(r.got)
}

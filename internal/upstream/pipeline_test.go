package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// script is a Sender that answers each attempt of a payload from a list,
// then accepts.
type script struct {
	mu       sync.Mutex
	answers  map[string][]error
	attempts map[string][]time.Time
	order    []string // kinds, one per attempt, in the order made
	block    bool     // wait for ctx instead of answering
	hang     int      // wait for ctx on this many first attempts
}

func (s *script) Send(ctx context.Context, p *upstream.Payload) error {
	s.mu.Lock()
	if s.attempts == nil {
		s.attempts = map[string][]time.Time{}
	}
	s.attempts[p.Kind] = append(s.attempts[p.Kind], time.Now())
	s.order = append(s.order, p.Kind)
	var err error
	if a := s.answers[p.Kind]; len(a) > 0 {
		err, s.answers[p.Kind] = a[0], a[1:]
	}
	block := s.block || s.hang > 0
	s.hang--
	s.mu.Unlock()
	if block {
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

func newPipeline(s upstream.Sender, m upstream.PipelineMetrics, mod func(*upstream.PipelineConfig)) *upstream.Pipeline {
	cfg := upstream.DefaultPipelineConfig("test")
	cfg.Senders = 2
	if mod != nil {
		mod(&cfg)
	}
	p := upstream.NewPipeline(cfg, s, m, slog.New(slog.DiscardHandler))
	p.Start(context.Background())
	return p
}

func TestPipelineRetriesUntilAccepted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &script{answers: map[string][]error{
			"a": {&upstream.ReasonError{Reason: "http_500", Err: errors.New("boom")}, &upstream.ReasonError{Reason: "http_503", Err: errors.New("down")}},
			"b": {&upstream.RetryAfterError{After: 7 * time.Second, Reason: "http_429", Err: errors.New("slow down")}},
			"c": {&upstream.PermanentError{Reason: "http_400", Err: errors.New("bad")}},
		}}
		m := &upstreamtest.Metrics{}
		p := newPipeline(s, m, nil)
		for _, k := range []string{"a", "b", "c", "d"} {
			if err := p.Enqueue(context.Background(), &upstream.Payload{Kind: k, Points: 10}); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		sent, points, failed, lost := m.Snapshot()
		if sent != 3 || points != 30 || fmt.Sprint(lost) != "map[http_400:10]" {
			t.Fatalf("sent %d (%d points), lost %v", sent, points, lost)
		}
		if fmt.Sprint(failed) != "map[http_429:1 http_500:1 http_503:1]" {
			t.Fatalf("failed %v", failed)
		}
		b := s.attempts["b"]
		if len(b) != 2 || b[1].Sub(b[0]) < 7*time.Second {
			t.Fatalf("Retry-After not honoured: attempts %v", b)
		}
		a := s.attempts["a"]
		if len(a) != 3 || a[1].Sub(a[0]) > 500*time.Millisecond || a[2].Sub(a[1]) > time.Second {
			t.Fatalf("backoff out of bounds: attempts %v", a)
		}
		if n := len(s.attempts["c"]); n != 1 {
			t.Fatalf("permanent failure tried %d times", n)
		}
	})
}

func TestPipelineBackoffIsCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var errs []error
		for range 12 {
			errs = append(errs, &upstream.ReasonError{Reason: "http_502", Err: errors.New("x")})
		}
		s := &script{answers: map[string][]error{"a": errs}}
		m := &upstreamtest.Metrics{}
		p := newPipeline(s, m, func(c *upstream.PipelineConfig) { c.MaxBackoff = 4 * time.Second })
		p.Enqueue(context.Background(), &upstream.Payload{Kind: "a", Points: 1})
		p.Shutdown(context.Background())
		at := s.attempts["a"]
		for i := 1; i < len(at); i++ {
			if d := at[i].Sub(at[i-1]); d > 4*time.Second {
				t.Fatalf("wait %d was %v, cap 4s", i, d)
			}
		}
		if sent, _, _, _ := m.Snapshot(); sent != 1 || len(at) != 13 {
			t.Fatalf("sent %d after %d attempts", sent, len(at))
		}
	})
}

func TestPipelineFullQueuePushesBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &script{block: true}
		m := &upstreamtest.Metrics{}
		p := newPipeline(s, m, func(c *upstream.PipelineConfig) { c.Senders, c.QueueSize, c.Timeout = 1, 2, time.Hour })
		// One payload in flight, two queued: the fourth waits for room.
		for range 3 {
			p.Enqueue(context.Background(), &upstream.Payload{Kind: "x", Points: 1})
			synctest.Wait()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := p.Enqueue(ctx, &upstream.Payload{Kind: "x", Points: 5}); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want the flush's deadline", err)
		}
		if waited := time.Since(start); waited != 5*time.Second {
			t.Fatalf("Enqueue waited %v, want the whole 5s deadline", waited)
		}
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		defer scancel()
		if err := p.Shutdown(sctx); err == nil {
			t.Fatal("Shutdown returned nil with payloads stuck")
		}
		_, _, failed, lost := m.Snapshot()
		if failed["queue_full"] != 1 || lost["queue_full"] != 5 || lost["shutdown"] != 3 {
			t.Fatalf("failed %v lost %v", failed, lost)
		}
	})
}

func TestPipelineTimeoutIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &script{hang: 1}
		m := &upstreamtest.Metrics{}
		p := newPipeline(s, m, func(c *upstream.PipelineConfig) { c.Timeout = 2 * time.Second })
		p.Enqueue(context.Background(), &upstream.Payload{Kind: "x", Points: 1})
		p.Shutdown(context.Background())
		sent, _, failed, _ := m.Snapshot()
		if sent != 1 || failed["timeout"] != 1 {
			t.Fatalf("sent %d, failed %v", sent, failed)
		}
	})
}

// TestReplacingPayloadWaitsForEarlierOnes retries an early payload while a
// later one replaces its points: the later must reach the intake last.
func TestReplacingPayloadWaitsForEarlierOnes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &script{answers: map[string][]error{"first": {errors.New("503"), errors.New("503"), errors.New("503")}}}
		p := newPipeline(s, &upstreamtest.Metrics{}, func(c *upstream.PipelineConfig) { c.Senders = 4 })
		ctx := context.Background()
		p.Enqueue(ctx, &upstream.Payload{Kind: "first", Points: 1})
		p.Enqueue(ctx, &upstream.Payload{Kind: "other", Points: 1})
		p.Enqueue(ctx, &upstream.Payload{Kind: "correction", Points: 1, Replaces: true})
		if err := p.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		first, other, corr := s.attempts["first"], s.attempts["other"], s.attempts["correction"]
		if len(first) != 4 || len(other) != 1 || len(corr) != 1 {
			t.Fatalf("attempts: first %d, other %d, correction %d", len(first), len(other), len(corr))
		}
		if last := s.order[len(s.order)-1]; last != "correction" {
			t.Fatalf("attempts in order %v: the correction went before an earlier payload was done", s.order)
		}
	})
}

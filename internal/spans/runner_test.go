package spans_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// stuckExporter never delivers: an export waits for its context to end.
type stuckExporter struct{ calls int }

func (e *stuckExporter) ExportTraces(ctx context.Context, _ []spans.Trace) error {
	e.calls++
	<-ctx.Done()
	return ctx.Err()
}

// TestRunnerShutdownHonorsItsDeadline shuts a runner down while its final
// export cannot get through: Shutdown returns at the deadline it was
// given, not at the runner's longer export timeout, and a second call
// returns nil at once.
func TestRunnerShutdownHonorsItsDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := spans.NewSampler(nil, spans.DefaultLimits())
		s.Add(window.NewTenant("t"), &spans.Span{TraceID: [16]byte{1}, SpanID: [8]byte{1}, Service: "api", Name: "op", Start: 1, Duration: 1}, 2)
		exp := &stuckExporter{}
		r, err := spans.NewRunner(spans.RunnerConfig{Sampler: s, Exporter: exp, Timeout: time.Hour, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := r.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want the deadline's error", err)
		}
		if took := time.Since(start); took != 5*time.Second {
			t.Fatalf("Shutdown took %v, want the 5s deadline", took)
		}
		if exp.calls != 1 {
			t.Fatalf("%d exports, want the final one", exp.calls)
		}
		if err := r.Shutdown(ctx); err != nil {
			t.Fatalf("second Shutdown = %v, want nil", err)
		}
	})
}

func TestNewRunnerValidates(t *testing.T) {
	s := spans.NewSampler(nil, spans.DefaultLimits())
	log := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		name string
		cfg  spans.RunnerConfig
	}{
		{"no sampler", spans.RunnerConfig{Exporter: &stuckExporter{}, Timeout: time.Second, Logger: log}},
		{"no exporter", spans.RunnerConfig{Sampler: s, Timeout: time.Second, Logger: log}},
		{"no logger", spans.RunnerConfig{Sampler: s, Exporter: &stuckExporter{}, Timeout: time.Second}},
		{"no timeout", spans.RunnerConfig{Sampler: s, Exporter: &stuckExporter{}, Logger: log}},
	} {
		if _, err := spans.NewRunner(c.cfg); err == nil {
			t.Errorf("%s: NewRunner succeeded, want an error", c.name)
		}
	}
}

// mover takes every held trace out of the sampler, as a member list moving
// them all to another replica would, recording when it ran.
type mover struct {
	moved int
	ticks []time.Time
}

func (m *mover) MoveTraces(_ context.Context, s *spans.Sampler, _ int64) {
	m.ticks = append(m.ticks, time.Now())
	traces, _ := s.Move(func(*window.Tenant, [16]byte) bool { return true })
	m.moved += len(traces)
}

// recordingExporter records the traces it exports.
type recordingExporter struct{ traces int }

func (e *recordingExporter) ExportTraces(_ context.Context, traces []spans.Trace) error {
	e.traces += len(traces)
	return nil
}

// TestRunnerMovesBeforeDeciding: a runner given a mover calls it every
// tick, before it decides, so that a trace moved away is not decided
// here; without one (before MoveBy) the runner decides as it did.
func TestRunnerMovesBeforeDeciding(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, err := spans.ParsePolicy("[trace]\ndata_ttl = \"1s\"\ngroup_key = \"trace_id\"\n\n[[trace.sampling_pipeline]]\nname = \"all\"\ntype = \"probabilistic\"\nrate = 1\n")
		if err != nil {
			t.Fatal(err)
		}
		s := spans.NewSampler(p, spans.DefaultLimits())
		exp := &recordingExporter{}
		r, err := spans.NewRunner(spans.RunnerConfig{Sampler: s, Exporter: exp, Timeout: time.Minute, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		tn := window.NewTenant("t")
		add := func(id byte) {
			s.Add(tn, &spans.Span{TraceID: [16]byte{id}, SpanID: [8]byte{1}, Service: "api", Name: "op", Start: 1, Duration: 1}, time.Now().UnixNano())
		}
		add(1)
		time.Sleep(3500 * time.Millisecond) // past data_ttl and a tick
		synctest.Wait()
		if exp.traces != 1 {
			t.Fatalf("without a mover: %d traces exported, want 1", exp.traces)
		}
		m := &mover{}
		r.MoveBy(m)
		add(2)
		time.Sleep(3 * time.Second) // three ticks: the first moves it, the second would have decided it
		synctest.Wait()
		if exp.traces != 1 || m.moved != 1 || len(m.ticks) != 3 {
			t.Errorf("with a mover: %d traces exported, %d moved in %d ticks; want 1, 1 and 3", exp.traces, m.moved, len(m.ticks))
		}
		if err := r.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

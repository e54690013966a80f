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

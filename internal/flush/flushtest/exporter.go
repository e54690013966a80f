// Package flushtest provides fakes for testing code that uses package flush.
package flushtest

import (
	"context"
	"slices"
	"strings"
	"sync"

	"github.com/aggd/aggd/internal/window"
)

// Point is a recorded aggregate with owned strings.
type Point struct {
	Tick   int64 // the flush's tick, unix seconds
	Tenant string
	Name   string
	Host   string
	Tags   string // comma-joined
	Type   window.MetricType
	TS     int64 // bucket start, unix seconds
	Value  float64
	Count  float64
	Late   bool
	// Sum, Min, Max and P50 (the median) describe a distribution.
	Sum, Min, Max, P50 float64
}

// Exporter records every flush. It is safe for concurrent use.
type Exporter struct {
	mu     sync.Mutex
	points []Point
	checks []window.ServiceCheck
	events []window.Event
	ticks  []int64
}

// Export implements flush.Exporter.
func (e *Exporter) Export(_ context.Context, f *window.Flush) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ticks = append(e.ticks, f.Time/1e9)
	for m := range f.Metrics() {
		p := Point{
			Tick: f.Time / 1e9, Tenant: m.Tenant.ID, Name: strings.Clone(m.Name), Host: strings.Clone(m.Host), Tags: strings.Join(m.Tags, ","),
			Type: m.Type, TS: m.Timestamp / 1e9, Value: m.Value, Count: m.Count, Late: m.Late,
		}
		if m.IsDist() {
			p.Sum, p.Min, p.Max, p.P50 = m.Sum, m.Min, m.Max, m.Quantile(0.5)
		}
		e.points = append(e.points, p)
	}
	e.checks = append(e.checks, f.Checks...)
	e.events = append(e.events, f.Events...)
	return nil
}

// Points returns the aggregates recorded so far.
func (e *Exporter) Points() []Point {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.points)
}

// Ticks returns the tick of every flush so far, unix seconds.
func (e *Exporter) Ticks() []int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.ticks)
}

// Checks returns the service checks recorded so far.
func (e *Exporter) Checks() []window.ServiceCheck {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.checks)
}

// Events returns the events recorded so far.
func (e *Exporter) Events() []window.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.events)
}

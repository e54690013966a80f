// Package servicetest provides fakes for testing code that uses package
// service.
package servicetest

import (
	"slices"
	"strings"
	"sync"

	"github.com/aggd/aggd/internal/window"
)

// Sample is a recorded sample with owned strings.
type Sample struct {
	Tenant string
	Name   string
	Tags   []string
	Type   window.MetricType
	Value  float64
	// Hist is a copy of the sample's histogram point, if it has one.
	Hist *window.HistPoint
}

// Recorder is an Ingester that records accepted samples, events and checks.
// Refuse, if set, may refuse a sample by returning a reason. It is safe for
// concurrent use.
type Recorder struct {
	Refuse func(s *window.Sample) window.Reason

	mu      sync.Mutex
	samples []Sample
	events  []window.Event
	checks  []window.ServiceCheck
}

// Ingest implements service.Ingester.
func (r *Recorder) Ingest(b *window.Batch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range b.Samples {
		if b.Results[i] != window.Accepted {
			continue
		}
		s := &b.Samples[i]
		if r.Refuse != nil {
			if b.Results[i] = r.Refuse(s); b.Results[i] != window.Accepted {
				continue
			}
		}
		tags := make([]string, len(s.Tags))
		for j, t := range s.Tags {
			tags[j] = strings.Clone(t)
		}
		var h *window.HistPoint
		if s.Hist != nil {
			h = &window.HistPoint{Values: slices.Clone(s.Hist.Values), Counts: slices.Clone(s.Hist.Counts),
				Count: s.Hist.Count, Sum: s.Hist.Sum, Min: s.Hist.Min, Max: s.Hist.Max}
		}
		r.samples = append(r.samples, Sample{Tenant: b.Tenant.ID, Name: strings.Clone(s.Name), Tags: tags, Type: s.Type, Value: s.Value, Hist: h})
	}
	if !b.EventsFlushed { // a flush sent them before a restart
		r.events = append(r.events, b.Events...)
	}
	r.checks = append(r.checks, b.Checks...)
}

// Samples returns the samples recorded so far.
func (r *Recorder) Samples() []Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.samples)
}

// Events returns the events recorded so far.
func (r *Recorder) Events() []window.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// Checks returns the service checks recorded so far.
func (r *Recorder) Checks() []window.ServiceCheck {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.checks)
}

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
	// Timestamp is set on seeds only.
	Timestamp int64
	// HandedOver is set on a hand-over's seeds.
	HandedOver bool
}

// Recorder is an Ingester that records accepted samples, events and checks.
// Refuse, if set, may refuse a sample by returning a reason. It is safe for
// concurrent use.
type Recorder struct {
	Refuse func(s *window.Sample) window.Reason

	mu      sync.Mutex
	samples []Sample
	seeds   []Sample
	events  []window.Event
	checks  []window.ServiceCheck
}

// Ingest implements service.Ingester.
func (r *Recorder) Ingest(b *window.Batch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.samples = record(r.samples, b, r.Refuse, false)
	if !b.EventsFlushed { // a flush sent them before a restart
		r.events = append(r.events, b.Events...)
	}
	r.checks = append(r.checks, b.Checks...)
}

// Seed implements service.Seeder: it records the seeds, as Samples with
// their timestamps and whether a hand-over sent them, apart from the
// samples. It refuses a seed of a type without state as malformed, as
// window.Shard.Seed does.
func (r *Recorder) Seed(b *window.Batch, handedOver bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.seeds)
	r.seeds = record(r.seeds, b, func(s *window.Sample) window.Reason {
		if !s.Type.Stateful() {
			return window.ReasonMalformed
		}
		return window.Accepted
	}, true)
	for i := n; i < len(r.seeds); i++ {
		r.seeds[i].HandedOver = handedOver
	}
}

// record appends b's accepted samples that refuse (if set) accepts to dst,
// with their timestamps when stamped is set.
func record(dst []Sample, b *window.Batch, refuse func(*window.Sample) window.Reason, stamped bool) []Sample {
	for i := range b.Samples {
		if b.Results[i] != window.Accepted {
			continue
		}
		s := &b.Samples[i]
		if refuse != nil {
			if b.Results[i] = refuse(s); b.Results[i] != window.Accepted {
				continue
			}
		}
		rs := Sample{Tenant: b.Tenant.ID, Name: strings.Clone(s.Name), Tags: cloneTags(s.Tags), Type: s.Type, Value: s.Value}
		if stamped {
			rs.Timestamp = s.Timestamp
		}
		if s.Hist != nil {
			rs.Hist = &window.HistPoint{Values: slices.Clone(s.Hist.Values), Counts: slices.Clone(s.Hist.Counts),
				Count: s.Hist.Count, Sum: s.Hist.Sum, Min: s.Hist.Min, Max: s.Hist.Max}
		}
		dst = append(dst, rs)
	}
	return dst
}

func cloneTags(tags []string) []string {
	out := make([]string, len(tags))
	for j, t := range tags {
		out[j] = strings.Clone(t)
	}
	return out
}

// Seeds returns the seeds recorded so far.
func (r *Recorder) Seeds() []Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seeds)
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

package client

import (
	"encoding/binary"
	"sync"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

// maxSeriesRef is the highest series reference aggd takes on a stream.
const maxSeriesRef = 1 << 20

// seriesRefs are the series references of one stream: the first sample of
// a series on the stream declares a reference (its full name and the
// reference), the next ones send only the reference and the measurement.
// A new stream starts empty, so that resent batches declare again. It is
// safe for concurrent use: the sender converts, the receiver forgets.
type seriesRefs struct {
	mu   sync.Mutex
	refs map[string]seriesRef
	key  []byte
}

// seriesRef is the reference of a series, and whether the stream holds
// its declaration (or must be sent it again).
type seriesRef struct {
	ref      uint32
	declared bool
}

func newSeriesRefs() *seriesRefs { return &seriesRefs{refs: make(map[string]seriesRef)} }

// seriesKey appends the identity of s's series: name, type, host, tags.
func seriesKey(b []byte, s *aggdv1.Sample) []byte {
	b = binary.AppendUvarint(b, uint64(s.Type))
	b = appendPart(b, s.Name)
	b = appendPart(b, s.Host)
	for _, t := range s.Tags {
		b = appendPart(b, t)
	}
	return b
}

func appendPart(b []byte, p string) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

// encode returns b as sent on the stream: samples of series declared
// earlier on it by reference, the others with their full name and a new
// reference. Samples that set their own reference, or carry none of a
// name, go as they are. b itself is not changed.
func (r *seriesRefs) encode(b *aggdv1.Batch) *aggdv1.Batch {
	if len(b.Samples) == 0 {
		return b
	}
	out := &aggdv1.Batch{Events: b.Events, ServiceChecks: b.ServiceChecks, Spans: b.Spans,
		Samples: make([]*aggdv1.Sample, len(b.Samples))}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, s := range b.Samples {
		out.Samples[i] = s
		if s.SeriesRef != 0 || s.Name == "" {
			continue
		}
		r.key = seriesKey(r.key[:0], s)
		sr, ok := r.refs[string(r.key)]
		switch {
		case ok && sr.declared:
			out.Samples[i] = &aggdv1.Sample{SeriesRef: sr.ref, Value: s.Value, Values: s.Values, SetMember: s.SetMember,
				SampleRate: s.SampleRate, TimestampUnixNano: s.TimestampUnixNano}
			continue
		case !ok && len(r.refs) >= maxSeriesRef:
			continue // the table is full: full names from here on
		case !ok:
			sr.ref = uint32(len(r.refs) + 1)
		}
		sr.declared = true
		r.refs[string(r.key)] = sr
		out.Samples[i] = &aggdv1.Sample{Name: s.Name, Type: s.Type, Host: s.Host, Tags: s.Tags, SeriesRef: sr.ref,
			Value: s.Value, Values: s.Values, SetMember: s.SetMember, SampleRate: s.SampleRate, TimestampUnixNano: s.TimestampUnixNano}
	}
	return out
}

// forget drops the reference of s's series, so that its next sample
// declares it again: after aggd refused a sample, whose declaration may
// have been the one refused.
func (r *seriesRefs) forget(s *aggdv1.Sample) {
	if s.SeriesRef != 0 || s.Name == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.key = seriesKey(r.key[:0], s)
	if sr, ok := r.refs[string(r.key)]; ok {
		sr.declared = false
		r.refs[string(r.key)] = sr
	}
}

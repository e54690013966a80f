// Package spans turns spans into RED statistics and tail-samples traces.
//
// Stats become window samples, so they aggregate, shard and flush like any
// other metric. The Sampler holds spans by (tenant, trace id) until the
// trace has been quiet for data_ttl, then judges it with DataKit's ordered
// sampling pipeline; kept traces are handed whole to an Exporter.
package spans

import (
	"encoding/hex"
	"strconv"

	"github.com/aggd/aggd/internal/filter"
)

// Kind is the OpenTelemetry span kind.
type Kind uint8

// The span kinds, numbered as aggd.v1 and OTLP number them.
const (
	KindUnspecified Kind = iota
	KindInternal
	KindServer
	KindClient
	KindProducer
	KindConsumer
)

var kindNames = [...]string{"unspecified", "internal", "server", "client", "producer", "consumer"}

// String returns the lower-case name of k.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unspecified"
}

// Attr is one string attribute.
type Attr struct{ Key, Value string }

// Span is one span. A decoded Span's strings may be views into a request
// buffer; Own copies them.
type Span struct {
	TraceID    [16]byte
	SpanID     [8]byte
	ParentID   [8]byte
	Service    string
	Name       string
	Resource   string
	Start      int64 // unix nanoseconds
	Duration   int64 // nanoseconds
	Attrs      []Attr
	HTTPStatus uint32
	Kind       Kind
	HasParent  bool
	Error      bool
	// RulesOnly marks a span whose trace runs on another replica, for
	// the tracing rule groups this replica owns: the rules feed only
	// those with it (rules.Engine.ObserveSpan).
	RulesOnly bool
	// HandedOver marks a span of a trace another replica held when a
	// member list moved the trace here: it is held for sampling only,
	// its stats and rule observations made where it was taken first.
	HandedOver bool
	// Wire, for a span received over OTLP, is what aggd does not model,
	// so an OTLP upstream can send the span on as it came.
	Wire *Wire
}

// Wire holds a span as OTLP encoded it: its resource
// (opentelemetry.proto.resource.v1.Resource), instrumentation scope and
// the span itself, protobuf-encoded and owned. Spans of one resource and
// scope share those encodings.
type Wire struct{ Resource, Scope, Span []byte }

// End returns the span's end time, unix nanoseconds.
func (s *Span) End() int64 { return s.Start + s.Duration }

// TopLevel reports whether s is a service's entry span: a root, or a server
// or consumer span (the rule Datadog applies to OpenTelemetry spans).
func (s *Span) TopLevel() bool {
	return !s.HasParent || s.Kind == KindServer || s.Kind == KindConsumer
}

// Status returns "error" or "ok".
func (s *Span) Status() string {
	if s.Error {
		return "error"
	}
	return "ok"
}

// Own returns a copy of s whose strings share one new buffer.
func (s *Span) Own() Span {
	n := len(s.Service) + len(s.Name) + len(s.Resource)
	for _, a := range s.Attrs {
		n += len(a.Key) + len(a.Value)
	}
	buf := make([]byte, 0, n)
	take := func(x string) string {
		start := len(buf)
		buf = append(buf, x...)
		return unsafeString(buf[start:len(buf):len(buf)])
	}
	o := *s
	o.Service, o.Name, o.Resource = take(s.Service), take(s.Name), take(s.Resource)
	if len(s.Attrs) > 0 {
		o.Attrs = make([]Attr, len(s.Attrs))
		for i, a := range s.Attrs {
			o.Attrs[i] = Attr{take(a.Key), take(a.Value)}
		}
	}
	return o
}

// Field implements filter.Record: the span's fields by their DataKit names
// and types, then its attributes (strings). duration and start are integer
// microseconds and http_status_code a string, as on DataKit's span points;
// parent_id is "0" for a root span, as in DataKit.
func (s *Span) Field(name string) (filter.Value, bool) {
	switch name {
	case "service":
		return filter.Str(s.Service), true
	case "name", "operation":
		return filter.Str(s.Name), true
	case "resource":
		return filter.Str(s.Resource), true
	case "span_kind", "kind":
		return filter.Str(s.Kind.String()), true
	case "status":
		return filter.Str(s.Status()), true
	case "duration":
		return filter.IntValue(s.Duration / 1000), true
	case "start":
		return filter.IntValue(s.Start / 1000), true
	case "http_status_code":
		if s.HTTPStatus == 0 {
			return filter.Value{}, false
		}
		return filter.Str(statusTag(s.HTTPStatus)[len("http.status_code:"):]), true
	case "trace_id":
		return filter.Str(hex.EncodeToString(s.TraceID[:])), true
	case "span_id":
		return filter.Str(hex.EncodeToString(s.SpanID[:])), true
	case "parent_id":
		if !s.HasParent {
			return filter.Str("0"), true
		}
		return filter.Str(hex.EncodeToString(s.ParentID[:])), true
	}
	for _, a := range s.Attrs {
		if a.Key == name {
			return filter.Str(a.Value), true
		}
	}
	return filter.Value{}, false
}

// statusTag returns "http.status_code:<code>", interned for common codes.
func statusTag(code uint32) string {
	if code >= 100 && code < 600 {
		return httpStatusTags[code-100]
	}
	return "http.status_code:" + strconv.FormatUint(uint64(code), 10)
}

var httpStatusTags = func() []string {
	t := make([]string, 500)
	for i := range t {
		t[i] = "http.status_code:" + strconv.Itoa(100+i)
	}
	return t
}()

// The span stats series. Every series has the tags service, operation,
// resource, span.kind and status (ok or error), and http.status_code when
// the span has one.
const (
	// MetricHits counts spans.
	MetricHits = "aggd.span.hits"
	// MetricErrors counts spans in error.
	MetricErrors = "aggd.span.errors"
	// MetricTopLevelHits counts top-level spans (see Span.TopLevel).
	MetricTopLevelHits = "aggd.span.top_level_hits"
	// MetricDurationSum sums span durations, in seconds.
	MetricDurationSum = "aggd.span.duration.sum"
	// MetricDuration is a distribution of span durations in seconds; its
	// status tag separates the ok and error sketches.
	MetricDuration = "aggd.span.duration"
)

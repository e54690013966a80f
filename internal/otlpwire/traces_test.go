package otlpwire_test

import (
	"fmt"
	"strings"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/otlpwire"
)

// spanDump writes what the decoder hands over; the encodings it hands
// over are decoded with proto.Unmarshal and written too.
type spanDump struct{ strings.Builder }

func rawText(m proto.Message, raw []byte) string {
	if err := proto.Unmarshal(raw, m); err != nil {
		return "undecodable " + err.Error()
	}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	return fmt.Sprintf("%x", b)
}

func (d *spanDump) Resource(r *otlpwire.Resource, raw []byte) {
	fmt.Fprintf(d, "R %s %s\n", viewAttrs(r.Attrs), rawText(&resourcepb.Resource{}, raw))
}

func (d *spanDump) Scope(s *otlpwire.Scope, raw []byte) {
	fmt.Fprintf(d, "S %q %q %s %s\n", s.Name, s.Version, viewAttrs(s.Attrs), rawText(&commonpb.InstrumentationScope{}, raw))
}

func (d *spanDump) Span(s *otlpwire.Span, raw []byte) {
	fmt.Fprintf(d, "P %x %x %x %q %d %d %d %s %d %q %s\n", s.TraceID, s.SpanID, s.ParentSpanID, s.Name, s.Kind, s.Start, s.End,
		viewAttrs(s.Attrs), s.StatusCode, s.StatusMessage, rawText(&tracepb.Span{}, raw))
}

func text(m proto.Message) string {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	return fmt.Sprintf("%x", b)
}

func dumpTraces(req *coltracepb.ExportTraceServiceRequest) string {
	d := &spanDump{}
	for _, rs := range req.ResourceSpans {
		res := rs.GetResource()
		if res == nil {
			res = &resourcepb.Resource{}
		}
		fmt.Fprintf(d, "R %s %s\n", viewAttrs(toView(res.Attributes)), text(res))
		for _, ss := range rs.ScopeSpans {
			sc := ss.GetScope()
			if sc == nil {
				sc = &commonpb.InstrumentationScope{}
			}
			fmt.Fprintf(d, "S %q %q %s %s\n", sc.Name, sc.Version, viewAttrs(toView(sc.Attributes)), text(sc))
			for _, s := range ss.Spans {
				fmt.Fprintf(d, "P %x %x %x %q %d %d %d %s %d %q %s\n", s.TraceId, s.SpanId, s.ParentSpanId, s.Name, s.Kind, s.StartTimeUnixNano, s.EndTimeUnixNano,
					viewAttrs(toView(s.Attributes)), s.GetStatus().GetCode(), s.GetStatus().GetMessage(), text(s))
			}
		}
	}
	return d.String()
}

func traceSample() *coltracepb.ExportTraceServiceRequest {
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", "api")}},
		ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: "http", Version: "2"}, Spans: []*tracepb.Span{{
			TraceId: make([]byte, 16), SpanId: []byte{1, 2, 3, 4, 5, 6, 7, 8}, ParentSpanId: []byte{9, 9, 9, 9, 9, 9, 9, 9}, Name: "GET", Kind: 2,
			StartTimeUnixNano: 5, EndTimeUnixNano: 9, Attributes: sample().ResourceMetrics[0].ScopeMetrics[0].Metrics[0].GetGauge().DataPoints[0].Attributes,
			Status: &tracepb.Status{Code: 2, Message: "boom"}, Events: []*tracepb.Span_Event{{Name: "e", TimeUnixNano: 6}},
			Links: []*tracepb.Span_Link{{TraceId: make([]byte, 16), SpanId: make([]byte, 8)}}}}}},
	}}}
}

func TestDecodeTracesMatchesProto(t *testing.T) {
	b, _ := proto.Marshal(traceSample())
	for _, in := range [][]byte{b, append(append([]byte{}, b...), b...)} {
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(in, &req); err != nil {
			t.Fatal(err)
		}
		got := &spanDump{}
		if err := (&otlpwire.Decoder{}).DecodeTraces(in, got); err != nil {
			t.Fatal(err)
		}
		if want := dumpTraces(&req); got.String() != want {
			t.Fatalf("decoded\n%s\nproto.Unmarshal\n%s", got, want)
		}
	}
}

// FuzzDecodeTraces holds the trace decoder to proto.Unmarshal.
func FuzzDecodeTraces(f *testing.F) {
	b, _ := proto.Marshal(traceSample())
	f.Add(b)
	d := &otlpwire.Decoder{}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := &spanDump{}
		err := d.DecodeTraces(b, got)
		var req coltracepb.ExportTraceServiceRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		if err != nil {
			t.Fatalf("proto.Unmarshal takes the request, the decoder says %v", err)
		}
		if want := dumpTraces(&req); got.String() != want {
			t.Fatalf("decoded\n%s\nproto.Unmarshal\n%s", got, want)
		}
		if n, want := otlpwire.CountSpans(b), protoSpans(&req); n < want {
			t.Fatalf("CountSpans = %d, proto.Unmarshal finds %d spans", n, want)
		}
	})
}

// protoSpans counts the spans of req.
func protoSpans(req *coltracepb.ExportTraceServiceRequest) int {
	n := 0
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			n += len(ss.Spans)
		}
	}
	return n
}

func TestCountSpans(t *testing.T) {
	req := traceSample()
	b, _ := proto.Marshal(req)
	if got, want := otlpwire.CountSpans(b), protoSpans(req); got != want || want == 0 {
		t.Fatalf("CountSpans = %d, want %d", got, want)
	}
}

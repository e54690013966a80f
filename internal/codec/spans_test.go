package codec

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/cputime"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// BenchmarkDecodeSpans decodes a 500-span batch (5-span traces, two
// attributes each): the per-span cost of decode and validate, whose
// strings are views into the request.
func BenchmarkDecodeSpans(b *testing.B) {
	req := &aggdv1.StreamRequest{Sequence: 1, Batch: &aggdv1.Batch{}}
	for i := range 500 {
		s := &aggdv1.Span{TraceId: []byte(fmt.Sprintf("%016d", i/5)), SpanId: []byte(fmt.Sprintf("%08d", i%5+1)),
			Service: fmt.Sprintf("svc-%d", i%10), Name: "http.request", Resource: fmt.Sprintf("/r/%d", i),
			Kind: aggdv1.SpanKind_SPAN_KIND_SERVER, StartUnixNano: 1e18, DurationNano: 1e6, HttpStatusCode: 200,
			Attributes: map[string]string{"http.method": "GET", "peer.service": "db"}}
		if i%5 != 0 {
			s.ParentSpanId, s.Kind = []byte("00000001"), aggdv1.SpanKind_SPAN_KIND_CLIENT
		}
		req.Batch.Spans = append(req.Batch.Spans, s)
	}
	data, _ := proto.Marshal(req)
	d := NewDecoder(DefaultLimits())
	var batch window.Batch
	tn := window.NewTenant("t")
	d.Reset(&batch)
	batch.Tenant = tn
	if _, err := d.DecodeStream(data, &batch); err != nil || d.NSpans != 500 {
		b.Fatalf("%d spans decoded: %v", d.NSpans, err)
	}
	for i, r := range d.SpanResults {
		if r != window.Accepted {
			b.Fatalf("span %d: %v %s", i, r, d.SpanDetail[i])
		}
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	cpu := cputime.Process()
	for b.Loop() {
		d.Reset(&batch)
		batch.Tenant = tn
		if _, err := d.DecodeStream(data, &batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*500), "ns/span")
	b.ReportMetric(float64(cputime.Process()-cpu)/float64(b.N*500), "cpu-ns/span")
}

// A span marked rules_only or handed_over is written so that the
// generated code reads the mark, and taken with it only from a peer
// (Histograms): a client's is refused as unsupported.
func TestSpanPeerMarks(t *testing.T) {
	for _, mark := range []struct {
		name string
		set  func(*spans.Span)
		pb   func(*aggdv1.Span) bool
		got  func(*spans.Span) bool
	}{
		{"rules_only", func(s *spans.Span) { s.RulesOnly = true }, (*aggdv1.Span).GetRulesOnly, func(s *spans.Span) bool { return s.RulesOnly }},
		{"handed_over", func(s *spans.Span) { s.HandedOver = true }, (*aggdv1.Span).GetHandedOver, func(s *spans.Span) bool { return s.HandedOver }},
	} {
		t.Run(mark.name, func(t *testing.T) {
			sp := spans.Span{TraceID: [16]byte{1}, SpanID: [8]byte{2}, Service: "api", Name: "op", Resource: "/a", Start: 1e18, Duration: 5e6,
				Attrs: []spans.Attr{{Key: "zone", Value: "z1"}}}
			unmarked := AppendSpan(nil, &sp)
			mark.set(&sp)
			item := AppendSpan(nil, &sp)
			var pb aggdv1.Span
			if err := proto.Unmarshal(item, &pb); err != nil || !mark.pb(&pb) || pb.Resource != "/a" {
				t.Fatalf("generated code reads %v: %v", &pb, err)
			}
			batch := protowire.AppendBytes(protowire.AppendTag(nil, 4, protowire.BytesType), item)
			req := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), batch)
			for _, tc := range []struct {
				peer bool
				want window.Reason
			}{{false, window.ReasonUnsupported}, {true, window.Accepted}} {
				d := NewDecoder(DefaultLimits())
				d.Histograms = tc.peer
				var b window.Batch
				b.Tenant = window.NewTenant("t")
				if err := d.DecodeSubmit(req, &b); err != nil || d.NSpans != 1 {
					t.Fatalf("peer %v: %d spans: %v", tc.peer, d.NSpans, err)
				}
				if r := d.SpanResults[0]; r != tc.want || r == window.Accepted && !mark.got(&d.Spans[0]) {
					t.Fatalf("peer %v: %v %q, marked %v; want %v", tc.peer, r, d.SpanDetail[0], mark.got(&d.Spans[0]), tc.want)
				}
			}
			if err := proto.Unmarshal(unmarked, &pb); err != nil || mark.pb(&pb) {
				t.Fatalf("an unmarked span reads %v: %v", &pb, err)
			}
		})
	}
}

// An event marked rules_only is written so that the generated code reads
// it whole, and taken with the mark only from a peer (Histograms): a
// client's is refused as unsupported.
func TestEventRulesOnly(t *testing.T) {
	ev := window.Event{Title: "down", Text: "502", Timestamp: 1e18, Priority: window.PriorityLow, AlertType: window.AlertError,
		AggregationKey: "k", SourceType: "nginx", Host: "web-1", Tags: []string{"zone:z1"}, RulesOnly: true}
	item := AppendEvent(nil, &ev)
	var pb aggdv1.Event
	if err := proto.Unmarshal(item, &pb); err != nil || !pb.RulesOnly {
		t.Fatalf("generated code reads %v: %v", &pb, err)
	}
	if got, r, _ := eventFromProto(&pb, DefaultLimits()); r != window.Accepted || fmt.Sprint(got) != fmt.Sprint(ev) {
		t.Fatalf("read back %+v (%v), want %+v", got, r, ev)
	}
	batch := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), item)
	req := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), batch)
	for _, peer := range []bool{false, true} {
		d := NewDecoder(DefaultLimits())
		d.Histograms = peer
		var b window.Batch
		b.Tenant = window.NewTenant("t")
		if err := d.DecodeSubmit(req, &b); err != nil || d.NEvents != 1 {
			t.Fatalf("peer %v: %d events: %v", peer, d.NEvents, err)
		}
		switch {
		case !peer && (len(b.Events) != 0 || len(d.Rej) != 1 || d.Rej[0].Reason != window.ReasonUnsupported):
			t.Fatalf("a client's marked event: taken %v, refused %v", b.Events, d.Rej)
		case peer && (len(b.Events) != 1 || !b.Events[0].RulesOnly || len(d.Rej) != 0):
			t.Fatalf("a peer's marked event: taken %v, refused %v", b.Events, d.Rej)
		}
	}
}

package service

import (
	"context"
	"slices"
	"strconv"
	"time"
	"unsafe"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/otlpwire"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Export implements the OTLP TraceService with the generated types; the
// registered handler (Register) decodes without them.
func (t *otlpTraces) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return t.exportRaw(ctx, b)
}

func (t *otlpTraces) exportRaw(ctx context.Context, req []byte) (*coltracepb.ExportTraceServiceResponse, error) {
	s := t.r.s
	tn, err := s.tenants.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.admit(ctx, tn); err != nil {
		return nil, err
	}
	release, err := t.r.reserve(ctx, tn, req, true, false)
	if err != nil {
		return nil, err
	}
	defer release()
	return t.exportTraces(ctx, tn, req)
}

// spanBatch converts one traces request as otlpwire hands it over: spans
// go through the same stats and tail sampling as aggd.v1 spans.
type spanBatch struct {
	dec      otlpwire.Decoder
	lim      codec.Limits
	sps      []spans.Span
	results  []window.Reason
	attrs    []spans.Attr
	strs     []byte
	firstErr string

	service         string
	resAttrs        int // attrs[resStart:resAttrs] are the resource's
	resStart        int
	scopeAttrs      int
	resWire, scWire []byte
}

func (b *spanBatch) value(v *otlpwire.Value) string {
	if v.Kind == otlpwire.KindString {
		return v.Str
	}
	at := len(b.strs)
	b.strs = appendValue(b.strs, v)
	s := b.strs[at:len(b.strs):len(b.strs)]
	return unsafe.String(unsafe.SliceData(s), len(s))
}

// Resource implements otlpwire.TracesHandler.
func (b *spanBatch) Resource(r *otlpwire.Resource, raw []byte) {
	b.service = "unknown_service"
	b.resStart = len(b.attrs)
	for i := range r.Attrs {
		kv := &r.Attrs[i]
		if kv.Key == "service.name" {
			b.service = b.value(&kv.Value)
			continue
		}
		b.attrs = append(b.attrs, spans.Attr{Key: kv.Key, Value: b.value(&kv.Value)})
	}
	b.resAttrs = len(b.attrs)
	b.resWire = slices.Clone(raw)
}

// Scope implements otlpwire.TracesHandler.
func (b *spanBatch) Scope(sc *otlpwire.Scope, raw []byte) {
	b.attrs = append(b.attrs, b.attrs[b.resStart:b.resAttrs]...)
	b.resStart, b.resAttrs = len(b.attrs)-(b.resAttrs-b.resStart), len(b.attrs)
	for i := range sc.Attrs {
		kv := &sc.Attrs[i]
		b.attrs = append(b.attrs, spans.Attr{Key: kv.Key, Value: b.value(&kv.Value)})
	}
	b.scopeAttrs = len(b.attrs)
	b.scWire = slices.Clone(raw)
}

// Span implements otlpwire.TracesHandler.
func (b *spanBatch) Span(p *otlpwire.Span, raw []byte) {
	sp, r, detail := b.span(p)
	if r == window.Accepted {
		sp.Wire = &spans.Wire{Resource: b.resWire, Scope: b.scWire, Span: slices.Clone(raw)}
		r, detail = b.lim.CheckSpan(&sp)
	}
	if r != window.Accepted && b.firstErr == "" {
		b.firstErr = r.String() + ": " + detail
	}
	b.sps = append(b.sps, sp)
	b.results = append(b.results, r)
}

// exportTraces converts and ingests the encoded traces request of an
// admitted tenant.
func (t *otlpTraces) exportTraces(ctx context.Context, tn *window.Tenant, req []byte) (*coltracepb.ExportTraceServiceResponse, error) {
	s := t.r.s
	b := &spanBatch{lim: s.lim}
	if err := b.dec.DecodeTraces(req, b); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	sps, results, firstErr := b.sps, b.results, b.firstErr
	if s.spanIng != nil {
		now := time.Now().UnixNano()
		if err := s.ingestConverted(ctx, tn, now, nil, sps, results, func() { s.spanIng.IngestSpans(tn, now, sps, results) }); err != nil {
			return nil, err
		}
	} else {
		for i := range results {
			if results[i] == window.Accepted {
				results[i] = window.ReasonUnsupported
			}
		}
	}
	rejected := 0
	for _, r := range results {
		if r != window.Accepted {
			rejected++
			tn.Rejected[r].Add(1)
			if firstErr == "" {
				firstErr = r.String() + ": " + ingestDetail(r)
			}
		}
	}
	tn.Accepted.Add(uint64(len(results) - rejected))
	resp := &coltracepb.ExportTraceServiceResponse{}
	if rejected > 0 {
		resp.PartialSuccess = &coltracepb.ExportTracePartialSuccess{RejectedSpans: int64(rejected), ErrorMessage: firstErr}
	}
	return resp, nil
}

const statusError = int32(tracepb.Status_STATUS_CODE_ERROR)

// span converts an OTLP span. The resource is the resource.name
// attribute, else http.route, else the span name; the HTTP status is
// http.response.status_code or http.status_code.
func (b *spanBatch) span(p *otlpwire.Span) (spans.Span, window.Reason, string) {
	var s spans.Span
	if len(p.TraceID) != 16 || len(p.SpanID) != 8 || (len(p.ParentSpanID) != 0 && len(p.ParentSpanID) != 8) {
		return s, window.ReasonInvalidValue, "trace_id must be 16 bytes, span_id 8, parent_span_id empty or 8"
	}
	copy(s.TraceID[:], p.TraceID)
	copy(s.SpanID[:], p.SpanID)
	if len(p.ParentSpanID) == 8 && [8]byte(p.ParentSpanID) != [8]byte{} {
		copy(s.ParentID[:], p.ParentSpanID)
		s.HasParent = true
	}
	s.Service, s.Name, s.Resource = b.service, p.Name, p.Name
	s.Kind = spans.Kind(min(max(p.Kind, 0), int32(spans.KindConsumer)))
	s.Start = int64(p.Start)
	s.Duration = int64(p.End) - int64(p.Start)
	s.Error = p.StatusCode == statusError
	start := len(b.attrs)
	b.attrs = append(b.attrs, b.attrs[b.resStart:b.scopeAttrs]...)
	route := ""
	for i := range p.Attrs {
		kv := &p.Attrs[i]
		v := b.value(&kv.Value)
		switch kv.Key {
		case "resource.name":
			s.Resource = v
		case "http.route":
			route = v
		case "http.response.status_code", "http.status_code":
			if c, err := strconv.ParseUint(v, 10, 32); err == nil {
				s.HTTPStatus = uint32(c)
			}
		}
		b.attrs = append(b.attrs, spans.Attr{Key: kv.Key, Value: v})
	}
	s.Attrs = b.attrs[start:len(b.attrs):len(b.attrs)]
	if route != "" && s.Resource == p.Name {
		s.Resource = route
	}
	return s, window.Accepted, ""
}

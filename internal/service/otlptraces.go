package service

import (
	"context"
	"slices"
	"strconv"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// Export implements the OTLP TraceService: spans go through the same
// stats and tail sampling as aggd.v1 spans.
func (t *otlpTraces) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s := t.r.s
	tn, err := s.tenants.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.admit(ctx, tn); err != nil {
		return nil, err
	}
	return t.exportTraces(tn, req)
}

// exportTraces converts and ingests the spans of an admitted request.
func (t *otlpTraces) exportTraces(tn *window.Tenant, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s := t.r.s
	var sps []spans.Span
	var results []window.Reason
	var firstErr string
	for _, rs := range req.ResourceSpans {
		service := "unknown_service"
		var resAttrs []spans.Attr
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				service = anyString(kv.Value)
				continue
			}
			resAttrs = append(resAttrs, spans.Attr{Key: kv.Key, Value: anyString(kv.Value)})
		}
		det := proto.MarshalOptions{Deterministic: true}
		resWire, _ := det.Marshal(rs.GetResource())
		for _, ss := range rs.ScopeSpans {
			scopeWire, _ := det.Marshal(ss.GetScope())
			attrs := slices.Clone(resAttrs)
			for _, kv := range ss.GetScope().GetAttributes() {
				attrs = append(attrs, spans.Attr{Key: kv.Key, Value: anyString(kv.Value)})
			}
			for _, p := range ss.Spans {
				sp, r, detail := otlpSpan(p, service, attrs)
				if r == window.Accepted {
					wire, _ := det.Marshal(p)
					sp.Wire = &spans.Wire{Resource: resWire, Scope: scopeWire, Span: wire}
				}
				if r == window.Accepted {
					r, detail = s.lim.CheckSpan(&sp)
				}
				if r != window.Accepted && firstErr == "" {
					firstErr = r.String() + ": " + detail
				}
				sps = append(sps, sp)
				results = append(results, r)
			}
		}
	}
	if s.spanIng != nil {
		now := time.Now().UnixNano()
		if err := s.ingestConverted(tn, now, nil, nil, sps, results, func() { s.spanIng.IngestSpans(tn, now, sps, results) }); err != nil {
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

// otlpSpan converts an OTLP span. The resource is the resource.name
// attribute, else http.route, else the span name; the HTTP status is
// http.response.status_code or http.status_code.
func otlpSpan(p *tracepb.Span, service string, resAttrs []spans.Attr) (spans.Span, window.Reason, string) {
	var s spans.Span
	if len(p.TraceId) != 16 || len(p.SpanId) != 8 || (len(p.ParentSpanId) != 0 && len(p.ParentSpanId) != 8) {
		return s, window.ReasonInvalidValue, "trace_id must be 16 bytes, span_id 8, parent_span_id empty or 8"
	}
	copy(s.TraceID[:], p.TraceId)
	copy(s.SpanID[:], p.SpanId)
	if len(p.ParentSpanId) == 8 && [8]byte(p.ParentSpanId) != [8]byte{} {
		copy(s.ParentID[:], p.ParentSpanId)
		s.HasParent = true
	}
	s.Service, s.Name, s.Resource = service, p.Name, p.Name
	s.Kind = spans.Kind(min(max(int32(p.Kind), 0), int32(spans.KindConsumer)))
	s.Start = int64(p.StartTimeUnixNano)
	s.Duration = int64(p.EndTimeUnixNano) - int64(p.StartTimeUnixNano)
	s.Error = p.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR
	s.Attrs = append(s.Attrs, resAttrs...)
	route := ""
	for _, kv := range p.Attributes {
		v := anyString(kv.Value)
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
		s.Attrs = append(s.Attrs, spans.Attr{Key: kv.Key, Value: v})
	}
	if route != "" && s.Resource == p.Name {
		s.Resource = route
	}
	return s, window.Accepted, ""
}

package upstream

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// TraceUpstream is an upstream that also carries kept traces.
type TraceUpstream interface {
	ExportTraces(ctx context.Context, traces []spans.Trace, routes Routes) error
}

// ExportTraces implements spans.Exporter: every upstream that carries
// traces (OTLP, JSON lines) gets the kept traces of the tenants routed to
// it. Datadog does not take traces.
func (r *Router) ExportTraces(ctx context.Context, traces []spans.Trace) error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, u := range r.upstreams {
		tu, ok := u.(TraceUpstream)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tu.ExportTraces(ctx, traces, r.Routes(u.Name())); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("upstream %s: %w", u.Name(), err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ExportTraces writes one {"kind":"span",…} line per span of the traces
// routed here.
func (j *JSONLines) ExportTraces(_ context.Context, traces []spans.Trace, routes Routes) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.buf = j.buf[:0]
	routed := map[*window.Tenant]bool{}
	for _, tr := range traces {
		ok, seen := routed[tr.Tenant]
		if !seen {
			_, ok = routes(tr.Tenant)
			routed[tr.Tenant] = ok
		}
		if !ok {
			continue
		}
		for i := range tr.Spans {
			j.span(tr.Tenant, &tr.Spans[i])
		}
		if len(j.buf) >= jsonFlushAt {
			if err := j.write(); err != nil {
				return err
			}
		}
	}
	return j.write()
}

func (j *JSONLines) span(t *window.Tenant, s *spans.Span) {
	b := append(j.buf, `{"kind":"span","tenant":`...)
	b = appendString(b, t.ID)
	b = append(b, `,"trace_id":"`...)
	b = hex.AppendEncode(b, s.TraceID[:])
	b = append(b, `","span_id":"`...)
	b = hex.AppendEncode(b, s.SpanID[:])
	b = append(b, `","parent_span_id":"`...)
	if s.HasParent {
		b = hex.AppendEncode(b, s.ParentID[:])
	}
	b = append(b, `","service":`...)
	b = appendString(b, s.Service)
	b = append(b, `,"name":`...)
	b = appendString(b, s.Name)
	b = append(b, `,"resource":`...)
	b = appendString(b, s.Resource)
	b = append(b, `,"span_kind":"`...)
	b = append(b, s.Kind.String()...)
	b = append(b, `","start_unix_nano":`...)
	b = strconv.AppendInt(b, s.Start, 10)
	b = append(b, `,"duration_nano":`...)
	b = strconv.AppendInt(b, s.Duration, 10)
	b = append(b, `,"error":`...)
	b = strconv.AppendBool(b, s.Error)
	b = append(b, `,"http_status_code":`...)
	b = strconv.AppendUint(b, uint64(s.HTTPStatus), 10)
	b = append(b, `,"attributes":{`...)
	for i, a := range s.Attrs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, a.Key)
		b = append(b, ':')
		b = appendString(b, a.Value)
	}
	j.buf = append(b, "}}\n"...)
}

// ExportTraces sends the traces routed here to the collector's
// TraceService, each tenant in its own requests. A span that came over
// OTLP goes on as it came, with its resource (plus the tenant attribute)
// and scope; a span that came over aggd.v1 gets a resource of its service
// (service.name) and the tenant, and the scope "aggd".
func (o *OTLP) ExportTraces(ctx context.Context, traces []spans.Trace, routes Routes) error {
	type batch struct {
		tenant *window.Tenant
		header map[string][]string
		groups map[string]*spanGroup // by resource and scope
		order  []*spanGroup
		size   int
		spans  int
	}
	batches := map[*window.Tenant]*batch{}
	var errs []error
	send := func(b *batch) {
		body := o.traceRequest(b.tenant, b.order)
		errs = append(errs, o.pipe.Enqueue(ctx, &Payload{Tenant: b.tenant.ID, Kind: "traces", Body: body, Header: b.header, Points: b.spans}))
		b.groups, b.order, b.size, b.spans = map[string]*spanGroup{}, nil, 0, 0
	}
	for _, tr := range traces {
		b, ok := batches[tr.Tenant]
		if !ok {
			if cred, routed := routes(tr.Tenant); routed {
				b = &batch{tenant: tr.Tenant, header: o.header(tr.Tenant, cred), groups: map[string]*spanGroup{}}
			}
			batches[tr.Tenant] = b
		}
		if b == nil {
			continue
		}
		for i := range tr.Spans {
			res, scope, span := wireSpan(&tr.Spans[i])
			key := string(res) + "\x00" + string(scope)
			g := b.groups[key]
			if g == nil {
				g = &spanGroup{resource: res, scope: scope}
				b.groups[key] = g
				b.order = append(b.order, g)
				b.size += len(res) + len(scope) + 64
			}
			g.spans = append(g.spans, span)
			b.size += len(span) + 8
			b.spans++
			if b.size > o.cfg.MaxPayloadBytes*9/10 {
				send(b)
			}
		}
	}
	for _, b := range batches {
		if b != nil && b.spans > 0 {
			send(b)
		}
	}
	return errors.Join(errs...)
}

// spanGroup is encoded spans of one resource and scope.
type spanGroup struct {
	resource, scope []byte
	spans           [][]byte
}

// traceRequest encodes an ExportTraceServiceRequest of groups of spans,
// adding the tenant attribute to each resource that lacks it.
func (o *OTLP) traceRequest(t *window.Tenant, groups []*spanGroup) []byte {
	tenantAttr, _ := proto.Marshal(strAttr(o.cfg.TenantAttribute, t.ID))
	var req, rs, ss []byte
	for _, g := range groups {
		res, scope, sps := g.resource, g.scope, g.spans
		rs = rs[:0]
		r := slices.Clone(res)
		if !hasAttr(res, o.cfg.TenantAttribute) {
			r = protowire.AppendTag(r, 1, protowire.BytesType) // Resource.attributes
			r = protowire.AppendBytes(r, tenantAttr)
		}
		rs = protowire.AppendTag(rs, 1, protowire.BytesType) // ResourceSpans.resource
		rs = protowire.AppendBytes(rs, r)
		ss = ss[:0]
		ss = protowire.AppendTag(ss, 1, protowire.BytesType) // ScopeSpans.scope
		ss = protowire.AppendBytes(ss, scope)
		for _, sp := range sps {
			ss = protowire.AppendTag(ss, 2, protowire.BytesType) // ScopeSpans.spans
			ss = protowire.AppendBytes(ss, sp)
		}
		rs = protowire.AppendTag(rs, 2, protowire.BytesType) // ResourceSpans.scope_spans
		rs = protowire.AppendBytes(rs, ss)
		req = protowire.AppendTag(req, 1, protowire.BytesType) // ExportTraceServiceRequest.resource_spans
		req = protowire.AppendBytes(req, rs)
	}
	return req
}

// hasAttr reports whether an encoded Resource has an attribute named key.
func hasAttr(res []byte, key string) bool {
	for len(res) > 0 {
		num, typ, n := protowire.ConsumeTag(res)
		if n < 0 {
			return false
		}
		res = res[n:]
		if num == 1 && typ == protowire.BytesType {
			kv, m := protowire.ConsumeBytes(res)
			if m < 0 {
				return false
			}
			if k, ok := kvKey(kv); ok && k == key {
				return true
			}
			res = res[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, res)
		if m < 0 {
			return false
		}
		res = res[m:]
	}
	return false
}

// kvKey returns the key of an encoded KeyValue.
func kvKey(kv []byte) (string, bool) {
	for len(kv) > 0 {
		num, typ, n := protowire.ConsumeTag(kv)
		if n < 0 {
			return "", false
		}
		kv = kv[n:]
		if num == 1 && typ == protowire.BytesType {
			k, m := protowire.ConsumeString(kv)
			return k, m >= 0
		}
		m := protowire.ConsumeFieldValue(num, typ, kv)
		if m < 0 {
			return "", false
		}
		kv = kv[m:]
	}
	return "", false
}

// aggdScope is the instrumentation scope of spans that came over aggd.v1.
var aggdScope, _ = proto.Marshal(&commonpb.InstrumentationScope{Name: "aggd"})

// wireSpan returns the encoded resource, scope and span of s.
func wireSpan(s *spans.Span) (resource, scope, span []byte) {
	if s.Wire != nil {
		return s.Wire.Resource, s.Wire.Scope, s.Wire.Span
	}
	res, _ := proto.Marshal(&resourcepb.Resource{Attributes: []*commonpb.KeyValue{strAttr("service.name", s.Service)}})
	span, _ = proto.Marshal(otlpSpan(s))
	return res, aggdScope, span
}

// otlpSpan converts a span that came over aggd.v1, whose attributes are
// strings: the resource becomes resource.name and the HTTP status an int
// http.response.status_code, each unless an attribute of that key says
// otherwise, so every key appears once.
func otlpSpan(s *spans.Span) *tracepb.Span {
	ps := &tracepb.Span{
		TraceId: s.TraceID[:], SpanId: s.SpanID[:], Name: s.Name, Kind: tracepb.Span_SpanKind(s.Kind),
		StartTimeUnixNano: uint64(s.Start), EndTimeUnixNano: uint64(s.End()),
	}
	if s.HasParent {
		ps.ParentSpanId = s.ParentID[:]
	}
	if s.Error {
		ps.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR}
	}
	const statusKey = "http.response.status_code"
	seen := map[string]bool{}
	for _, a := range s.Attrs {
		if seen[a.Key] {
			continue
		}
		seen[a.Key] = true
		if a.Key == statusKey && s.HTTPStatus != 0 {
			ps.Attributes = append(ps.Attributes, intAttr(statusKey, int64(s.HTTPStatus)))
			continue
		}
		ps.Attributes = append(ps.Attributes, strAttr(a.Key, a.Value))
	}
	if s.Resource != "" && !seen["resource.name"] {
		ps.Attributes = append(ps.Attributes, strAttr("resource.name", s.Resource))
	}
	if s.HTTPStatus != 0 && !seen[statusKey] {
		ps.Attributes = append(ps.Attributes, intAttr(statusKey, int64(s.HTTPStatus)))
	}
	return ps
}

func intAttr(k string, v int64) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
}

package upstream

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
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
// TraceService, each tenant in its own requests, one resource per service
// (service.name) with the tenant attribute. Errors and HTTP status become
// the span status and http.response.status_code.
func (o *OTLP) ExportTraces(ctx context.Context, traces []spans.Trace, routes Routes) error {
	type batch struct {
		tenant    *window.Tenant
		header    map[string][]string
		req       *coltracepb.ExportTraceServiceRequest
		resources map[string]*tracepb.ScopeSpans
		size      int
		spans     int
	}
	batches := map[*window.Tenant]*batch{}
	var errs []error
	send := func(b *batch) {
		body, err := proto.Marshal(b.req)
		if err == nil {
			err = o.pipe.Enqueue(ctx, &Payload{Tenant: b.tenant.ID, Kind: "traces", Body: body, Header: b.header, Points: b.spans})
		}
		errs = append(errs, err)
	}
	for _, tr := range traces {
		b, ok := batches[tr.Tenant]
		if !ok {
			if cred, routed := routes(tr.Tenant); routed {
				b = &batch{tenant: tr.Tenant, header: o.header(tr.Tenant, cred)}
			}
			batches[tr.Tenant] = b
		}
		if b == nil {
			continue
		}
		for i := range tr.Spans {
			s := &tr.Spans[i]
			if b.req == nil {
				b.req, b.resources, b.size, b.spans = &coltracepb.ExportTraceServiceRequest{}, map[string]*tracepb.ScopeSpans{}, 0, 0
			}
			ss := b.resources[s.Service]
			if ss == nil {
				ss = &tracepb.ScopeSpans{Scope: &commonpb.InstrumentationScope{Name: "aggd"}}
				b.req.ResourceSpans = append(b.req.ResourceSpans, &tracepb.ResourceSpans{
					Resource:   &resourcepb.Resource{Attributes: []*commonpb.KeyValue{strAttr("service.name", s.Service), strAttr(o.cfg.TenantAttribute, tr.Tenant.ID)}},
					ScopeSpans: []*tracepb.ScopeSpans{ss},
				})
				b.resources[s.Service] = ss
			}
			ps := otlpSpan(s)
			ss.Spans = append(ss.Spans, ps)
			b.size += proto.Size(ps) + 8
			b.spans++
			if b.size > o.cfg.MaxPayloadBytes*9/10 {
				send(b)
				b.req = nil
			}
		}
	}
	for _, b := range batches {
		if b != nil && b.req != nil && b.spans > 0 {
			send(b)
		}
	}
	return errors.Join(errs...)
}

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
	if s.Resource != "" {
		ps.Attributes = append(ps.Attributes, strAttr("resource.name", s.Resource))
	}
	if s.HTTPStatus != 0 {
		ps.Attributes = append(ps.Attributes, &commonpb.KeyValue{Key: "http.response.status_code",
			Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: int64(s.HTTPStatus)}}})
	}
	for _, a := range s.Attrs {
		ps.Attributes = append(ps.Attributes, strAttr(a.Key, a.Value))
	}
	return ps
}

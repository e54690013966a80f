package upstream

import (
	"context"
	"errors"
	"net/http"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/window"
)

// logBatch is one tenant's logs request being built.
type logBatch struct {
	tenant  *window.Tenant
	header  http.Header
	req     *collogspb.ExportLogsServiceRequest
	byHost  map[string]*logspb.ScopeLogs
	size    int
	records int
}

// exportLogs sends the events and service checks of f routed here as OTLP
// log records, each tenant in its own requests, one resource per host.
func (o *OTLP) exportLogs(ctx context.Context, f *window.Flush, routes Routes) error {
	batches := map[*window.Tenant]*logBatch{}
	var errs []error
	add := func(t *window.Tenant, host string, rec *logspb.LogRecord) {
		b, ok := batches[t]
		if !ok {
			if cred, routed := routes(t); routed {
				b = &logBatch{tenant: t, header: o.header(t, cred)}
			}
			batches[t] = b
		}
		if b == nil {
			return
		}
		n := proto.Size(rec) + 8
		if b.req != nil && b.size+n > o.cfg.MaxPayloadBytes*95/100 {
			errs = append(errs, o.sendLogs(ctx, b))
			b.req = nil
		}
		if b.req == nil {
			b.req, b.byHost, b.size, b.records = &collogspb.ExportLogsServiceRequest{}, map[string]*logspb.ScopeLogs{}, 0, 0
		}
		sl := b.byHost[host]
		if sl == nil {
			sl = &logspb.ScopeLogs{Scope: &commonpb.InstrumentationScope{Name: "aggd"}}
			b.req.ResourceLogs = append(b.req.ResourceLogs, &logspb.ResourceLogs{
				Resource: &resourcepb.Resource{Attributes: o.resourceAttrs(t, host)}, ScopeLogs: []*logspb.ScopeLogs{sl}})
			b.byHost[host] = sl
			b.size += 64 + len(host) + len(t.ID)
		}
		sl.LogRecords = append(sl.LogRecords, rec)
		b.size += n
		b.records++
	}
	for i := range f.Events {
		e := &f.Events[i]
		add(e.Tenant, e.Host, eventRecord(e))
	}
	for i := range f.Checks {
		c := &f.Checks[i]
		add(c.Tenant, c.Host, checkRecord(c))
	}
	for _, b := range batches {
		if b != nil && b.req != nil && b.records > 0 {
			errs = append(errs, o.sendLogs(ctx, b))
		}
	}
	return errors.Join(errs...)
}

func (o *OTLP) sendLogs(ctx context.Context, b *logBatch) error {
	body, err := proto.Marshal(b.req)
	if err != nil {
		return err
	}
	return o.pipe.Enqueue(ctx, &Payload{Tenant: b.tenant.ID, Kind: "logs", Body: body, Header: b.header, Points: b.records})
}

// withAttrs puts attrs before the tag attributes, leaving out a tag whose
// key they already use, so keys stay unique.
func withAttrs(tags []string, attrs ...*commonpb.KeyValue) []*commonpb.KeyValue {
	taken := map[string]bool{}
	for _, a := range attrs {
		taken[a.Key] = true
	}
	for _, a := range tagAttrs(tags) {
		if !taken[a.Key] {
			attrs = append(attrs, a)
		}
	}
	return attrs
}

// eventRecord is an event as a log record: its text the body, its alert
// type the severity, the rest attributes (event.name aggd.event).
func eventRecord(e *window.Event) *logspb.LogRecord {
	sev := logspb.SeverityNumber_SEVERITY_NUMBER_INFO
	switch e.AlertType {
	case window.AlertWarning:
		sev = logspb.SeverityNumber_SEVERITY_NUMBER_WARN
	case window.AlertError:
		sev = logspb.SeverityNumber_SEVERITY_NUMBER_ERROR
	}
	attrs := []*commonpb.KeyValue{strAttr("event.name", "aggd.event"), strAttr("aggd.title", e.Title),
		strAttr("aggd.priority", e.Priority.String()), strAttr("aggd.alert_type", e.AlertType.String())}
	if e.AggregationKey != "" {
		attrs = append(attrs, strAttr("aggd.aggregation_key", e.AggregationKey))
	}
	if e.SourceType != "" {
		attrs = append(attrs, strAttr("aggd.source_type", e.SourceType))
	}
	return &logspb.LogRecord{TimeUnixNano: uint64(e.Timestamp), ObservedTimeUnixNano: uint64(e.Timestamp),
		SeverityNumber: sev, SeverityText: e.AlertType.String(),
		Body:       &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: e.Text}},
		Attributes: withAttrs(e.Tags, attrs...)}
}

var checkStatusNames = [...]string{"ok", "warning", "critical", "unknown"}

// checkRecord is a service check as a log record: its message the body,
// its status the severity (OK info, WARNING warn, CRITICAL error, UNKNOWN
// unspecified) and the aggd.status attribute (0 to 3, Datadog's numbers).
func checkRecord(c *window.ServiceCheck) *logspb.LogRecord {
	sev := [...]logspb.SeverityNumber{logspb.SeverityNumber_SEVERITY_NUMBER_INFO, logspb.SeverityNumber_SEVERITY_NUMBER_WARN,
		logspb.SeverityNumber_SEVERITY_NUMBER_ERROR, logspb.SeverityNumber_SEVERITY_NUMBER_UNSPECIFIED}
	st := min(int(c.Status), 3)
	attrs := []*commonpb.KeyValue{strAttr("event.name", "aggd.service_check"), strAttr("aggd.check", c.Name), intAttr("aggd.status", int64(st))}
	return &logspb.LogRecord{TimeUnixNano: uint64(c.Timestamp), ObservedTimeUnixNano: uint64(c.Timestamp),
		SeverityNumber: sev[st], SeverityText: checkStatusNames[st],
		Body:       &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: c.Message}},
		Attributes: withAttrs(c.Tags, attrs...)}
}

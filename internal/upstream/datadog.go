package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/aggd/aggd/internal/window"
)

// Datadog series v2 metric types (agent-payload MetricPayload.MetricType).
const (
	ddCount = 1
	ddRate  = 2
	ddGauge = 3
)

// Datadog's documented payload limits for series and sketches.
const (
	DatadogMaxCompressed   = 512_000
	DatadogMaxUncompressed = 5 * 1024 * 1024
)

// DatadogConfig configures a Datadog upstream.
type DatadogConfig struct {
	Pipeline PipelineConfig
	// URL is the intake's base URL, such as https://api.datadoghq.com.
	URL string
	// APIKey is sent as DD-API-KEY for tenants without their own key.
	APIKey string
	// Compression of series, sketches and check runs.
	Compression Compression
	// MaxCompressed and MaxUncompressed bound one series or sketch
	// payload; they default to Datadog's limits.
	MaxCompressed, MaxUncompressed int
	Histogram                      HistogramConfig
	// RawCounts sends COUNT aggregates and histogram counts as series of
	// type count holding the sums. By default they go as the Agent sends
	// DogStatsD counters: type rate, the sum divided by the interval in
	// seconds, with the interval set.
	RawCounts bool
	// Client sends the requests; nil means a client made for the pipeline.
	Client *http.Client
}

// Validate reports a setting out of range.
func (c DatadogConfig) Validate() error {
	if !strings.HasPrefix(c.URL, "http://") && !strings.HasPrefix(c.URL, "https://") {
		return fmt.Errorf("upstream %s: url %q is not http(s)", c.Pipeline.Name, c.URL)
	}
	if c.MaxCompressed < 0 || c.MaxUncompressed < 0 {
		return fmt.Errorf("upstream %s: payload limits must not be negative", c.Pipeline.Name)
	}
	return errors.Join(c.Pipeline.Validate(), c.Compression.Validate(), c.Histogram.Validate())
}

// Credentials are one tenant's secrets for an upstream.
type Credentials struct {
	// APIKey is the Datadog API key.
	APIKey string `toml:"api_key"`
	// Headers are sent with every request (OTLP metadata, HTTP headers).
	Headers map[string]string `toml:"headers"`
}

// Routes tells an upstream whether a tenant's data goes to it, and with
// which credentials.
type Routes func(t *window.Tenant) (Credentials, bool)

// Datadog sends aggregates to a Datadog-compatible HTTP intake: series to
// /api/v2/series (protobuf), distributions to /api/beta/sketches (the
// sketch itself, in the Agent's bin layout), service checks to
// /api/v1/check_run and events to /api/v1/events (JSON).
type Datadog struct {
	cfg      DatadogConfig
	pipe     *Pipeline
	series   []histogramSeries
	metrics  PipelineMetrics
	log      *slog.Logger
	scratch  []byte
	bins     []window.AgentBin
	entryBuf []byte
	packed   []byte // a sketch's packed keys or counts
	sketch   []byte // a sketch's SketchPayload.sketches entry
	// free holds the batches of earlier flushes, their buffers kept: a
	// flush encodes into them instead of growing new ones to the payload
	// size, which would leave megabytes of garbage per flush.
	free []*ddBatch
}

// NewDatadog returns a Datadog upstream. cfg must be valid.
func NewDatadog(cfg DatadogConfig, m PipelineMetrics, log *slog.Logger) *Datadog {
	if cfg.MaxCompressed == 0 {
		cfg.MaxCompressed = DatadogMaxCompressed
	}
	if cfg.MaxUncompressed == 0 {
		cfg.MaxUncompressed = DatadogMaxUncompressed
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Transport: &http.Transport{
			Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: cfg.Pipeline.Senders,
			IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second, ForceAttemptHTTP2: true,
		}}
	}
	d := &Datadog{cfg: cfg, series: cfg.Histogram.series(), metrics: m, log: log}
	d.pipe = NewPipeline(cfg.Pipeline, &datadogSender{url: strings.TrimSuffix(cfg.URL, "/"), client: cfg.Client}, m, log)
	return d
}

// Name returns the upstream's name.
func (d *Datadog) Name() string { return d.cfg.Pipeline.Name }

// Start starts the senders.
func (d *Datadog) Start(ctx context.Context) error { return d.pipe.Start(ctx) }

// Shutdown drains the send queue within ctx.
func (d *Datadog) Shutdown(ctx context.Context) error { return d.pipe.Shutdown(ctx) }

// ddBatch accumulates one tenant's payloads of one flush.
type ddBatch struct {
	tenant string
	header http.Header
	series payloadBuilder
	sketch payloadBuilder
	// Corrections of flushed buckets go in payloads of their own, sent
	// after every payload queued before them.
	lateSeries payloadBuilder
	lateSketch payloadBuilder
	checks     []byte
	nChecks    int
}

// payloadBuilder holds protobuf entries of one repeated field, cut into
// payloads by size.
type payloadBuilder struct {
	buf      []byte
	starts   []int // entry offsets in buf
	replaces bool  // its payloads replace points sent before
}

// Export encodes the part of f routed here and queues it. It is called by
// one flush at a time.
func (d *Datadog) Export(ctx context.Context, f *window.Flush, routes Routes) error {
	batches := map[*window.Tenant]*ddBatch{}
	batch := func(t *window.Tenant) *ddBatch {
		b, ok := batches[t]
		if !ok {
			if cred, routed := routes(t); routed {
				key := cred.APIKey
				if key == "" {
					key = d.cfg.APIKey
				}
				h := http.Header{}
				h.Set("DD-API-KEY", key)
				for k, v := range cred.Headers {
					h.Set(k, v)
				}
				b = d.newBatch(t.ID, h)
			}
			batches[t] = b
		}
		return b
	}
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	for m := range f.Metrics() {
		b := batch(m.Tenant)
		if b == nil {
			continue
		}
		series, sketch := &b.series, &b.sketch
		if m.Late {
			series, sketch = &b.lateSeries, &b.lateSketch
		}
		switch m.Type {
		case window.TypeDistribution:
			d.scratch = d.appendSketch(d.scratch[:0], m)
			note(d.add(ctx, b, sketch, "sketches"))
		case window.TypeHistogram, window.TypeTiming:
			for _, s := range d.series {
				v, isCount := s.value(m)
				typ := ddGauge
				if isCount {
					typ, v = d.countSeries(v, m.Interval)
				}
				d.scratch = d.appendSeries(d.scratch[:0], m, s.suffix, typ, v)
				note(d.add(ctx, b, series, "series"))
			}
		default:
			// As the Agent flushes them: RATE (Rate.flush) and SET
			// (Set.flush) as gauges, MONOTONIC_COUNT as a count
			// (MonotonicCount.flush), COUNT as the rate of its sum
			// (Counter.flush).
			typ, v := ddGauge, m.Value
			switch m.Type {
			case window.TypeCount:
				typ, v = d.countSeries(v, m.Interval)
			case window.TypeMonotonicCount:
				typ = ddCount
			}
			d.scratch = d.appendSeries(d.scratch[:0], m, "", typ, v)
			note(d.add(ctx, b, series, "series"))
		}
	}
	for i := range f.Checks {
		c := &f.Checks[i]
		if b := batch(c.Tenant); b != nil {
			b.checks = appendCheckRun(b.checks, c)
			b.nChecks++
		}
	}
	for i := range f.Events {
		e := &f.Events[i]
		if b := batch(e.Tenant); b != nil {
			errs = append(errs, d.enqueue(ctx, b, "event", appendEvent(nil, e), 1))
		}
	}
	for _, b := range batches {
		if b == nil {
			continue
		}
		errs = append(errs, d.cut(ctx, b, &b.series, "series"), d.cut(ctx, b, &b.sketch, "sketches"),
			d.cut(ctx, b, &b.lateSeries, "series"), d.cut(ctx, b, &b.lateSketch, "sketches"))
		if b.nChecks > 0 {
			body := append([]byte{'['}, b.checks[:len(b.checks)-1]...) // drop the last comma
			errs = append(errs, d.enqueue(ctx, b, "check_run", append(body, ']'), b.nChecks))
		}
		d.free = append(d.free, b)
	}
	return errors.Join(errs...)
}

// newBatch returns an empty batch of tenant's, reusing the buffers of an
// earlier flush's batch when there is one. The payloads queued do not
// share them: compression copies.
func (d *Datadog) newBatch(tenant string, h http.Header) *ddBatch {
	b := &ddBatch{}
	if n := len(d.free); n > 0 {
		b, d.free[n-1] = d.free[n-1], nil
		d.free = d.free[:n-1]
	}
	*b = ddBatch{tenant: tenant, header: h, series: b.series.empty(), sketch: b.sketch.empty(),
		lateSeries: b.lateSeries.empty(), lateSketch: b.lateSketch.empty(), checks: b.checks[:0]}
	b.lateSeries.replaces, b.lateSketch.replaces = true, true
	return b
}

// empty returns pb emptied, its buffers kept.
func (pb payloadBuilder) empty() payloadBuilder {
	return payloadBuilder{buf: pb.buf[:0], starts: pb.starts[:0]}
}

// countSeries returns the series type and value of sum over an interval of
// width nanoseconds.
func (d *Datadog) countSeries(sum float64, width int64) (int, float64) {
	if d.cfg.RawCounts {
		return ddCount, sum
	}
	return ddRate, sum / (float64(width) / 1e9)
}

// add appends the entry in d.scratch to pb, first cutting a payload when
// the entry would not fit.
func (d *Datadog) add(ctx context.Context, b *ddBatch, pb *payloadBuilder, kind string) error {
	var err error
	if len(pb.buf)+len(d.scratch) > d.cfg.MaxUncompressed && len(pb.starts) > 0 {
		err = d.cut(ctx, b, pb, kind)
	}
	pb.starts = append(pb.starts, len(pb.buf))
	pb.buf = append(pb.buf, d.scratch...)
	return err
}

// cut compresses and queues pb's entries, halving them until each part
// fits the compressed limit. An entry too large alone is counted as lost.
func (d *Datadog) cut(ctx context.Context, b *ddBatch, pb *payloadBuilder, kind string) error {
	defer func() { pb.buf, pb.starts = pb.buf[:0], pb.starts[:0] }()
	return d.cutRange(ctx, b, pb, kind, 0, len(pb.starts))
}

func (d *Datadog) cutRange(ctx context.Context, b *ddBatch, pb *payloadBuilder, kind string, from, to int) error {
	if from == to {
		return nil
	}
	end := len(pb.buf)
	if to < len(pb.starts) {
		end = pb.starts[to]
	}
	raw := pb.buf[pb.starts[from]:end]
	body := d.cfg.Compression.compress(raw)
	if len(body) <= d.cfg.MaxCompressed && len(raw) <= d.cfg.MaxUncompressed {
		return d.enqueueBody(ctx, b, kind, body, to-from, pb.replaces)
	}
	if to-from == 1 {
		d.metrics.Lost(d.Name(), "too_large", 1)
		d.log.Error("aggregate larger than the intake's payload limit dropped", "tenant", b.tenant, "kind", kind, "bytes", len(raw))
		return nil
	}
	mid := (from + to) / 2
	return errors.Join(d.cutRange(ctx, b, pb, kind, from, mid), d.cutRange(ctx, b, pb, kind, mid, to))
}

func (d *Datadog) enqueue(ctx context.Context, b *ddBatch, kind string, raw []byte, points int) error {
	return d.enqueueBody(ctx, b, kind, d.cfg.Compression.compress(raw), points, false)
}

func (d *Datadog) enqueueBody(ctx context.Context, b *ddBatch, kind string, body []byte, points int, replaces bool) error {
	return d.pipe.Enqueue(ctx, &Payload{Tenant: b.tenant, Kind: kind, Body: body, Encoding: d.cfg.Compression.encoding(),
		Header: b.header, Points: points, Replaces: replaces})
}

// appendSeries appends one MetricPayload.series entry (field 1) to b.
func (d *Datadog) appendSeries(b []byte, m *window.Metric, suffix string, typ int, v float64) []byte {
	d.entryBuf = appendSeriesBody(d.entryBuf[:0], m, suffix, typ, v)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendBytes(b, d.entryBuf)
}

func appendSeriesBody(s []byte, m *window.Metric, suffix string, typ int, v float64) []byte {
	if m.Host != "" {
		s = appendResource(s, "host", m.Host)
	}
	for _, t := range m.Tags {
		if rt, rn, ok := resourceTag(t); ok {
			s = appendResource(s, rt, rn)
		}
	}
	s = protowire.AppendTag(s, 2, protowire.BytesType)
	s = protowire.AppendVarint(s, uint64(len(m.Name)+len(suffix)))
	s = append(append(s, m.Name...), suffix...)
	for _, t := range m.Tags {
		if _, _, ok := resourceTag(t); ok {
			continue
		}
		s = protowire.AppendTag(s, 3, protowire.BytesType)
		s = protowire.AppendString(s, t)
	}
	ts := m.Timestamp / 1e9
	s = protowire.AppendTag(s, 4, protowire.BytesType) // points: {value, timestamp}
	s = protowire.AppendVarint(s, uint64(1+8+1+protowire.SizeVarint(uint64(ts))))
	s = protowire.AppendTag(s, 1, protowire.Fixed64Type)
	s = protowire.AppendFixed64(s, math.Float64bits(v))
	s = protowire.AppendTag(s, 2, protowire.VarintType)
	s = protowire.AppendVarint(s, uint64(ts))
	s = protowire.AppendTag(s, 5, protowire.VarintType)
	s = protowire.AppendVarint(s, uint64(typ))
	s = protowire.AppendTag(s, 8, protowire.VarintType)
	return protowire.AppendVarint(s, uint64(m.Interval/1e9))
}

// resourceTag reports whether tag t is a series resource rather than a tag,
// as the Agent's serializer takes them (Serie.PopulateDeviceField and
// PopulateResources): device:<name> is a resource of type device, and
// dd.internal.resource:<type>:<name> one of that type.
func resourceTag(t string) (typ, name string, ok bool) {
	if name, ok := strings.CutPrefix(t, "device:"); ok {
		return "device", name, true
	}
	if rest, ok := strings.CutPrefix(t, "dd.internal.resource:"); ok {
		typ, name, ok := strings.Cut(rest, ":")
		return typ, name, ok && typ != "" && name != ""
	}
	return "", "", false
}

// appendResource appends one MetricSeries.resources entry (field 1):
// {type = 1, name = 2}.
func appendResource(s []byte, typ, name string) []byte {
	s = protowire.AppendTag(s, 1, protowire.BytesType)
	s = protowire.AppendVarint(s, uint64(1+protowire.SizeBytes(len(typ))+1+protowire.SizeBytes(len(name))))
	s = protowire.AppendTag(s, 1, protowire.BytesType)
	s = protowire.AppendString(s, typ)
	s = protowire.AppendTag(s, 2, protowire.BytesType)
	return protowire.AppendString(s, name)
}

// appendSketch appends one SketchPayload.sketches entry (field 1) to b.
func (d *Datadog) appendSketch(b []byte, m *window.Metric) []byte {
	var cnt uint64
	d.bins, cnt = m.AgentBins(d.bins[:0])
	ds := d.entryBuf[:0] // Dogsketch
	ds = protowire.AppendTag(ds, 1, protowire.VarintType)
	ds = protowire.AppendVarint(ds, uint64(m.Timestamp/1e9))
	ds = protowire.AppendTag(ds, 2, protowire.VarintType)
	ds = protowire.AppendVarint(ds, cnt)
	for i, v := range [...]float64{m.Min, m.Max, m.Sum / m.Count, m.Sum} {
		ds = protowire.AppendTag(ds, protowire.Number(3+i), protowire.Fixed64Type)
		ds = protowire.AppendFixed64(ds, math.Float64bits(v))
	}
	packed := d.packed[:0]
	for _, bin := range d.bins {
		packed = protowire.AppendVarint(packed, protowire.EncodeZigZag(int64(bin.K)))
	}
	ds = protowire.AppendTag(ds, 7, protowire.BytesType)
	ds = protowire.AppendBytes(ds, packed)
	packed = packed[:0]
	for _, bin := range d.bins {
		packed = protowire.AppendVarint(packed, uint64(bin.N))
	}
	ds = protowire.AppendTag(ds, 8, protowire.BytesType)
	ds = protowire.AppendBytes(ds, packed)
	d.entryBuf, d.packed = ds, packed

	s := d.sketch[:0]
	s = protowire.AppendTag(s, 1, protowire.BytesType)
	s = protowire.AppendString(s, m.Name)
	if m.Host != "" {
		s = protowire.AppendTag(s, 2, protowire.BytesType)
		s = protowire.AppendString(s, m.Host)
	}
	for _, t := range m.Tags {
		s = protowire.AppendTag(s, 4, protowire.BytesType)
		s = protowire.AppendString(s, t)
	}
	s = protowire.AppendTag(s, 7, protowire.BytesType)
	s = protowire.AppendBytes(s, ds)
	d.sketch = s
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendBytes(b, s)
}

// appendCheckRun appends one /api/v1/check_run object and a comma.
func appendCheckRun(b []byte, c *window.ServiceCheck) []byte {
	b = append(b, `{"check":`...)
	b = appendString(b, c.Name)
	b = append(b, `,"host_name":`...)
	b = appendString(b, c.Host)
	b = append(b, `,"timestamp":`...)
	b = strconv.AppendInt(b, c.Timestamp/1e9, 10)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(c.Status), 10)
	b = append(b, `,"message":`...)
	b = appendString(b, c.Message)
	b = append(b, `,"tags":`...)
	b = appendStrings(b, c.Tags)
	return append(b, "},"...)
}

// appendEvent appends one /api/v1/events object.
func appendEvent(b []byte, e *window.Event) []byte {
	b = append(b, `{"title":`...)
	b = appendString(b, e.Title)
	b = append(b, `,"text":`...)
	b = appendString(b, e.Text)
	b = append(b, `,"date_happened":`...)
	b = strconv.AppendInt(b, e.Timestamp/1e9, 10)
	b = append(b, `,"priority":"`...)
	b = append(b, e.Priority.String()...)
	b = append(b, `","alert_type":"`...)
	b = append(b, e.AlertType.String()...)
	b = append(b, `","host":`...)
	b = appendString(b, e.Host)
	b = append(b, `,"aggregation_key":`...)
	b = appendString(b, e.AggregationKey)
	b = append(b, `,"source_type_name":`...)
	b = appendString(b, e.SourceType)
	b = append(b, `,"tags":`...)
	b = appendStrings(b, e.Tags)
	return append(b, '}')
}

// datadogSender posts payloads to the intake.
type datadogSender struct {
	url    string
	client *http.Client
}

var datadogPaths = map[string]struct{ path, contentType string }{
	"series":    {"/api/v2/series", "application/x-protobuf"},
	"sketches":  {"/api/beta/sketches", "application/x-protobuf"},
	"check_run": {"/api/v1/check_run", "application/json"},
	"event":     {"/api/v1/events", "application/json"},
}

// Send implements Sender.
func (s *datadogSender) Send(ctx context.Context, p *Payload) error {
	ep := datadogPaths[p.Kind]
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url+ep.path, bytes.NewReader(p.Body))
	if err != nil {
		return &PermanentError{Reason: "bad_request", Err: err}
	}
	for k, v := range p.Header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", ep.contentType)
	if p.Encoding != "" {
		req.Header.Set("Content-Encoding", p.Encoding)
	}
	req.Header.Set("User-Agent", "aggd")
	resp, err := s.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return &ReasonError{Reason: "timeout", Err: err}
		}
		return &ReasonError{Reason: "network", Err: err}
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return classifyHTTP(resp, msg)
}

// classifyHTTP maps an HTTP answer to nil, a retryable or a permanent
// error: 2xx succeed; 408, 429 and 5xx are retried, after Retry-After if
// given; other statuses are final.
func classifyHTTP(resp *http.Response, msg []byte) error {
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		return nil
	}
	reason := "http_" + strconv.Itoa(code)
	err := fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	if code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500 {
		if after, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return &RetryAfterError{After: after, Reason: reason, Err: err}
		}
		return &ReasonError{Reason: reason, Err: err}
	}
	return &PermanentError{Reason: reason, Err: err}
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(h string, now time.Time) (time.Duration, bool) {
	if h == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

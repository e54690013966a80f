package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // registers the gzip compressor
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/window"
)

// OTLPConfig configures an OTLP/gRPC upstream.
type OTLPConfig struct {
	Pipeline PipelineConfig
	// Endpoint is the collector's host:port.
	Endpoint string
	// Insecure turns TLS off.
	Insecure bool
	// TLS configures TLS when Insecure is off; nil means system roots.
	TLS *tls.Config
	// Headers are sent with every export, before per-tenant headers.
	Headers map[string]string
	// TenantAttribute is the resource attribute naming the tenant.
	TenantAttribute string
	// TenantHeader, if set, is a request header carrying the tenant id
	// (such as X-Scope-OrgID).
	TenantHeader string
	// Compression is gzip or none.
	Compression Compression
	// MaxPayloadBytes bounds one export request.
	MaxPayloadBytes int
	Histogram       HistogramConfig
	// InstanceID, if set, is the service.instance.id of the aggregates'
	// resources: replicas each write their own aggregates of a series, and
	// the OTLP data model wants one writer per stream.
	InstanceID string
}

// Validate reports a setting out of range.
func (c OTLPConfig) Validate() error {
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, fmt.Errorf("upstream %s: endpoint is empty", c.Pipeline.Name))
	}
	if c.Compression != CompressGzip && c.Compression != CompressNone {
		errs = append(errs, fmt.Errorf("upstream %s: OTLP compression must be gzip or none", c.Pipeline.Name))
	}
	if c.MaxPayloadBytes < 0 || c.TenantAttribute == "" {
		errs = append(errs, fmt.Errorf("upstream %s: max payload bytes must not be negative, tenant attribute not empty", c.Pipeline.Name))
	}
	return errors.Join(append(errs, c.Pipeline.Validate(), c.Histogram.Validate())...)
}

// otlpMaxScale is the finest exponential histogram scale used: base
// 2^(2^-6) ≈ 1.0109, buckets 1.09 % wide.
const (
	otlpMaxScale   = 6
	otlpMaxBuckets = 2048
)

// OTLP exports aggregates to an OpenTelemetry Collector over OTLP/gRPC.
//
// Each tenant's aggregates go in their own requests, one resource per host
// with the tenant as a resource attribute. GAUGE and SET become gauges
// (time: bucket start), RATE a gauge in 1/s, COUNT a delta sum and
// MONOTONIC_COUNT a monotonic delta sum (start: bucket start, time: bucket
// end). HISTOGRAM, TIMING and DISTRIBUTION become delta exponential
// histograms at scale 6 or coarser (so they have at most 2048 buckets)
// with exact sum, min and max: a summary's count and sum would be
// cumulative by the OTLP data model, a window's are one interval's.
// Events and service checks become log records.
type OTLP struct {
	cfg  OTLPConfig
	pipe *Pipeline
	conn *grpc.ClientConn

	// Kept from flush to flush (one flush exports at a time): the
	// encoder's scratch, and the batches of the last flush, their buffers
	// kept.
	enc        otlpEncoder
	free       []*otlpBatch
	resScratch []byte
}

// NewOTLP returns an OTLP upstream; it connects lazily. cfg must be valid.
func NewOTLP(cfg OTLPConfig, m PipelineMetrics, log *slog.Logger) (*OTLP, error) {
	if cfg.MaxPayloadBytes == 0 {
		cfg.MaxPayloadBytes = 4_000_000 // under the Collector's default 4 MiB receive limit
	}
	creds := insecure.NewCredentials()
	if !cfg.Insecure {
		creds = credentials.NewTLS(cfg.TLS)
	}
	conn, err := grpc.NewClient(cfg.Endpoint, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", cfg.Pipeline.Name, err)
	}
	o := &OTLP{cfg: cfg, conn: conn}
	o.pipe = NewPipeline(cfg.Pipeline, &otlpSender{conn: conn, name: cfg.Pipeline.Name, compression: cfg.Compression, metrics: m}, m, log)
	return o, nil
}

// Name returns the upstream's name.
func (o *OTLP) Name() string { return o.cfg.Pipeline.Name }

// Start starts the senders.
func (o *OTLP) Start(ctx context.Context) error { return o.pipe.Start(ctx) }

// Shutdown drains the send queue within ctx and closes the connection.
func (o *OTLP) Shutdown(ctx context.Context) error {
	err := o.pipe.Shutdown(ctx)
	return errors.Join(err, o.conn.Close())
}

// otlpBatch is one tenant's request being built.
type otlpBatch struct {
	tenant *window.Tenant
	header http.Header
	// hosts holds the encoded metrics by resource, in order of arrival;
	// its buffers past len are kept for reuse.
	hosts  []otlpHost
	byHost map[string]int
	size   int
	points int
	// replaces: the batch carries corrections of flushed buckets.
	replaces bool
}

// Export encodes the part of f routed here and queues it. It is called by
// one flush at a time.
func (o *OTLP) Export(ctx context.Context, f *window.Flush, routes Routes) error {
	batches := map[*window.Tenant]*otlpBatch{}
	var errs []error
	for m := range f.Metrics() {
		b, ok := batches[m.Tenant]
		if !ok {
			if cred, routed := routes(m.Tenant); routed {
				b = o.newBatch(m.Tenant, o.header(m.Tenant, cred))
			}
			batches[m.Tenant] = b
		}
		if b == nil {
			continue
		}
		metric := o.enc.encode(m)
		n := len(metric) + 8
		if b.size+n > o.cfg.MaxPayloadBytes*95/100 && b.points > 0 {
			if err := o.send(ctx, b); err != nil {
				errs = append(errs, err)
			}
			b.reset()
		}
		h, ok := b.byHost[m.Host]
		if !ok {
			h = b.addHost(m.Host)
			b.size += 64 + len(m.Host) + len(b.tenant.ID)
		}
		b.hosts[h].metrics = appendMessage(b.hosts[h].metrics, 2, metric)
		b.size += n
		b.points++
		b.replaces = b.replaces || m.Late
	}
	for _, b := range batches {
		if b == nil {
			continue
		}
		if b.points > 0 {
			errs = append(errs, o.send(ctx, b))
		}
		o.free = append(o.free, b)
	}
	errs = append(errs, o.exportLogs(ctx, f, routes))
	return errors.Join(errs...)
}

// newBatch returns an empty batch of t's, reusing the buffers of an earlier
// flush's batch when there is one.
func (o *OTLP) newBatch(t *window.Tenant, h http.Header) *otlpBatch {
	b := &otlpBatch{byHost: map[string]int{}}
	if n := len(o.free); n > 0 {
		b, o.free[n-1] = o.free[n-1], nil
		o.free = o.free[:n-1]
	}
	b.reset()
	b.tenant, b.header = t, h
	return b
}

// reset empties b for its next request, keeping its buffers.
func (b *otlpBatch) reset() {
	for i := range b.hosts {
		b.hosts[i].metrics = b.hosts[i].metrics[:0]
	}
	b.hosts = b.hosts[:0]
	clear(b.byHost)
	b.size, b.points, b.replaces = 0, 0, false
}

// addHost adds host's resource to b and returns its index.
func (b *otlpBatch) addHost(host string) int {
	i := len(b.hosts)
	if i < cap(b.hosts) {
		b.hosts = b.hosts[:i+1]
		b.hosts[i].host = host
	} else {
		b.hosts = append(b.hosts, otlpHost{host: host})
	}
	b.byHost[host] = i
	return i
}

// header returns the request headers of tenant t: the upstream's, then the
// tenant's own, then the tenant header.
func (o *OTLP) header(t *window.Tenant, cred Credentials) http.Header {
	h := http.Header{}
	for k, v := range o.cfg.Headers {
		h.Set(k, v)
	}
	for k, v := range cred.Headers {
		h.Set(k, v)
	}
	if o.cfg.TenantHeader != "" {
		h.Set(o.cfg.TenantHeader, t.ID)
	}
	return h
}

// resourceAttrs are the attributes of the resource of tenant t's
// aggregates, events and checks of host.
func (o *OTLP) resourceAttrs(t *window.Tenant, host string) []*commonpb.KeyValue {
	attrs := []*commonpb.KeyValue{strAttr(o.cfg.TenantAttribute, t.ID)}
	if host != "" {
		attrs = append(attrs, strAttr("host.name", host))
	}
	if o.cfg.InstanceID != "" {
		attrs = append(attrs, strAttr("service.instance.id", o.cfg.InstanceID))
	}
	return attrs
}

// appendResource appends the Resource attributes of b's tenant and host.
func (o *OTLP) appendResource(t *window.Tenant) func(b []byte, host string) []byte {
	return func(b []byte, host string) []byte {
		b = appendStringKV(b, 1, o.cfg.TenantAttribute, t.ID)
		if host != "" {
			b = appendStringKV(b, 1, "host.name", host)
		}
		if o.cfg.InstanceID != "" {
			b = appendStringKV(b, 1, "service.instance.id", o.cfg.InstanceID)
		}
		return b
	}
}

// send queues b's request. Its body is a new slice, owned by the queue.
func (o *OTLP) send(ctx context.Context, b *otlpBatch) error {
	size := 0
	for i := range b.hosts {
		size += len(b.hosts[i].metrics) + 128 + 2*len(b.hosts[i].host) + len(b.tenant.ID) + len(o.cfg.InstanceID)
	}
	var body []byte
	body, o.resScratch = appendRequest(make([]byte, 0, size), b.hosts, o.appendResource(b.tenant), o.resScratch)
	return o.pipe.Enqueue(ctx, &Payload{Tenant: b.tenant.ID, Kind: "metrics", Body: body, Header: b.header, Points: b.points, Replaces: b.replaces})
}

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// tagAttrs turns "key:value" tags into attributes; a bare tag becomes a key
// with an empty value. Attribute keys are unique in OTLP: the values of a
// key tagged more than once become one array value.
func tagAttrs(tags []string) []*commonpb.KeyValue {
	attrs := make([]*commonpb.KeyValue, 0, len(tags))
	at := map[string]int{}
	for _, t := range tags {
		k, v, _ := strings.Cut(t, ":")
		i, seen := at[k]
		if !seen {
			at[k] = len(attrs)
			attrs = append(attrs, strAttr(k, v))
			continue
		}
		val := attrs[i].Value
		arr := val.GetArrayValue()
		if arr == nil {
			arr = &commonpb.ArrayValue{Values: []*commonpb.AnyValue{{Value: val.Value}}}
			val.Value = &commonpb.AnyValue_ArrayValue{ArrayValue: arr}
		}
		arr.Values = append(arr.Values, &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}})
	}
	return attrs
}

// expHistogram converts a distribution's sketch (see expHistogramOf) into
// a data point of its own.
func expHistogram(m *window.Metric) *metricspb.ExponentialHistogramDataPoint {
	var sc expScratch
	e := expHistogramOf(m, &sc)
	buckets := func(off int, counts []uint64) *metricspb.ExponentialHistogramDataPoint_Buckets {
		if len(counts) == 0 {
			return nil
		}
		return &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: int32(off), BucketCounts: slices.Clone(counts)}
	}
	dp := &metricspb.ExponentialHistogramDataPoint{Scale: int32(e.scale), Positive: buckets(e.posOff, e.pos), Negative: buckets(e.negOff, e.neg),
		ZeroCount: e.zero, Count: e.count}
	sum, mn, mx := m.Sum, m.Min, m.Max
	dp.Sum, dp.Min, dp.Max = &sum, &mn, &mx
	return dp
}

// expBin is a sketch bin's weight at its exponential bucket index.
type expBin struct {
	i int
	n float64
}

// expScratch holds the slices of expHistogramOf, kept from call to call.
type expScratch struct {
	pos, neg             []expBin
	posCounts, negCounts []uint64
}

// expPoint is an exponential histogram's scale and buckets; pos and neg
// are the bucket counts from posOff and negOff (none: empty).
type expPoint struct {
	scale          int
	zero, count    uint64
	posOff, negOff int
	pos, neg       []uint64
}

// expHistogramOf converts a distribution's sketch, in sc's slices. Each
// sketch bin (within 1 % of its values) moves whole into the exponential
// bucket holding its representative value, so a quantile read at a
// bucket's midpoint is within about 1.6 % at scale 6 (more at coarser
// scales, chosen only when the values span more than 2048 buckets).
func expHistogramOf(m *window.Metric, sc *expScratch) expPoint {
	lo, hi := math.MaxInt, math.MinInt
	scale := otlpMaxScale
	index := func(v float64) int {
		return int(math.Ceil(math.Log2(math.Abs(v))*math.Ldexp(1, scale))) - 1
	}
	// The widest magnitude range decides the scale.
	for _, v := range [...]float64{m.Min, m.Max} {
		if v != 0 {
			i := index(v)
			lo, hi = min(lo, i), max(hi, i)
		}
	}
	for lo <= hi && hi-lo+1 > otlpMaxBuckets && scale > -10 {
		scale--
		lo, hi = lo>>1, hi>>1
	}
	pos, neg := sc.pos[:0], sc.neg[:0]
	var zero float64
	m.ForEach(func(v, n float64) bool {
		switch {
		case v > 0:
			pos = append(pos, expBin{index(v), n})
		case v < 0:
			neg = append(neg, expBin{index(v), n})
		default:
			zero += n
		}
		return false
	})
	sc.pos, sc.neg = pos, neg
	var carry float64
	round := func(x float64) uint64 {
		x += carry
		r := math.Round(x)
		carry = x - r
		return uint64(max(r, 0))
	}
	var total uint64
	buckets := func(bins []expBin, counts []uint64) (int, []uint64) {
		if len(bins) == 0 {
			return 0, counts[:0]
		}
		slices.SortFunc(bins, func(a, b expBin) int { return a.i - b.i })
		off := bins[0].i
		n := bins[len(bins)-1].i - off + 1
		counts = slices.Grow(counts[:0], n)[:n]
		clear(counts)
		for _, b := range bins {
			c := round(b.n)
			counts[b.i-off] += c
			total += c
		}
		return off, counts
	}
	e := expPoint{scale: scale}
	e.posOff, sc.posCounts = buckets(pos, sc.posCounts)
	e.negOff, sc.negCounts = buckets(neg, sc.negCounts)
	e.pos, e.neg = sc.posCounts, sc.negCounts
	e.zero = round(zero)
	e.count = total + e.zero
	return e
}

// ExpHistogramQuantile returns the nearest-rank q-quantile of dp read at
// bucket midpoints (geometric), as a consumer would, clamped to min and
// max. It is exported for tests of this upstream's consumers.
func ExpHistogramQuantile(dp *metricspb.ExponentialHistogramDataPoint, q float64) float64 {
	rank := max(math.Ceil(q*float64(dp.Count)), 1)
	base := math.Exp2(math.Ldexp(1, -int(dp.Scale)))
	mid := func(i int) float64 { return math.Pow(base, float64(i)) * (1 + base) / 2 }
	var seen float64
	clamp := func(v float64) float64 { return min(max(v, dp.GetMin()), dp.GetMax()) }
	if nb := dp.GetNegative(); nb != nil {
		for j := len(nb.BucketCounts) - 1; j >= 0; j-- {
			if seen += float64(nb.BucketCounts[j]); seen >= rank {
				return clamp(-mid(int(nb.Offset) + j))
			}
		}
	}
	if seen += float64(dp.ZeroCount); seen >= rank {
		return clamp(0)
	}
	if pb := dp.GetPositive(); pb != nil {
		for j, c := range pb.BucketCounts {
			if seen += float64(c); seen >= rank {
				return clamp(mid(int(pb.Offset) + j))
			}
		}
	}
	return dp.GetMax()
}

// otlpSender exports payloads with the MetricsService Export call.
type otlpSender struct {
	conn        *grpc.ClientConn
	name        string
	compression Compression
	metrics     PipelineMetrics
}

var otlpCodec = codec.Client()

// Send implements Sender, classifying errors as the OTLP specification
// says: Canceled, DeadlineExceeded, Aborted, OutOfRange, Unavailable and
// DataLoss are retried, ResourceExhausted only with RetryInfo; the rest are
// permanent. Rejected points of a partial success are counted as lost.
func (s *otlpSender) Send(ctx context.Context, p *Payload) error {
	md := metadata.MD{}
	for k, v := range p.Header {
		md[strings.ToLower(k)] = v
	}
	ctx = metadata.NewOutgoingContext(ctx, md)
	opts := []grpc.CallOption{grpc.ForceCodecV2(otlpCodec)}
	if s.compression == CompressGzip {
		opts = append(opts, grpc.UseCompressor("gzip"))
	}
	var err error
	switch p.Kind {
	case "logs":
		var resp collogspb.ExportLogsServiceResponse
		if err = s.conn.Invoke(ctx, collogspb.LogsService_Export_FullMethodName, codec.Raw(p.Body), &resp, opts...); err == nil {
			if ps := resp.GetPartialSuccess(); ps.GetRejectedLogRecords() > 0 {
				s.metrics.Lost(s.name, "partial_success", int(ps.GetRejectedLogRecords()))
			}
			return nil
		}
	case "traces":
		var resp coltracepb.ExportTraceServiceResponse
		if err = s.conn.Invoke(ctx, coltracepb.TraceService_Export_FullMethodName, codec.Raw(p.Body), &resp, opts...); err == nil {
			if ps := resp.GetPartialSuccess(); ps.GetRejectedSpans() > 0 {
				s.metrics.Lost(s.name, "partial_success", int(ps.GetRejectedSpans()))
			}
			return nil
		}
	default:
		var resp colmetricspb.ExportMetricsServiceResponse
		if err = s.conn.Invoke(ctx, colmetricspb.MetricsService_Export_FullMethodName, codec.Raw(p.Body), &resp, opts...); err == nil {
			if ps := resp.GetPartialSuccess(); ps.GetRejectedDataPoints() > 0 {
				s.metrics.Lost(s.name, "partial_success", int(ps.GetRejectedDataPoints()))
			}
			return nil
		}
	}
	st := status.Convert(err)
	reason := "grpc_" + strings.ToLower(st.Code().String())
	var after time.Duration
	hasInfo := false
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			after, hasInfo = ri.GetRetryDelay().AsDuration(), true
		}
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Aborted, codes.OutOfRange, codes.Unavailable, codes.DataLoss:
	case codes.ResourceExhausted:
		if !hasInfo {
			return &PermanentError{Reason: reason, Err: err}
		}
	default:
		return &PermanentError{Reason: reason, Err: err}
	}
	if st.Code() == codes.DeadlineExceeded {
		reason = "timeout"
	}
	if hasInfo {
		return &RetryAfterError{After: after, Reason: reason, Err: err}
	}
	return &ReasonError{Reason: reason, Err: err}
}

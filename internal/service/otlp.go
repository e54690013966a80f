package service

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/DataDog/sketches-go/ddsketch/mapping"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/otlpwire"
	"github.com/aggd/aggd/internal/window"
)

// MaxCumulativeStreams bounds the cumulative OTLP streams whose last
// point the receiver remembers to compute deltas.
const MaxCumulativeStreams = 1_000_000

// DefaultDroppedResourceAttrs are the resource attributes that name one
// process rather than what it measures: as tags they would start new
// contexts every time an SDK restarts.
var DefaultDroppedResourceAttrs = []string{
	"service.instance.id",
	"process.pid", "process.parent_pid", "process.command", "process.command_line",
	"process.command_args", "process.executable.path", "process.creation.time",
	"container.id", "k8s.pod.uid",
}

// OTLPConfig configures the OTLP receiver.
type OTLPConfig struct {
	// ResourceTags, when not empty, lists the only resource attributes
	// that become tags. DropResourceTags lists resource attributes that
	// never do. An entry ending in ".*" matches every key with that
	// prefix. host.name becomes the host in any case.
	ResourceTags, DropResourceTags []string
}

// DefaultOTLPConfig keeps every resource attribute but
// DefaultDroppedResourceAttrs.
func DefaultOTLPConfig() OTLPConfig {
	return OTLPConfig{DropResourceTags: DefaultDroppedResourceAttrs}
}

// Validate reports an empty attribute pattern.
func (c OTLPConfig) Validate() error {
	for _, k := range slices.Concat(c.ResourceTags, c.DropResourceTags) {
		if k == "" || k == ".*" {
			return errors.New("service: an OTLP resource attribute pattern is empty")
		}
	}
	return nil
}

func matchAttr(patterns []string, key string) bool {
	for _, p := range patterns {
		if pre, ok := strings.CutSuffix(p, ".*"); ok {
			if strings.HasPrefix(key, pre+".") {
				return true
			}
		} else if p == key {
			return true
		}
	}
	return false
}

// resourceTag reports whether a resource attribute becomes a tag.
func (c *OTLPConfig) resourceTag(key string) bool {
	return (len(c.ResourceTags) == 0 || matchAttr(c.ResourceTags, key)) && !matchAttr(c.DropResourceTags, key)
}

// OTLP receives OTLP metrics and traces, over gRPC (Register) and HTTP
// (Handler), into the same ingestion as the aggd.v1 API. It is safe for
// concurrent use.
type OTLP struct {
	colmetricspb.UnimplementedMetricsServiceServer
	s      *Server
	cfg    OTLPConfig
	traces otlpTraces
	deltas *deltaTracker
}

type otlpTraces struct {
	coltracepb.UnimplementedTraceServiceServer
	r *OTLP
}

// NewOTLP returns s's OTLP receiver. Cumulative streams that started
// before now count from their first point seen.
func (s *Server) NewOTLP(cfg OTLPConfig) *OTLP {
	r := &OTLP{s: s, cfg: cfg, deltas: newDeltaTracker(uint64(time.Now().UnixNano()), MaxCumulativeStreams)}
	r.traces.r = r
	return r
}

// Register registers the OTLP/gRPC metrics and trace services on g, a
// server made with ServerOptions: the metrics service decodes requests
// without the generated types (otlpwire). The tenant comes from the
// call's metadata as for the aggd.v1 API.
func (r *OTLP) Register(g *grpc.Server) {
	desc := colmetricspb.MetricsService_ServiceDesc
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: desc.ServiceName,
		HandlerType: desc.HandlerType,
		Methods:     []grpc.MethodDesc{{MethodName: "Export", Handler: rawHandler(r, colmetricspb.MetricsService_Export_FullMethodName, r.exportRaw)}},
		Metadata:    desc.Metadata,
	}, r)
	tdesc := coltracepb.TraceService_ServiceDesc
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: tdesc.ServiceName,
		HandlerType: tdesc.HandlerType,
		Methods:     []grpc.MethodDesc{{MethodName: "Export", Handler: rawHandler(&r.traces, coltracepb.TraceService_Export_FullMethodName, r.traces.exportRaw)}},
		Metadata:    tdesc.Metadata,
	}, &r.traces)
}

var otlpFrames = sync.Pool{New: func() any { return &codec.Frame{} }}

// rawHandler is a unary handler that hands export the request's bytes.
func rawHandler[R any](srv any, method string, export func(context.Context, []byte) (R, error)) grpc.MethodHandler {
	return func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		f := otlpFrames.Get().(*codec.Frame)
		put := func() {
			if cap(f.Buf) <= 4<<20 { // do not pin one huge request's buffer
				otlpFrames.Put(f)
			}
		}
		if err := dec(f); err != nil {
			put()
			return nil, err
		}
		handler := func(ctx context.Context, _ any) (any, error) {
			defer put()
			return export(ctx, f.Buf)
		}
		if interceptor == nil {
			return handler(ctx, f)
		}
		return interceptor(ctx, f, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, handler)
	}
}

// RegisterOTLP registers an OTLP receiver with the default configuration
// on g.
func (s *Server) RegisterOTLP(g *grpc.Server) { s.NewOTLP(DefaultOTLPConfig()).Register(g) }

// anyString renders an attribute value as a tag value.
func anyString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_BytesValue:
		return hex.EncodeToString(x.BytesValue)
	case nil:
		return ""
	}
	return fmt.Sprint(v.GetValue())
}

// pointBatch converts one metrics request, as otlpwire hands it over,
// into samples; it is reused from request to request (otlpStates), so
// steady-state conversion allocates nothing: tags and names are built in
// arenas and referred to by views.
type pointBatch struct {
	r        *OTLP
	dec      otlpwire.Decoder
	b        window.Batch
	lim      codec.Limits
	rejected int
	firstErr string
	arena    []byte // sample keys
	strs     []byte // tags and names built here
	tags     []string
	hists    []window.HistPoint
	bins     bins
	key      []byte
	scratch  []uint64

	// The current resource and scope.
	host               string
	resTags, scopeTags int // tags[resStart:resTags] and tags[resStart:scopeTags]
	resStart           int
	resID, scopeID     []byte
	scopeHash          streamID // of scopeID, which starts each stream's key

	// rawID is the id of the current point's stream key with its
	// attributes as encoded (rawStreamKey), when PointRaw did not find
	// it: Point makes it an alias of the stream.
	rawID    streamID
	rawAlias bool
	// run holds the aliases of the run of points PrepareRaw got, next
	// the index of the point PointRaw gets next.
	run  []rawAlias
	next int
	// groups is scratch space of deltaTracker.lookup.
	groups []int32
}

var otlpStates = sync.Pool{New: func() any { return &pointBatch{} }}

func (r *OTLP) getBatch(tn *window.Tenant) *pointBatch {
	pb := otlpStates.Get().(*pointBatch)
	pb.r, pb.lim, pb.rejected, pb.firstErr = r, r.s.lim, 0, ""
	pb.b.Reset()
	pb.b.Tenant, pb.b.Now = tn, time.Now().UnixNano()
	pb.arena, pb.strs, pb.tags, pb.hists = pb.arena[:0], pb.strs[:0], pb.tags[:0], pb.hists[:0]
	pb.bins.vals, pb.bins.cnts = pb.bins.vals[:0], pb.bins.cnts[:0]
	return pb
}

func putBatch(pb *pointBatch) {
	if cap(pb.strs) > 4<<20 || cap(pb.arena) > 4<<20 {
		*pb = pointBatch{} // do not pin one huge request's memory
	}
	pb.r = nil
	otlpStates.Put(pb)
}

// str returns b's bytes appended to the batch's string arena as a view.
func (pb *pointBatch) view(start int) string {
	b := pb.strs[start:len(pb.strs):len(pb.strs)]
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// appendValue renders an attribute value as a tag value.
func appendValue(b []byte, v *otlpwire.Value) []byte {
	switch v.Kind {
	case otlpwire.KindString:
		return append(b, v.Str...)
	case otlpwire.KindInt:
		return strconv.AppendInt(b, v.Int, 10)
	case otlpwire.KindDouble:
		return strconv.AppendFloat(b, v.Double, 'g', -1, 64)
	case otlpwire.KindBool:
		return strconv.AppendBool(b, v.Int != 0)
	case otlpwire.KindBytes:
		return hex.AppendEncode(b, []byte(v.Str))
	case otlpwire.KindArray:
		var a commonpb.ArrayValue
		proto.Unmarshal(v.Raw, &a)
		return append(b, anyString(&commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &a}})...)
	case otlpwire.KindKVList:
		var l commonpb.KeyValueList
		proto.Unmarshal(v.Raw, &l)
		return append(b, anyString(&commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &l}})...)
	}
	return b
}

// addTags appends key:value tags of the attributes keep accepts (nil:
// all); host.name sets the host instead.
func (pb *pointBatch) addTags(host *string, attrs []otlpwire.KeyValue, keep func(string) bool) {
	for i := range attrs {
		kv := &attrs[i]
		if kv.Key == "host.name" && host != nil {
			start := len(pb.strs)
			pb.strs = appendValue(pb.strs, &kv.Value)
			*host = pb.view(start)
			continue
		}
		if keep != nil && !keep(kv.Key) {
			continue
		}
		start := len(pb.strs)
		pb.strs = append(pb.strs, kv.Key...)
		pb.strs = append(pb.strs, ':')
		pb.strs = appendValue(pb.strs, &kv.Value)
		pb.tags = append(pb.tags, pb.view(start))
	}
}

// appendAttrIdentity appends what identifies attrs as a set: each key and
// its typed value, in key order.
func (pb *pointBatch) appendAttrIdentity(b []byte, attrs []otlpwire.KeyValue) []byte {
	for i := 1; i < len(attrs); i++ { // usually sorted already: checked without copying them
		if attrs[i].Key < attrs[i-1].Key {
			// The decoder's slice, read only here and for tags.
			slices.SortFunc(attrs, func(a, b otlpwire.KeyValue) int { return strings.Compare(a.Key, b.Key) })
			break
		}
	}
	b = protowire.AppendVarint(b, uint64(len(attrs)))
	for i := range attrs {
		kv := &attrs[i]
		b = protowire.AppendString(b, kv.Key)
		v := &kv.Value
		b = append(b, byte(v.Kind))
		switch v.Kind {
		case otlpwire.KindString, otlpwire.KindBytes:
			b = protowire.AppendString(b, v.Str)
		case otlpwire.KindInt, otlpwire.KindBool:
			b = protowire.AppendVarint(b, uint64(v.Int))
		case otlpwire.KindDouble:
			b = protowire.AppendFixed64(b, math.Float64bits(v.Double))
		case otlpwire.KindArray, otlpwire.KindKVList:
			b = protowire.AppendBytes(b, v.Raw)
		}
	}
	return b
}

// add validates and appends one sample of the current data point; it
// reports false (and counts the point refused) on the first bad sample.
func (pb *pointBatch) add(s window.Sample) bool {
	if r, detail := pb.lim.Check(&s); r != window.Accepted {
		pb.refuse(r, detail)
		return false
	}
	pb.arena = s.Prepare(pb.b.Tenant, pb.arena)
	pb.b.Samples = append(pb.b.Samples, s)
	pb.b.Results = append(pb.b.Results, window.Accepted)
	return true
}

// addKnown appends the sample of a point of a sum stream whose context
// key is known: its name, host and tags are views into the key, made from
// the lengths of its parts the stream keeps where it has them. They
// passed the limits when the key was kept (keepKey), and the limits do
// not change, so only the value is checked.
func (pb *pointBatch) addKnown(sp *sumPoint, p *otlpwire.Point) {
	start := len(pb.tags)
	pb.b.Samples = append(pb.b.Samples, window.Sample{})
	s := &pb.b.Samples[len(pb.b.Samples)-1]
	s.Name, s.Host, pb.tags = window.SplitKeyLengths(sp.key, sp.st.parts[:], pb.tags)
	s.Tags = pb.tags[start:len(pb.tags):len(pb.tags)]
	s.Type, s.Value, s.SampleRate, s.Timestamp = window.TypeCount, sp.delta, 1, int64(p.Time)
	s.Key, s.Hash, s.Handle = unsafe.Slice(unsafe.StringData(sp.key), len(sp.key)), sp.hash, &sp.st.handle
	if r, detail := pb.lim.CheckValues(s); r != window.Accepted {
		pb.b.Samples = pb.b.Samples[:len(pb.b.Samples)-1]
		pb.refuse(r, detail)
		return
	}
	pb.b.Results = append(pb.b.Results, window.Accepted)
}

func (pb *pointBatch) refuse(r window.Reason, detail string) {
	pb.rejected++
	pb.b.Tenant.Rejected[r].Add(1)
	if pb.firstErr == "" {
		pb.firstErr = r.String() + ": " + detail
	}
}

// Resource implements otlpwire.MetricsHandler.
func (pb *pointBatch) Resource(res *otlpwire.Resource) {
	pb.host = ""
	pb.resStart = len(pb.tags)
	pb.addTags(&pb.host, res.Attrs, pb.r.cfg.resourceTag)
	pb.resTags = len(pb.tags)
	pb.resID = pb.appendAttrIdentity(protowire.AppendString(pb.resID[:0], pb.b.Tenant.ID), res.Attrs)
}

// Scope implements otlpwire.MetricsHandler.
func (pb *pointBatch) Scope(sc *otlpwire.Scope) {
	pb.tags = append(pb.tags, pb.tags[pb.resStart:pb.resTags]...)
	pb.resStart, pb.resTags = len(pb.tags)-(pb.resTags-pb.resStart), len(pb.tags)
	pb.addTags(nil, sc.Attrs, nil)
	pb.scopeTags = len(pb.tags)
	id := append(pb.scopeID[:0], pb.resID...)
	id = protowire.AppendString(id, sc.Name)
	id = protowire.AppendString(id, sc.Version)
	pb.scopeID = pb.appendAttrIdentity(id, sc.Attrs)
	pb.scopeHash = idOf(pb.scopeID)
}

// sample starts the sample of a point: its scope's tags and its own.
func (pb *pointBatch) sample(m *otlpwire.Metric, p *otlpwire.Point) window.Sample {
	start := len(pb.tags)
	pb.tags = append(pb.tags, pb.tags[pb.resStart:pb.scopeTags]...)
	host := pb.host
	pb.addTags(&host, p.Attrs, nil)
	return window.Sample{Name: m.Name, Host: host, Tags: pb.tags[start:len(pb.tags):len(pb.tags)], SampleRate: 1, Timestamp: int64(p.Time)}
}

// withTag returns s with one more tag.
func (pb *pointBatch) withTag(s window.Sample, k string, v float64) window.Sample {
	start := len(pb.tags)
	pb.tags = append(pb.tags, s.Tags...)
	at := len(pb.strs)
	pb.strs = append(pb.strs, k...)
	pb.strs = strconv.AppendFloat(append(pb.strs, ':'), v, 'g', -1, 64)
	pb.tags = append(pb.tags, pb.view(at))
	s.Tags = pb.tags[start:len(pb.tags):len(pb.tags)]
	return s
}

// name returns m's name with a suffix, built in the arena.
func (pb *pointBatch) name(m *otlpwire.Metric, suffix string) string {
	at := len(pb.strs)
	pb.strs = append(append(pb.strs, m.Name...), suffix...)
	return pb.view(at)
}

// Export implements the OTLP MetricsService with the generated types;
// the registered handler (Register) decodes without them.
func (r *OTLP) Export(ctx context.Context, req *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return r.exportRaw(ctx, b)
}

// exportRaw resolves the tenant, applies memory pressure, then converts
// and ingests an encoded ExportMetricsServiceRequest.
func (r *OTLP) exportRaw(ctx context.Context, req []byte) (*colmetricspb.ExportMetricsServiceResponse, error) {
	tn, err := r.s.tenants.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.s.admit(ctx, tn); err != nil {
		return nil, err
	}
	release, err := r.reserve(ctx, tn, req, false, false)
	if err != nil {
		return nil, err
	}
	defer release()
	return r.exportMetrics(ctx, tn, req)
}

// reserve reserves the memory converting an OTLP request body takes
// against the budget, as the aggd.v1 services do (Config.Memory),
// or returns the status that refuses it; release gives it back. The
// points or spans of a protobuf body are counted; a JSON body is taken to
// hold one per 16 bytes, the least a point takes in OTLP/JSON.
func (r *OTLP) reserve(ctx context.Context, tn *window.Tenant, body []byte, spans, json bool) (release func(), err error) {
	if r.s.room == nil {
		return func() {}, nil
	}
	var n int
	switch {
	case json:
		n = len(body) / 16
	case spans:
		n = otlpwire.CountSpans(body)
	default:
		n = otlpwire.CountPoints(body)
	}
	return r.s.reserveBytes(ctx, r.s.otlpCost(len(body), n, spans, json), len(body), tn.ID)
}

// exportMetrics converts and ingests the encoded metrics request of an
// admitted tenant.
func (r *OTLP) exportMetrics(ctx context.Context, tn *window.Tenant, req []byte) (*colmetricspb.ExportMetricsServiceResponse, error) {
	pb := r.getBatch(tn)
	defer putBatch(pb)
	if err := pb.dec.DecodeMetrics(req, pb); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := r.s.ingestConverted(ctx, tn, pb.b.Now, &pb.b, nil, nil, func() { r.s.ing.Ingest(&pb.b) }); err != nil {
		return nil, err
	}
	accepted := 0
	for _, res := range pb.b.Results {
		if res == window.Accepted {
			accepted++
		} else {
			pb.refuse(res, ingestDetail(res))
		}
	}
	tn.Accepted.Add(uint64(accepted))
	resp := &colmetricspb.ExportMetricsServiceResponse{}
	if pb.rejected > 0 {
		resp.PartialSuccess = &colmetricspb.ExportMetricsPartialSuccess{RejectedDataPoints: int64(pb.rejected), ErrorMessage: pb.firstErr}
	}
	return resp, nil
}

const noRecordedValue = uint32(metricspb.DataPointFlags_DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK)

// streamKey names a point's cumulative stream within its scope.
func (pb *pointBatch) streamKey(kind byte, m *otlpwire.Metric, attrs []otlpwire.KeyValue) []byte {
	k := binary.LittleEndian.AppendUint64(pb.key[:0], pb.scopeHash[0])
	k = binary.LittleEndian.AppendUint64(k, pb.scopeHash[1])
	k = append(k, kind)
	k = protowire.AppendString(k, m.Name)
	k = protowire.AppendString(k, m.Unit)
	k = pb.appendAttrIdentity(k, attrs)
	pb.key = k
	return k
}

// sumKind is the stream kind of a cumulative sum point: its value type is
// part of its stream's identity, as in the Collector's
// tracking.MetricIdentity (MetricValueType), so that points of one name
// and attributes sent as integers and as doubles are two streams.
func sumKind(p *otlpwire.Point) byte {
	if p.IsInt {
		return 'i'
	}
	return 's'
}

// rawStreamKey names a monotonic cumulative sum's stream within its scope
// by its value type and its attributes' encodings, as the point carries
// them: the same attributes encoded otherwise (another order, say) are
// another key of the same stream (deltaTracker.alias).
func (pb *pointBatch) rawStreamKey(m *otlpwire.Metric, p *otlpwire.Point) []byte {
	k := pb.rawStreamHead(m, sumKind(p))
	for _, f := range p.AttrFields {
		k = protowire.AppendBytes(k, f)
	}
	pb.key = k
	return k
}

// rawStreamHead is the start of a raw stream key: all but the attributes.
func (pb *pointBatch) rawStreamHead(m *otlpwire.Metric, kind byte) []byte {
	k := binary.LittleEndian.AppendUint64(pb.key[:0], pb.scopeHash[0])
	k = binary.LittleEndian.AppendUint64(k, pb.scopeHash[1])
	k = append(k, kind)
	k = protowire.AppendString(k, m.Name)
	k = protowire.AppendString(k, m.Unit)
	pb.key = k
	return k
}

// spanID names a monotonic cumulative sum's stream within its scope, as
// rawStreamKey's id does, when the point's attributes are one span of its
// encoding (otlpwire.Point.AttrSpan): the hash of the span, read where it
// is, combined with head, the id of the rest of the key (rawStreamHead).
// Like rawStreamKey's, it is an alias: other encodings of the same
// attributes have other ids.
func spanID(head streamID, span []byte) streamID {
	return streamID{maphash.Bytes(deltaSeeds[0], span) ^ head[0], maphash.Bytes(deltaSeeds[1], span) ^ head[1]}
}

// spanHead is the head a run's spanIDs combine with: the id of
// rawStreamHead's bytes, mixed, so that a point whose attributes' span
// holds another's head bytes, and whose head bytes are that point's span,
// does not get that point's id (both are hashed alike).
func spanHead(key []byte) streamID {
	id := idOf(key)
	return streamID{bits.RotateLeft64(id[0]*0x9e3779b97f4a7c15, 29), bits.RotateLeft64(id[1]*0xc2b2ae3d27d4eb4f, 31)}
}

// PrepareRaw implements otlpwire.RawPointHandler: it looks the streams of
// a run of monotonic cumulative sum points up by their attributes'
// encodings, all at once (deltaTracker.lookup).
func (pb *pointBatch) PrepareRaw(m *otlpwire.Metric, run []otlpwire.Point) {
	pb.run, pb.next = pb.run[:0], 0
	if m.Kind != otlpwire.MetricSum || m.Temporality != otlpwire.TemporalityCumulative || !m.Monotonic {
		return
	}
	var heads [2]streamID // rawStreamHead's ids, of double and int points
	var made [2]bool
	for i := range run {
		p := &run[i]
		if len(p.AttrFields) > 0 && p.AttrSpan == nil {
			pb.run = append(pb.run, rawAlias{id: idOf(pb.rawStreamKey(m, p))})
			continue
		}
		k := 0
		if p.IsInt {
			k = 1
		}
		if !made[k] {
			heads[k], made[k] = spanHead(pb.rawStreamHead(m, sumKind(p))), true
		}
		pb.run = append(pb.run, rawAlias{id: spanID(heads[k], p.AttrSpan)})
	}
	pb.groups = pb.r.deltas.lookup(pb.run, pb.groups)
}

// PointRaw implements otlpwire.RawPointHandler: a point of a monotonic
// cumulative sum whose stream an earlier point with the same attribute
// encodings named (deltaTracker.sumRaw) becomes its sample straight from
// the stream, its attributes neither decoded nor made tags again. Those
// encodings decoded before, so taking the point hides no malformed
// request.
func (pb *pointBatch) PointRaw(m *otlpwire.Metric, p *otlpwire.Point) bool {
	pb.rawAlias = false
	if pb.next >= len(pb.run) {
		return false
	}
	a := &pb.run[pb.next]
	pb.next++
	skip := p.Flags&noRecordedValue != 0 || !finite(p.Value)
	sp, ok := pb.r.deltas.sumRaw(a.st, p.Start, p.Time, p.Value, skip)
	if !ok {
		pb.rawID, pb.rawAlias = a.id, true
		return false
	}
	switch {
	case p.Flags&noRecordedValue != 0:
	case skip:
		pb.refuse(window.ReasonInvalidValue, fmt.Sprintf("value %v is not finite", p.Value))
	case pb.tracked(sp.res):
		pb.addKnown(&sp, p)
	}
	return true
}

// tracked reports whether a cumulative point yields a delta, refusing it
// when the stream cannot be tracked.
func (pb *pointBatch) tracked(res deltaResult) bool {
	if res == deltaFull {
		pb.refuse(window.ReasonTenantLimit, "too many cumulative streams to track")
	}
	return res == deltaOK
}

// Point implements otlpwire.MetricsHandler: it converts one data point.
// Points flagged NO_RECORDED_VALUE (staleness markers) are skipped.
func (pb *pointBatch) Point(m *otlpwire.Metric, p *otlpwire.Point) {
	r := pb.r
	if m.Kind == otlpwire.MetricNone {
		pb.refuse(window.ReasonUnsupported, fmt.Sprintf("metric %s has no supported data", m.Name))
		return
	}
	if p.Flags&noRecordedValue != 0 {
		return
	}
	cum := m.Temporality == otlpwire.TemporalityCumulative
	switch m.Kind {
	case otlpwire.MetricGauge:
		s := pb.sample(m, p)
		s.Type, s.Value = window.TypeGauge, p.Value
		pb.add(s)
	case otlpwire.MetricSum:
		switch {
		case cum && !m.Monotonic: // an up-down counter's level
			s := pb.sample(m, p)
			s.Type, s.Value = window.TypeGauge, p.Value
			pb.add(s)
		case cum:
			if !finite(p.Value) {
				pb.refuse(window.ReasonInvalidValue, fmt.Sprintf("value %v is not finite", p.Value))
				return
			}
			id := idOf(pb.streamKey(sumKind(p), m, p.Attrs))
			sp := r.deltas.sum(id, p.Start, p.Time, p.Value)
			if sp.st != nil && pb.rawAlias {
				r.deltas.alias(pb.rawID, sp.st)
			}
			if !pb.tracked(sp.res) {
				return
			}
			if sp.key != "" {
				pb.addKnown(&sp, p)
				return
			}
			s := pb.sample(m, p)
			s.Type, s.Value, s.Handle = window.TypeCount, sp.delta, &sp.st.handle
			if pb.add(s) {
				added := &pb.b.Samples[len(pb.b.Samples)-1]
				r.deltas.keepKey(id, sp.st, added.Key, added.Hash)
			}
		default:
			s := pb.sample(m, p)
			s.Type, s.Value = window.TypeCount, p.Value
			pb.add(s)
		}
	case otlpwire.MetricHistogram:
		if detail := checkExplicit(p); detail != "" {
			pb.refuse(window.ReasonMalformed, detail)
			return
		}
		h := histInput{bounds: p.Bounds, counts: p.Counts, count: p.Count, sum: p.Sum, hasSum: p.HasSum}
		var handle *window.Handle
		if cum {
			delta, res := r.deltas.histogram(pb.streamKey('h', m, p.Attrs), p.Start, p.Time, p.Bounds, p.Counts, p.Count, p.Sum, pb.scratch)
			if !pb.tracked(res) {
				return
			}
			pb.scratch = delta.counts[:0]
			h.counts, h.count, h.sum, handle = delta.counts, delta.count, delta.sum, delta.handle
			// A delta's extremes are unknown: the Collector removes them.
		} else {
			if p.HasMin {
				h.min = &p.Min
			}
			if p.HasMax {
				h.max = &p.Max
			}
		}
		s := pb.sample(m, p)
		s.Handle = handle
		pb.histogram(s, &h)
	case otlpwire.MetricExponentialHistogram:
		if p.Scale < -10 || p.Scale > 20 {
			pb.refuse(window.ReasonInvalidValue, fmt.Sprintf("exponential histogram scale %d is outside [-10, 20]", p.Scale))
			return
		}
		e := expPoint{scale: p.Scale, zeroThreshold: p.ZeroThreshold, zeroCount: p.ZeroCount, count: p.Count, sum: p.Sum,
			pos: expBuckets{p.Positive.Offset, p.Positive.Counts}, neg: expBuckets{p.Negative.Offset, p.Negative.Counts}}
		var pmin, pmax *float64
		if p.HasMin {
			pmin = &p.Min
		}
		if p.HasMax {
			pmax = &p.Max
		}
		s := pb.sample(m, p)
		if cum {
			var res deltaResult
			e, s.Handle, res = r.deltas.exponential(pb.streamKey('e', m, p.Attrs), p.Start, p.Time, e)
			if !pb.tracked(res) {
				return
			}
			pmin, pmax = nil, nil
		}
		pb.exponential(s, &e, p.HasSum, pmin, pmax)
	case otlpwire.MetricSummary:
		s := pb.sample(m, p)
		dc, ds, res := r.deltas.summary(pb.streamKey('q', m, p.Attrs), p.Start, p.Time, p.Count, p.Sum)
		if pb.tracked(res) {
			c, sum := s, s
			c.Name, c.Type, c.Value = pb.name(m, ".count"), window.TypeCount, float64(dc)
			sum.Name, sum.Type, sum.Value = pb.name(m, ".sum"), window.TypeCount, ds
			if !pb.add(c) || !pb.add(sum) {
				return
			}
		}
		for _, q := range p.Quantiles {
			g := pb.withTag(s, "quantile", q.Quantile)
			g.Type, g.Value = window.TypeGauge, q.Value
			pb.add(g)
		}
	}
}

// checkExplicit reports what makes an explicit-bucket histogram point
// malformed, or "".
func checkExplicit(p *otlpwire.Point) string {
	b := p.Bounds
	switch {
	case len(p.Counts) == 0 && len(b) == 0:
		return ""
	case len(p.Counts) != len(b)+1:
		return fmt.Sprintf("%d bucket counts for %d explicit bounds, want one more count than bounds", len(p.Counts), len(b))
	}
	for i, v := range b {
		if !finite(v) || (i > 0 && !(v > b[i-1])) {
			return "explicit bounds must be finite and increasing"
		}
	}
	var n uint64
	for _, c := range p.Counts {
		n += c
	}
	if n != p.Count {
		return fmt.Sprintf("bucket counts add up to %d, count is %d", n, p.Count)
	}
	return ""
}

// histInput is a delta explicit-bucket histogram point.
type histInput struct {
	bounds   []float64
	counts   []uint64
	count    uint64
	sum      float64
	hasSum   bool
	min, max *float64
}

// sketchMapping is the index mapping of aggd's sketches: spreading a
// bucket over its bins puts each share at a bin's own value.
var sketchMapping, _ = mapping.NewLogarithmicMapping(window.RelativeAccuracy)

// spread adds count c (a whole number) spread evenly over [lo, hi] to h's
// bins: each sketch bin the interval crosses gets the share of its width,
// in whole counts.
func spread(h *bins, lo, hi, c float64) {
	switch {
	case c == 0:
	case !(hi > lo):
		h.add(lo, c)
	case lo < 0 && hi > 0:
		neg := math.Round(c * -lo / (hi - lo))
		spread(h, lo, 0, neg)
		spread(h, 0, hi, c-neg)
	case hi <= 0:
		n := len(h.vals)
		spreadPositive(h, -hi, -lo, c)
		for i := n; i < len(h.vals); i++ {
			h.vals[i] = -h.vals[i]
		}
	default:
		spreadPositive(h, lo, hi, c)
	}
}

// spreadPositive spreads c over [lo, hi], 0 ≤ lo < hi. The part below a
// millionth of hi goes to the lowest bin, which bounds the bins touched.
// Each bin gets the rounded running share less what earlier bins got, so
// the counts add up to c.
func spreadPositive(h *bins, lo, hi, c float64) {
	m := sketchMapping
	a := max(lo, hi*1e-6, m.MinIndexableValue())
	k0, k1 := m.Index(a), m.Index(hi)
	given := 0.0
	for k := k0; k <= k1; k++ {
		pl, ph := max(m.LowerBound(k), lo), min(m.LowerBound(k+1), hi)
		if k == k0 {
			pl = lo
		}
		if k == k1 {
			ph = hi
		}
		if !(ph > pl) {
			continue
		}
		n := math.Round(c*(ph-lo)/(hi-lo)) - given
		if k == k1 {
			n = c - given
		}
		if n <= 0 {
			continue
		}
		given += n
		h.add(min(max(m.Value(k), pl), ph), n)
	}
}

// histogram adds an explicit-bucket histogram point as one distribution
// sample: each bucket's count interpolated across the Agent sketch keys
// between its bounds as the Agent's InsertInterpolate does, so that the
// sketch's bins are the ones Datadog's OTLP mapping (getSketchBuckets)
// builds, with the point's exact count, sum, minimum and maximum. An
// open-ended bucket takes its finite bound for the infinite one, as
// getSketchBuckets does; where the point has a minimum or maximum, aggd
// first narrows every bucket to them, which getSketchBuckets does not.
func (pb *pointBatch) histogram(s window.Sample, in *histInput) {
	if in.count == 0 {
		return
	}
	h, start := pb.newHist(float64(in.count))
	b := in.bounds
	if len(in.counts) == 0 { // count and sum only
		avg := in.sum / float64(in.count)
		spread(&pb.bins, avg, avg, float64(in.count))
	}
	for i, c := range in.counts {
		if c == 0 {
			continue
		}
		lo, hi := math.Inf(-1), math.Inf(1)
		if i > 0 {
			lo = b[i-1]
		}
		if i < len(b) {
			hi = b[i]
		}
		if in.min != nil {
			lo, hi = max(lo, *in.min), max(hi, *in.min)
		}
		if in.max != nil {
			lo, hi = min(lo, *in.max), min(hi, *in.max)
		}
		switch {
		case math.IsInf(lo, -1) && math.IsInf(hi, 1): // one bucket, no bounds: at the mean
			lo = in.sum / float64(in.count)
			hi = lo
		case math.IsInf(hi, 1):
			hi = lo
		case math.IsInf(lo, -1):
			lo = hi
		}
		h.Min, h.Max = min(h.Min, lo), max(h.Max, hi)
		window.AgentInterpolate(lo, hi, c, func(v float64, n uint64) { pb.bins.add(v, float64(n)) })
	}
	pb.endHist(h, start)
	h.Sum = in.sum
	if !in.hasSum || !finite(in.sum) {
		h.Sum = 0
		for i, v := range h.Values {
			h.Sum += v * h.Counts[i]
		}
	}
	if in.min != nil {
		h.Min = *in.min
	}
	if in.max != nil {
		h.Max = *in.max
	}
	pb.addHist(s, h)
}

// bins are the values and counts of histogram points being built.
type bins struct{ vals, cnts []float64 }

func (b *bins) add(v, c float64) {
	b.vals, b.cnts = append(b.vals, v), append(b.cnts, c)
}

// newHist starts a histogram point whose bins are appended to pb.bins;
// endHist takes them in.
func (pb *pointBatch) newHist(count float64) (*window.HistPoint, int) {
	pb.hists = append(pb.hists, window.HistPoint{Count: count, Min: math.Inf(1), Max: math.Inf(-1)})
	return &pb.hists[len(pb.hists)-1], len(pb.bins.vals)
}

func (pb *pointBatch) endHist(h *window.HistPoint, start int) {
	n := len(pb.bins.vals)
	h.Values, h.Counts = pb.bins.vals[start:n:n], pb.bins.cnts[start:n:n]
}

func (pb *pointBatch) addHist(s window.Sample, h *window.HistPoint) {
	if !finite(h.Sum) || !finite(h.Min) || !finite(h.Max) || h.Min > h.Max {
		pb.refuse(window.ReasonInvalidValue, "histogram sum, min and max must be finite, min at most max")
		return
	}
	s.Type, s.Hist = window.TypeDistribution, h
	pb.add(s)
}

// exponential adds an exponential histogram point as one distribution
// sample: each bucket's count spread over its bounds, the zero bucket's at
// zero, with the point's exact count and sum, and its minimum and maximum
// when set (else the bounds of its outer buckets).
func (pb *pointBatch) exponential(s window.Sample, p *expPoint, hasSum bool, pmin, pmax *float64) {
	if p.count == 0 {
		return
	}
	h, start := pb.newHist(float64(p.count))
	base := math.Exp2(math.Ldexp(1, -int(p.scale)))
	var n uint64
	bad := false
	add := func(lo, hi float64, c uint64) {
		if c == 0 {
			return
		}
		if !finite(lo) || !finite(hi) {
			bad = true
			return
		}
		if pmin != nil {
			lo, hi = max(lo, *pmin), max(hi, *pmin)
		}
		if pmax != nil {
			lo, hi = min(lo, *pmax), min(hi, *pmax)
		}
		n += c
		h.Min, h.Max = min(h.Min, lo), max(h.Max, hi)
		spread(&pb.bins, lo, hi, float64(c))
	}
	add(0, 0, p.zeroCount)
	for j, c := range p.pos.counts {
		i := float64(int(p.pos.offset) + j)
		add(math.Pow(base, i), math.Pow(base, i+1), c)
	}
	for j, c := range p.neg.counts {
		i := float64(int(p.neg.offset) + j)
		add(-math.Pow(base, i+1), -math.Pow(base, i), c)
	}
	if bad {
		pb.refuse(window.ReasonInvalidValue, "exponential histogram bucket bounds overflow")
		return
	}
	if n != p.count {
		pb.refuse(window.ReasonMalformed, fmt.Sprintf("exponential histogram buckets add up to %d, count is %d", n, p.count))
		return
	}
	pb.endHist(h, start)
	h.Sum = p.sum
	if !hasSum {
		h.Sum = 0
		for i, v := range h.Values {
			h.Sum += v * h.Counts[i]
		}
	}
	if pmin != nil {
		h.Min = *pmin
	}
	if pmax != nil {
		h.Max = *pmax
	}
	pb.addHist(s, h)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

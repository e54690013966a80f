// Command aggload is aggd's load generator. It streams pre-encoded batches
// over any number of concurrent streams and reports samples per second sent
// and acked and the ack latency distribution. Every run is bounded by
// -duration and, optionally, -batches.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	gproto "google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/cputime"
)

type options struct {
	addr     string
	streams  int
	batch    int
	contexts int
	tenants  int
	tags     int
	mix      string
	duration time.Duration
	batches  int64
	inflight int
	rate     float64
	token    string
	seed     uint64
	// spansPerTrace > 0 sends spans instead of samples: each batch holds
	// batch spans of batch/spansPerTrace new traces.
	spansPerTrace int
	// dogstatsd, if set, sends DogStatsD lines over UDP to this address
	// instead of using gRPC; admin is aggd's admin address for the loss.
	dogstatsd, admin string
	packet           int
	// baseline sends to a naive server this process starts instead of
	// -addr; pairs > 0 alternates runs against -addr and that server.
	baseline bool
	pairs    int
	// baselineAddr is a baseline served by another process, for -pairs.
	baselineAddr string
	// refs sends samples by series reference: each stream declares a
	// context (full name and reference) the first time it sends it.
	refs bool
	// phases, when positive, is aggd's flush interval: the report adds
	// the ack latency by second of the interval each batch was sent in
	// (wall clock, as aggd's ticks are aligned to it), so that the
	// seconds of a flush show beside the others.
	phases time.Duration
	// serverPID, when positive, is the process the run sends to (aggd's,
	// or -serve-baseline's): its CPU time over the run is read from /proc
	// and reported per item acked. With -pairs, pid and baselinePID are
	// aggd's and the baseline's.
	serverPID, pid, baselinePID int
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:8127", "aggd gRPC address")
	flag.IntVar(&o.streams, "streams", 4, "concurrent streams")
	flag.IntVar(&o.batch, "batch", 500, "samples per batch")
	flag.IntVar(&o.contexts, "contexts", 100_000, "distinct contexts per tenant")
	flag.IntVar(&o.tenants, "tenants", 1, "tenants (x-tenant-id load-N), spread over the streams")
	flag.IntVar(&o.tags, "tags", 4, "tags per sample")
	flag.StringVar(&o.mix, "mix", "gauge:30,count:40,histogram:10,distribution:10,set:10", "metric type weights")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long to send (at most 10m)")
	flag.Int64Var(&o.batches, "batches", 0, "stop each stream after this many batches (0: duration only)")
	flag.IntVar(&o.inflight, "inflight", 8, "unacked batches per stream")
	flag.Float64Var(&o.rate, "rate", 0, "target samples per second over all streams (0: as fast as acks allow)")
	flag.StringVar(&o.token, "token", "", "bearer token (sets the tenant; -tenants is then ignored)")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the workload")
	flag.StringVar(&o.dogstatsd, "dogstatsd", "", "send DogStatsD lines over UDP to this address instead of gRPC")
	flag.StringVar(&o.admin, "admin", "", "aggd's admin address, to count the DogStatsD lines it read (loss)")
	flag.IntVar(&o.packet, "packet", 1432, "DogStatsD datagram payload size, bytes")
	flag.IntVar(&o.spansPerTrace, "spans-per-trace", 0, "send spans, this many per trace, instead of samples (every batch carries new traces)")
	flag.BoolVar(&o.baseline, "baseline", false, "send to a naive baseline server started in this process (standard codec, no aggregation) instead of -addr")
	flag.IntVar(&o.pairs, "pairs", 0, "run this many interleaved pairs, -addr then the baseline, and print the ratios")
	flag.StringVar(&o.baselineAddr, "baseline-addr", "", "with -pairs, the baseline at this address (aggload -serve-baseline) instead of one in this process")
	serveBaseline := flag.String("serve-baseline", "", "only serve the naive baseline on this loopback address, for -duration or until interrupted")
	flag.BoolVar(&o.refs, "refs", false, "send samples by series reference, each context declared once per stream, instead of with full names")
	cpuProfile := flag.String("cpuprofile", "", "write aggload's own CPU profile to this file")
	flag.IntVar(&o.pid, "pid", 0, "aggd's process id: report its CPU per item acked over each run (from /proc)")
	flag.IntVar(&o.baselinePID, "baseline-pid", 0, "with -pairs and -baseline-addr, the baseline's process id: report its CPU per item acked too")
	flag.DurationVar(&o.phases, "phases", 0, "aggd's flush interval: also report ack latency by second of the interval a batch was sent in (0: off)")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "aggload:", err)
			os.Exit(1)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if o.dogstatsd != "" {
		if o.duration <= 0 || o.duration > 10*time.Minute || o.streams < 1 || o.contexts < 1 || o.tags < 1 || o.packet < 64 {
			fmt.Fprintln(os.Stderr, "aggload: bad options")
			os.Exit(2)
		}
		if err := runDogStatsD(ctx, o, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "aggload:", err)
			os.Exit(1)
		}
		return
	}
	if *serveBaseline != "" {
		addr, stopBaseline, err := startBaseline(*serveBaseline)
		if err != nil {
			fmt.Fprintln(os.Stderr, "aggload:", err)
			os.Exit(1)
		}
		fmt.Printf("baseline serving on %s (pid %d)\n", addr, os.Getpid())
		select {
		case <-ctx.Done():
		case <-time.After(o.duration):
		}
		stopBaseline()
		return
	}
	if o.pairs > 0 {
		if _, err := runPairs(ctx, o, o.pairs, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "aggload:", err)
			os.Exit(1)
		}
		return
	}
	if !o.baseline {
		o.serverPID = o.pid
	}
	if o.baseline {
		addr, stopBaseline, err := startBaseline("127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, "aggload:", err)
			os.Exit(1)
		}
		defer stopBaseline()
		o.addr = addr
	}
	r, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "aggload:", err)
		os.Exit(1)
	}
	r.print(os.Stdout, o)
}

var types = map[string]aggdv1.MetricType{
	"gauge": aggdv1.MetricType_METRIC_TYPE_GAUGE, "count": aggdv1.MetricType_METRIC_TYPE_COUNT,
	"rate": aggdv1.MetricType_METRIC_TYPE_RATE, "monotonic_count": aggdv1.MetricType_METRIC_TYPE_MONOTONIC_COUNT,
	"histogram": aggdv1.MetricType_METRIC_TYPE_HISTOGRAM, "distribution": aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION,
	"set": aggdv1.MetricType_METRIC_TYPE_SET, "timing": aggdv1.MetricType_METRIC_TYPE_TIMING,
}

func parseMix(s string) ([]aggdv1.MetricType, error) {
	var out []aggdv1.MetricType
	for _, part := range strings.Split(s, ",") {
		name, w, ok := strings.Cut(strings.TrimSpace(part), ":")
		typ, known := types[name]
		n, err := strconv.Atoi(w)
		if !ok || !known || err != nil || n < 0 {
			return nil, fmt.Errorf("mix entry %q is not type:weight", part)
		}
		for range n {
			out = append(out, typ)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("mix has no weight")
	}
	return out, nil
}

// template is a pre-encoded batch and where its trace ids are: sending
// writes a fresh counter into the first 8 bytes of each, so that every
// batch carries new traces, and the time of sending into each span's
// start, so that its stats go to the bucket open now, as a traced
// service's would. With -refs, declare is the batch that declares its
// contexts' series references, sent first on each stream, and data
// refers to them.
type template struct {
	data    []byte
	declare []byte
	traces  []int // offsets of trace id bytes
	starts  []int // offsets of the spans' start_unix_nano varints
}

// stamp writes into body, a copy of t's span batch, fresh as the first 8
// bytes of every trace id and start as every span's start.
func (t template) stamp(body []byte, fresh uint64, start time.Time) {
	for _, off := range t.traces {
		binary.BigEndian.PutUint64(body[off:], fresh)
	}
	for _, off := range t.starts {
		binary.PutUvarint(body[off:], uint64(start.UnixNano()))
	}
}

// spanStartBack is how long before the batch is sent its spans start, so
// that their ends (start plus at most 50 ms) are not in the future.
const spanStartBack = 50 * time.Millisecond

// encodeSpanBatches pre-encodes span batches whose contexts (service,
// operation, resource, kind, status) cycle through o.contexts.
func encodeSpanBatches(o options) ([]template, error) {
	rng := rand.New(rand.NewPCG(o.seed, 0))
	start := time.Now().UnixNano()
	var out []template
	nb := max(1, o.contexts/o.batch)
	for k := range nb {
		b := &aggdv1.Batch{}
		var ids [][]byte
		for i := range o.batch {
			tr, pos := i/o.spansPerTrace, i%o.spansPerTrace
			id := make([]byte, 16)
			binary.BigEndian.PutUint64(id[8:], uint64(k*o.batch+tr+1))
			if pos == 0 {
				ids = append(ids, id)
			}
			c := k*o.batch + i
			s := &aggdv1.Span{TraceId: id, SpanId: []byte{0, 0, 0, 0, 0, 0, byte(pos >> 8), byte(pos + 1)},
				Service: fmt.Sprintf("svc-%d", c%10), Name: "http.request", Resource: fmt.Sprintf("/r/%d", c%(o.contexts/10+1)),
				Kind: aggdv1.SpanKind_SPAN_KIND_SERVER, StartUnixNano: start, DurationNano: int64(rng.IntN(50_000_000)), HttpStatusCode: 200}
			if pos > 0 {
				s.ParentSpanId = []byte{0, 0, 0, 0, 0, 0, 0, 1}
				s.Kind = aggdv1.SpanKind_SPAN_KIND_CLIENT
			}
			if rng.IntN(50) == 0 {
				s.Error, s.HttpStatusCode = true, 500
			}
			b.Spans = append(b.Spans, s)
		}
		data, err := gproto.Marshal(b)
		if err != nil {
			return nil, err
		}
		t := template{data: data}
		for _, id := range ids {
			t.traces = appendOffsets(t.traces, data, id, 0)
		}
		// start_unix_nano (field 8, a varint): a time of this century
		// takes 9 bytes, so any other such time fits in its place.
		field := protowire.AppendVarint(protowire.AppendTag(nil, 8, protowire.VarintType), uint64(start))
		t.starts = appendOffsets(t.starts, data, field, 1)
		if len(t.starts) != len(b.Spans) {
			return nil, fmt.Errorf("found %d span starts in a batch of %d spans", len(t.starts), len(b.Spans))
		}
		out = append(out, t)
	}
	return out, nil
}

// appendOffsets appends to offs the offset, plus skip, of every
// occurrence of pattern in data.
func appendOffsets(offs []int, data, pattern []byte, skip int) []int {
	for from := 0; ; {
		i := bytes.Index(data[from:], pattern)
		if i < 0 {
			return offs
		}
		offs = append(offs, from+i+skip)
		from += i + len(pattern)
	}
}

// encodeBatches pre-encodes batches covering every context once: with
// o.refs, each as the batch declaring its contexts' series references
// (context i is reference i+1) and the batch using them.
func encodeBatches(o options) ([]template, error) {
	mix, err := parseMix(o.mix)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(o.seed, 0))
	var out []template
	for start := 0; start < o.contexts; start += o.batch {
		b, byRef := &aggdv1.Batch{}, &aggdv1.Batch{}
		for i := start; i < start+o.batch; i++ {
			c := i % o.contexts
			s := &aggdv1.Sample{
				Name: fmt.Sprintf("load.metric.%d", c%500), Type: mix[c%len(mix)],
				Value: float64(rng.IntN(1000)), Host: fmt.Sprintf("host-%d", c%50),
			}
			s.Tags = append(s.Tags, fmt.Sprintf("ctx:%d", c/500))
			for t := 1; t < o.tags; t++ {
				s.Tags = append(s.Tags, fmt.Sprintf("tag%d:value%d", t, c%(t*7+3)))
			}
			if s.Type == aggdv1.MetricType_METRIC_TYPE_SET {
				s.SetMember = "user-" + strconv.Itoa(rng.IntN(100))
			}
			if o.refs {
				s.SeriesRef = uint32(c + 1)
				byRef.Samples = append(byRef.Samples, &aggdv1.Sample{SeriesRef: s.SeriesRef, Value: s.Value, SetMember: s.SetMember})
			}
			b.Samples = append(b.Samples, s)
		}
		data, err := gproto.Marshal(b)
		if err != nil {
			return nil, err
		}
		t := template{data: data}
		if o.refs {
			t.declare = data
			if t.data, err = gproto.Marshal(byRef); err != nil {
				return nil, err
			}
		}
		out = append(out, t)
	}
	return out, nil
}

type result struct {
	elapsed           time.Duration
	sentSamples       int64
	accepted, rejects int64
	latencies         []time.Duration
	sent              []int64 // unix nanoseconds each latency's batch was sent at
	firstReject       string
	// cpu is the CPU this process used during the run: the generator's
	// cost, which shares the machine with the server measured (and the
	// baseline's too, when it is served in this process).
	cpu time.Duration
	// serverCPU is the CPU the server process used during the run, when
	// options.serverPID names it.
	serverCPU time.Duration
}

func run(ctx context.Context, o options) (*result, error) {
	switch {
	case o.duration <= 0 || o.duration > 10*time.Minute:
		return nil, errors.New("-duration must be in (0, 10m]")
	case o.streams < 1 || o.batch < 1 || o.contexts < 1 || o.tenants < 1 || o.inflight < 1 || o.tags < 1:
		return nil, errors.New("-streams, -batch, -contexts, -tenants, -inflight and -tags must be positive")
	case o.refs && (o.spansPerTrace > 0 || o.contexts+o.batch > 1<<20):
		return nil, errors.New("-refs sends samples of at most 1048576 contexts (references), not spans")
	}
	var templates []template
	if o.spansPerTrace > 0 {
		if o.spansPerTrace > o.batch {
			return nil, errors.New("-spans-per-trace must not exceed -batch")
		}
		ts, err := encodeSpanBatches(o)
		if err != nil {
			return nil, err
		}
		templates = ts
	} else {
		ts, err := encodeBatches(o)
		if err != nil {
			return nil, err
		}
		templates = ts
	}
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(codec.Client())))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := aggdv1.NewAggregatorServiceClient(conn)
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()

	var (
		res     result
		mu      sync.Mutex
		wg      sync.WaitGroup
		errOnce sync.Once
		runErr  error
	)
	var interval time.Duration // per stream, between batches
	if o.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(o.batch) * float64(o.streams) / o.rate)
	}
	var server0 time.Duration
	if o.serverPID > 0 {
		if server0, err = cputime.Of(o.serverPID); err != nil {
			return nil, fmt.Errorf("the server's CPU time: %w", err)
		}
	}
	start, cpu0 := time.Now(), cputime.Process()
	for s := range o.streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := stream(ctx, client, o, s, templates, interval)
			if err != nil && ctx.Err() == nil {
				errOnce.Do(func() { runErr = err; cancel() })
			}
			mu.Lock()
			res.sentSamples += r.sentSamples
			res.accepted += r.accepted
			res.rejects += r.rejects
			res.latencies = append(res.latencies, r.latencies...)
			res.sent = append(res.sent, r.sent...)
			if res.firstReject == "" {
				res.firstReject = r.firstReject
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed, res.cpu = time.Since(start), cputime.Process()-cpu0
	if o.serverPID > 0 {
		server1, err := cputime.Of(o.serverPID)
		if err != nil {
			return &res, fmt.Errorf("the server's CPU time: %w", err)
		}
		res.serverCPU = server1 - server0
	}
	return &res, runErr
}

// stream runs one stream until ctx ends or it has sent o.batches batches,
// then waits for the outstanding acks.
func stream(ctx context.Context, client aggdv1.AggregatorServiceClient, o options, id int, batches []template, interval time.Duration) (result, error) {
	var r result
	md := metadata.Pairs("x-tenant-id", fmt.Sprintf("load-%d", id%o.tenants))
	if o.token != "" {
		md = metadata.Pairs("authorization", "Bearer "+o.token)
	}
	// The stream outlives ctx's deadline long enough to collect acks.
	sctx, scancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), md))
	defer scancel()
	st, err := client.Stream(sctx)
	if err != nil {
		return r, err
	}
	slots := make(chan struct{}, o.inflight)
	sentAt := make([]atomic.Int64, o.inflight) // unix nanoseconds, by sequence
	recvDone := make(chan error, 1)
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				recvDone <- err
				return
			}
			a := resp.GetAck()
			at := sentAt[a.Sequence%uint64(o.inflight)].Load()
			r.latencies = append(r.latencies, time.Duration(time.Now().UnixNano()-at))
			r.sent = append(r.sent, at)
			r.accepted += int64(a.Accepted)
			r.rejects += int64(a.Rejected)
			if len(a.Rejections) > 0 && r.firstReject == "" {
				r.firstReject = a.Rejections[0].Reason + ": " + a.Rejections[0].Detail
			}
			<-slots
		}
	}()
	next := time.Now()
	var seq uint64
	declared := make([]bool, len(batches)) // by template, with -refs
	bufs := make([][]byte, o.inflight)     // request buffers, by sequence
	for i := id * 7; ctx.Err() == nil; i++ {
		if o.batches > 0 && int64(seq) >= o.batches {
			break
		}
		if interval > 0 {
			next = next.Add(interval)
			if d := time.Until(next); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
			}
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		t := batches[i%len(batches)]
		data := t.data
		if t.declare != nil && !declared[i%len(batches)] {
			data, declared[i%len(batches)] = t.declare, true
		}
		// A buffer is reused once the batch it carried was acked, so it
		// has left: acks come in order, and the slot taken above means
		// the batch o.inflight before this one was acked.
		buf := &bufs[seq%uint64(o.inflight)]
		req := protowire.AppendTag((*buf)[:0], 1, protowire.VarintType)
		req = protowire.AppendVarint(req, seq)
		req = protowire.AppendTag(req, 2, protowire.BytesType)
		req = protowire.AppendBytes(req, data)
		if len(t.traces) > 0 { // fresh trace ids: stream, sequence, round
			t.stamp(req[len(req)-len(data):], uint64(id+1)<<48|seq<<8|1, time.Now().Add(-spanStartBack))
		}
		*buf = req
		sentAt[seq%uint64(o.inflight)].Store(time.Now().UnixNano())
		if err := st.SendMsg(codec.Raw(req)); err != nil {
			return r, err
		}
		r.sentSamples += int64(o.batch) // samples or spans
		seq++
	}
	st.CloseSend()
	select {
	case err = <-recvDone:
	case <-time.After(10 * time.Second):
		err = errors.New("acks still missing 10s after the last batch")
	}
	return r, err
}

func (r *result) print(w io.Writer, o options) {
	secs := r.elapsed.Seconds()
	unit := "samples"
	if o.spansPerTrace > 0 {
		unit = "spans"
	}
	fmt.Fprintf(w, "load: %d streams, batch %d, %d contexts x %d tenants, mix %s, inflight %d, rate %s\n",
		o.streams, o.batch, o.contexts, o.tenants, o.mix, o.inflight, rateString(o.rate))
	fmt.Fprintf(w, "sent:  %d %s in %.2fs = %.0f %s/s\n", r.sentSamples, unit, secs, float64(r.sentSamples)/secs, unit)
	fmt.Fprintf(w, "acked: %d %s = %.0f %s/s (%d rejected)\n", r.accepted+r.rejects, unit, float64(r.accepted+r.rejects)/secs, unit, r.rejects)
	if r.firstReject != "" {
		fmt.Fprintf(w, "first rejection: %s\n", r.firstReject)
	}
	if o.phases > 0 {
		r.printPhases(w, o.phases) // before quantile sorts the latencies
	}
	if len(r.latencies) > 0 {
		fmt.Fprintf(w, "ack latency: p50 %v p99 %v max %v (%d acks)\n", r.quantile(0.5), r.quantile(0.99), r.quantile(1), len(r.latencies))
	}
	if r.accepted+r.rejects > 0 {
		fmt.Fprintf(w, "aggload CPU: %.2fs, %.0f ns per %s acked\n", r.cpu.Seconds(), r.cpuPerItem(), strings.TrimSuffix(unit, "s"))
		if o.serverPID > 0 {
			fmt.Fprintf(w, "server CPU (pid %d): %.2fs, %.0f ns per %s acked\n", o.serverPID, r.serverCPU.Seconds(), r.serverCPUPerItem(), strings.TrimSuffix(unit, "s"))
		}
	}
}

// printPhases writes the ack latency of the batches sent in each second of
// the flush interval (the wall clock modulo interval), over every interval
// of the run.
func (r *result) printPhases(w io.Writer, interval time.Duration) {
	n := max(1, int(interval/time.Second))
	by := make([]result, n)
	for i, at := range r.sent {
		p := int(at % int64(interval) / int64(time.Second))
		by[min(p, n-1)].latencies = append(by[min(p, n-1)].latencies, r.latencies[i])
	}
	for p := range by {
		if len(by[p].latencies) == 0 {
			continue
		}
		fmt.Fprintf(w, "ack latency, sent %2ds into the interval: p50 %v p99 %v max %v (%d acks)\n",
			p, by[p].quantile(0.5), by[p].quantile(0.99), by[p].quantile(1), len(by[p].latencies))
	}
}

// cpuPerItem returns this process's CPU per item acked, in nanoseconds.
func (r *result) cpuPerItem() float64 {
	return float64(r.cpu.Nanoseconds()) / float64(max(r.accepted+r.rejects, 1))
}

// serverCPUPerItem returns the server's CPU per item acked, in
// nanoseconds.
func (r *result) serverCPUPerItem() float64 {
	return float64(r.serverCPU.Nanoseconds()) / float64(max(r.accepted+r.rejects, 1))
}

// ackedPerSecond returns the items acked, accepted or not, per second.
func (r *result) ackedPerSecond() float64 {
	return float64(r.accepted+r.rejects) / r.elapsed.Seconds()
}

// quantile returns the q-quantile of the ack latencies, 0 without acks.
func (r *result) quantile(q float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	if !slices.IsSorted(r.latencies) {
		slices.Sort(r.latencies)
	}
	return r.latencies[min(int(q*float64(len(r.latencies))), len(r.latencies)-1)].Round(time.Microsecond)
}

func rateString(r float64) string {
	if r == 0 {
		return "unbounded"
	}
	return strconv.FormatFloat(r, 'f', 0, 64) + "/s"
}

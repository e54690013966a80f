package upstreamtest

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// OTLPRequest is one export the receiver took, with its metadata.
type OTLPRequest struct {
	MD  metadata.MD
	Req *colmetricspb.ExportMetricsServiceRequest
}

// OTLPReceiver is an OTLP/gRPC metrics receiver on loopback. It is safe for
// concurrent use.
type OTLPReceiver struct {
	colmetricspb.UnimplementedMetricsServiceServer
	traces traceReceiver
	logs   logReceiver
	// Addr is the receiver's host:port.
	Addr string
	// Answer, if set, may fail export n (from 0) with a status error, or
	// answer it with a partial success.
	Answer func(n int) (*colmetricspb.ExportMetricsPartialSuccess, error)

	mu   sync.Mutex
	n    int
	reqs []OTLPRequest
	errs []error
}

func (r *OTLPReceiver) fail(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

// Err returns the data model rules the exports taken so far broke; each
// such export was refused with InvalidArgument.
func (r *OTLPReceiver) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return errors.Join(r.errs...)
}

// NewOTLPReceiver starts a receiver; it stops when the test ends.
func NewOTLPReceiver(tb interface {
	Cleanup(func())
	Fatal(...any)
}) *OTLPReceiver {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r := &OTLPReceiver{Addr: lis.Addr().String()}
	r.traces.r, r.logs.r = r, r
	gs := grpc.NewServer()
	colmetricspb.RegisterMetricsServiceServer(gs, r)
	coltracepb.RegisterTraceServiceServer(gs, &r.traces)
	collogspb.RegisterLogsServiceServer(gs, &r.logs)
	go gs.Serve(lis)
	tb.Cleanup(gs.Stop)
	return r
}

// Export implements the OTLP MetricsService.
func (r *OTLPReceiver) Export(ctx context.Context, req *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	r.mu.Lock()
	n := r.n
	r.n++
	r.mu.Unlock()
	var ps *colmetricspb.ExportMetricsPartialSuccess
	if r.Answer != nil {
		var err error
		if ps, err = r.Answer(n); err != nil {
			return nil, err
		}
	}
	if err := CheckMetrics(req); err != nil {
		r.fail(err)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	md, _ := metadata.FromIncomingContext(ctx)
	r.mu.Lock()
	r.reqs = append(r.reqs, OTLPRequest{MD: md, Req: req})
	r.mu.Unlock()
	return &colmetricspb.ExportMetricsServiceResponse{PartialSuccess: ps}, nil
}

// Requests returns the exports taken so far.
func (r *OTLPReceiver) Requests() []OTLPRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

// Calls returns the number of exports attempted, failed ones included.
func (r *OTLPReceiver) Calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// OTLPTraceRequest is one trace export the receiver took.
type OTLPTraceRequest struct {
	MD  metadata.MD
	Req *coltracepb.ExportTraceServiceRequest
}

type traceReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	r    *OTLPReceiver
	mu   sync.Mutex
	reqs []OTLPTraceRequest
}

func (t *traceReceiver) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	if err := CheckTraces(req); err != nil {
		t.r.fail(err)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	md, _ := metadata.FromIncomingContext(ctx)
	t.mu.Lock()
	t.reqs = append(t.reqs, OTLPTraceRequest{MD: md, Req: req})
	t.mu.Unlock()
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// TraceRequests returns the trace exports taken so far.
func (r *OTLPReceiver) TraceRequests() []OTLPTraceRequest {
	r.traces.mu.Lock()
	defer r.traces.mu.Unlock()
	return slices.Clone(r.traces.reqs)
}

type logReceiver struct {
	collogspb.UnimplementedLogsServiceServer
	r    *OTLPReceiver
	mu   sync.Mutex
	reqs []*collogspb.ExportLogsServiceRequest
}

func (l *logReceiver) Export(_ context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	if err := CheckLogs(req); err != nil {
		l.r.fail(err)
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	l.mu.Lock()
	l.reqs = append(l.reqs, req)
	l.mu.Unlock()
	return &collogspb.ExportLogsServiceResponse{}, nil
}

// LogRequests returns the log exports taken so far.
func (r *OTLPReceiver) LogRequests() []*collogspb.ExportLogsServiceRequest {
	r.logs.mu.Lock()
	defer r.logs.mu.Unlock()
	return slices.Clone(r.logs.reqs)
}

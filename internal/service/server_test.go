package service_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/overload"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/window"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "0123456789abcdef-acme"

// peerToken is the peer token of the servers serveBufconn starts.
const peerToken = "peer-secret"

type env struct {
	rec     *servicetest.Recorder
	srv     *service.Server
	tenants *service.Tenants
	client  aggdv1.AggregatorServiceClient
}

func start(t *testing.T, auth bool) *env {
	t.Helper()
	return startWith(t, auth, service.Config{})
}

// startWith is start with cfg's settings beside the ingester, tenants,
// limits and logger, and opts added to the gRPC server's options.
func startWith(t *testing.T, auth bool, cfg service.Config, opts ...grpc.ServerOption) *env {
	t.Helper()
	var cfgs []service.TenantConfig
	if auth {
		cfgs = []service.TenantConfig{{ID: "acme", Tokens: []string{token}}}
	}
	tenants, err := service.NewTenants(service.TenantsConfig{Tenants: cfgs, Auth: auth, MaxTenants: 3})
	if err != nil {
		t.Fatal(err)
	}
	rec := &servicetest.Recorder{}
	cfg.Ingest, cfg.Tenants, cfg.Limits, cfg.Logger = rec, tenants, codec.DefaultLimits(), slog.New(slog.DiscardHandler)
	srv, err := service.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client := aggdv1.NewAggregatorServiceClient(serveBufconn(t, srv, opts...))
	return &env{rec: rec, srv: srv, tenants: tenants, client: client}
}

// serveBufconn serves srv's aggd.v1 and OTLP services over an in-memory
// connection until the test ends and returns a connection to it; opts
// are added to the server's options.
func serveBufconn(t *testing.T, srv *service.Server, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	gs := grpc.NewServer(append(service.ServerOptions(), opts...)...)
	srv.Register(gs)
	srv.RegisterOTLP(gs)
	srv.RegisterPeer(gs, peerToken)
	lis := bufconn.Listen(1 << 20)
	go gs.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		gs.Stop()
	})
	return conn
}

func make16(b byte) []byte {
	id := make([]byte, 16)
	id[15] = b
	return id
}

func sample(name string, v float64) *aggdv1.Sample {
	return &aggdv1.Sample{Name: name, Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: v}
}

func TestStreamAcksEveryBatchInOrder(t *testing.T) {
	e := start(t, false)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", "team-a")
	st, err := e.client.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reqs := []*aggdv1.StreamRequest{
		{Sequence: 10, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("a", 1), sample("b", 2)}}},
		{Sequence: 11, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("", 1), sample("c", 3)},
			Events:        []*aggdv1.Event{{Title: ""}, {Title: "deploy"}},
			ServiceChecks: []*aggdv1.ServiceCheck{{Name: "db", Status: 9}}}},
		{Sequence: 12, Batch: &aggdv1.Batch{Spans: []*aggdv1.Span{{Name: "s"}, {
			TraceId: make16(1), SpanId: []byte{1, 2, 3, 4, 5, 6, 7, 8}, Name: "s", StartUnixNano: 1,
		}}}},
		{Sequence: 13},
	}
	// Pipeline every request before reading an ack.
	for _, r := range reqs {
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	type rej struct {
		kind   aggdv1.ItemKind
		index  uint32
		reason string
	}
	want := []struct {
		seq                uint64
		accepted, rejected uint32
		rejs               []rej
	}{
		{10, 2, 0, nil},
		{11, 2, 3, []rej{
			{aggdv1.ItemKind_ITEM_KIND_SAMPLE, 0, "invalid_name"},
			{aggdv1.ItemKind_ITEM_KIND_EVENT, 0, "invalid_event"},
			{aggdv1.ItemKind_ITEM_KIND_SERVICE_CHECK, 0, "invalid_status"}}},
		{12, 0, 2, []rej{{aggdv1.ItemKind_ITEM_KIND_SPAN, 0, "invalid_value"}, {aggdv1.ItemKind_ITEM_KIND_SPAN, 1, "unsupported"}}},
		{13, 0, 0, nil},
	}
	for _, w := range want {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		a := resp.GetAck()
		if a.Sequence != w.seq || a.Accepted != w.accepted || a.Rejected != w.rejected || len(a.Rejections) != len(w.rejs) {
			t.Fatalf("ack %d: got %v, want %+v", w.seq, a, w)
		}
		for i, r := range a.Rejections {
			if got := (rej{r.Kind, r.Index, r.Reason}); got != w.rejs[i] || r.Detail == "" {
				t.Errorf("ack %d rejection %d: got %+v (%q), want %+v", w.seq, i, got, r.Detail, w.rejs[i])
			}
		}
	}
	st.CloseSend()
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("after CloseSend: got %v, want EOF", err)
	}
	got := e.rec.Samples()
	if len(got) != 3 || got[0].Tenant != "team-a" || got[2].Name != "c" {
		t.Fatalf("recorded %+v", got)
	}
	if ev := e.rec.Events(); len(ev) != 1 || ev[0].Title != "deploy" || ev[0].Timestamp == 0 {
		t.Fatalf("events %+v", ev)
	}
}

func TestIngestRefusalsReachTheAck(t *testing.T) {
	e := start(t, false)
	e.rec.Refuse = func(s *window.Sample) window.Reason {
		if s.Name == "conflict" {
			return window.ReasonTypeConflict
		}
		return window.Accepted
	}
	resp, err := e.client.Submit(context.Background(), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("ok", 1), sample("conflict", 1)}}})
	if err != nil {
		t.Fatal(err)
	}
	a := resp.GetAck()
	if a.Accepted != 1 || a.Rejected != 1 || a.Rejections[0].Reason != "type_conflict" || a.Rejections[0].Index != 1 {
		t.Fatalf("got %v", a)
	}
	if got := e.rec.Samples(); len(got) != 1 || got[0].Tenant != service.DefaultTenant {
		t.Fatalf("recorded %+v", got)
	}
}

func TestTenancy(t *testing.T) {
	tests := []struct {
		name   string
		auth   bool
		md     []string
		code   codes.Code
		tenant string
	}{
		{"auth off, default tenant", false, nil, codes.OK, "default"},
		{"auth off, x-tenant-id", false, []string{"x-tenant-id", "blue"}, codes.OK, "blue"},
		{"auth off, bad tenant id", false, []string{"x-tenant-id", "a b"}, codes.InvalidArgument, ""},
		{"auth on, no token", true, nil, codes.Unauthenticated, ""},
		{"auth on, wrong token", true, []string{"authorization", "Bearer nope-nope-nope-nope"}, codes.Unauthenticated, ""},
		{"auth on, not bearer", true, []string{"authorization", "Basic " + token}, codes.Unauthenticated, ""},
		{"auth on, x-tenant-id alone", true, []string{"x-tenant-id", "acme"}, codes.Unauthenticated, ""},
		{"auth on, token wins over x-tenant-id", true, []string{"authorization", "Bearer " + token, "x-tenant-id", "other"}, codes.OK, "acme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := start(t, tt.auth)
			ctx := metadata.AppendToOutgoingContext(context.Background(), tt.md...)
			req := &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("m", 1)}}}
			_, err := e.client.Submit(ctx, req)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("Submit: got %v (%v), want %v", got, err, tt.code)
			}
			// The stream resolves the tenant the same way.
			st, err := e.client.Stream(ctx)
			if err == nil {
				st.Send(&aggdv1.StreamRequest{Sequence: 1, Batch: req.Batch})
				_, err = st.Recv()
			}
			if got := status.Code(err); got != tt.code {
				t.Fatalf("Stream: got %v (%v), want %v", got, err, tt.code)
			}
			if tt.code == codes.OK {
				for _, s := range e.rec.Samples() {
					if s.Tenant != tt.tenant {
						t.Fatalf("sample of tenant %q, want %q", s.Tenant, tt.tenant)
					}
				}
			}
		})
	}
}

func TestTenantsCreatedOnDemandAreBounded(t *testing.T) {
	e := start(t, false) // at most 3 tenants
	for i, id := range []string{"a", "b", "c", "d"} {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", id)
		_, err := e.client.Submit(ctx, &aggdv1.SubmitRequest{})
		want := codes.OK
		if i == 3 {
			want = codes.ResourceExhausted
		}
		if got := status.Code(err); got != want {
			t.Fatalf("tenant %s: got %v, want %v", id, got, want)
		}
	}
}

func TestMalformedFramingEndsOnlyThatStream(t *testing.T) {
	e := start(t, false)
	// A StreamRequest whose batch field claims more bytes than it has.
	conn := e.client
	st, err := conn.Stream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	raw := &aggdv1.StreamRequest{Sequence: 1}
	raw.ProtoReflect().SetUnknown([]byte{0x12, 0x7f, 0x01})
	st.Send(raw)
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
	if _, err := conn.Submit(context.Background(), &aggdv1.SubmitRequest{}); err != nil {
		t.Fatalf("server unusable after a malformed stream: %v", err)
	}
}

// recvWaiter is a server stream that reports each time its handler
// starts to wait for a message.
type recvWaiter struct {
	grpc.ServerStream
	waiting chan<- struct{}
}

func (w recvWaiter) RecvMsg(m any) error {
	w.waiting <- struct{}{}
	return w.ServerStream.RecvMsg(m)
}

func TestDrainEndsStreamsAfterTheirBatch(t *testing.T) {
	// waiting receives once each time the handler begins to read a batch,
	// so the test knows the handler waits for batch 2 before it drains.
	waiting := make(chan struct{}, 8)
	e := startWith(t, false, service.Config{}, grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, recvWaiter{ServerStream: ss, waiting: waiting})
	}))
	st, err := e.client.Stream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&aggdv1.StreamRequest{Sequence: 1, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("a", 1)}}})
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	<-waiting // batch 1
	<-waiting // batch 2
	e.srv.Drain()
	// The handler was already waiting for batch 2 when the drain began: it
	// takes and acks it, then ends the stream without reading more.
	st.Send(&aggdv1.StreamRequest{Sequence: 2, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("a", 1)}}})
	if resp, err := st.Recv(); err != nil || resp.Ack.Sequence != 2 {
		t.Fatalf("got %v, %v; want the ack of batch 2", resp, err)
	}
	st.Send(&aggdv1.StreamRequest{Sequence: 3, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("a", 1)}}})
	if _, err := st.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
	if n := len(e.rec.Samples()); n != 2 {
		t.Fatalf("recorded %d samples, want 2 (batch 3 was never acked)", n)
	}
}

// TestMaxStreamAgeEndsTheStreamAfterItsBatch: a stream younger than its
// age goes on; one past it ends with Unavailable between batches, never
// refusing a batch it read. How far the first batches get before the age
// passes depends on the machine's speed, so the test asserts what holds
// either way: every ack is a recorded batch, and the stream ends.
func TestMaxStreamAgeEndsTheStreamAfterItsBatch(t *testing.T) {
	const age = 50 * time.Millisecond
	tests := []struct {
		name string
		age  time.Duration
		// pastAge: the stream must end with Unavailable.
		pastAge bool
	}{
		{"younger than its age", time.Hour, false},
		{"past its age", age, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := startWith(t, false, service.Config{MaxStreamAge: tc.age})
			st, err := e.client.Stream(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			acks := 0
			for seq := uint64(1); seq <= 3; seq++ {
				if seq == 3 && tc.pastAge {
					time.Sleep(age + 10*time.Millisecond) // at least the age has passed
				}
				st.Send(&aggdv1.StreamRequest{Sequence: seq, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("a", 1)}}})
				resp, err := st.Recv()
				if err != nil {
					if !tc.pastAge || status.Code(err) != codes.Unavailable {
						t.Fatalf("batch %d: %v, want its ack", seq, err)
					}
					break
				}
				if resp.Ack.Sequence != seq {
					t.Fatalf("batch %d: acked %d", seq, resp.Ack.Sequence)
				}
				acks++
			}
			if tc.pastAge && acks == 3 {
				// The batch read past the age was acked; the stream ends
				// without reading another.
				if _, err := st.Recv(); status.Code(err) != codes.Unavailable {
					t.Fatalf("got %v, want Unavailable", err)
				}
			}
			if n := len(e.rec.Samples()); n != acks {
				t.Fatalf("recorded %d samples, want the %d acked", n, acks)
			}
		})
	}
}

// level is a Leveler the test sets; it counts how often it is read.
type level struct {
	l     atomic.Int32
	reads atomic.Int64
}

func (l *level) Level() overload.Level {
	l.reads.Add(1)
	return overload.Level(l.l.Load())
}

// TestMemoryPressureSlowsThenRefuses: under soft pressure a stream stops
// reading, so its batch waits unacked while the server reads the level
// again and again; once the pressure is gone the batch is taken and
// acked. Under hard pressure batches are refused with RetryInfo. The test
// is driven by the level the server has read, not by time.
func TestMemoryPressureSlowsThenRefuses(t *testing.T) {
	lv := &level{}
	e := startWith(t, false, service.Config{Load: lv})
	// Soft before the stream opens: a level read before the batch came
	// must not be OK, or the batch is taken at once.
	lv.l.Store(int32(overload.Soft))
	st, err := e.client.Stream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&aggdv1.StreamRequest{Sequence: 1, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("a", 1)}}})
	acked := make(chan error, 1)
	go func() {
		_, err := st.Recv()
		acked <- err
	}()
	// The server read Soft three times without going on: it waits.
	for deadline := time.Now().Add(30 * time.Second); lv.reads.Load() < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server read the level %d times in 30s, want it to poll while waiting", lv.reads.Load())
		}
	}
	select {
	case err := <-acked:
		t.Fatalf("acked under soft pressure (%v); want the stream to wait", err)
	default:
	}
	if n := len(e.rec.Samples()); n != 0 {
		t.Fatalf("recorded %d samples under soft pressure, want 0", n)
	}
	lv.l.Store(int32(overload.OK))
	if err := <-acked; err != nil {
		t.Fatal(err)
	}
	lv.l.Store(int32(overload.Hard))
	st.Send(&aggdv1.StreamRequest{Sequence: 2, Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample("a", 1)}}})
	_, err = st.Recv()
	s := status.Convert(err)
	if s.Code() != codes.ResourceExhausted || len(s.Details()) != 1 {
		t.Fatalf("got %v, want ResourceExhausted with RetryInfo", err)
	}
	if ri, ok := s.Details()[0].(*errdetails.RetryInfo); !ok || ri.RetryDelay.AsDuration() <= 0 {
		t.Fatalf("details %v", s.Details())
	}
	if _, err := e.client.Submit(context.Background(), &aggdv1.SubmitRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Submit under hard pressure: %v", err)
	}
	if n := len(e.rec.Samples()); n != 1 {
		t.Fatalf("recorded %d samples, want only the first batch", n)
	}
}

// TestMemoryPressureSparesSmallTenants: under pressure the tenant holding
// most contexts is slowed and refused while a far smaller one goes on past
// the soft limit and only waits past the hard one.
func TestMemoryPressureSparesSmallTenants(t *testing.T) {
	lv := &level{}
	e := startWith(t, false, service.Config{Load: lv})
	ctxOf := func(id string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "x-tenant-id", id)
	}
	for id, contexts := range map[string]int64{"big": 1_000_000, "small": 1_000} {
		tn, err := e.tenants.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		tn.Contexts.Store(contexts)
	}
	submit := func(id string, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(ctxOf(id), timeout)
		defer cancel()
		_, err := e.client.Submit(ctx, &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{sample(id, 1)}}})
		return err
	}
	// A call expected to wait gets 200 ms to show it waits; one expected
	// to finish gets long enough that only a hang fails it.
	wait := func(want codes.Code) time.Duration {
		if want == codes.DeadlineExceeded {
			return 200 * time.Millisecond
		}
		return 30 * time.Second
	}
	tests := []struct {
		level      overload.Level
		big, small codes.Code
	}{
		{overload.OK, codes.OK, codes.OK},
		{overload.Soft, codes.DeadlineExceeded, codes.OK},
		{overload.Hard, codes.ResourceExhausted, codes.DeadlineExceeded},
	}
	for _, tc := range tests {
		lv.l.Store(int32(tc.level))
		if got := status.Code(submit("big", wait(tc.big))); got != tc.big {
			t.Errorf("level %d: big tenant got %v, want %v", tc.level, got, tc.big)
		}
		if got := status.Code(submit("small", wait(tc.small))); got != tc.small {
			t.Errorf("level %d: small tenant got %v, want %v", tc.level, got, tc.small)
		}
	}
}

func TestDuplicateSequenceIsRefusedWhole(t *testing.T) {
	tests := []struct {
		name string
		seqs []uint64
		dup  []bool // per request: refused as a duplicate
	}{
		{"rising", []uint64{1, 2, 3}, []bool{false, false, false}},
		{"gaps are fine", []uint64{5, 9, 100}, []bool{false, false, false}},
		{"repeat", []uint64{1, 2, 2, 3}, []bool{false, false, true, false}},
		{"backwards", []uint64{4, 5, 1, 6}, []bool{false, false, true, false}},
		{"zero is never checked", []uint64{0, 0, 3, 0, 3}, []bool{false, false, false, false, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, false)
			st, err := e.client.Stream(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for i, seq := range tc.seqs {
				b := &aggdv1.Batch{
					Samples: []*aggdv1.Sample{sample(fmt.Sprintf("m%d", i), 1), sample(fmt.Sprintf("n%d", i), 1)},
					Events:  []*aggdv1.Event{{Title: fmt.Sprintf("e%d", i)}},
				}
				if err := st.Send(&aggdv1.StreamRequest{Sequence: seq, Batch: b}); err != nil {
					t.Fatal(err)
				}
			}
			wantNames := map[string]bool{}
			for i, seq := range tc.seqs {
				resp, err := st.Recv()
				if err != nil {
					t.Fatal(err)
				}
				a := resp.GetAck()
				if a.Sequence != seq {
					t.Fatalf("ack %d: sequence %d, want %d", i, a.Sequence, seq)
				}
				if !tc.dup[i] {
					if a.Accepted != 3 || a.Rejected != 0 {
						t.Fatalf("ack %d (seq %d): %v, want all 3 accepted", i, seq, a)
					}
					wantNames[fmt.Sprintf("m%d", i)], wantNames[fmt.Sprintf("n%d", i)] = true, true
					continue
				}
				if a.Accepted != 0 || a.Rejected != 3 || len(a.Rejections) != 3 {
					t.Fatalf("ack %d (seq %d): %v, want all 3 refused", i, seq, a)
				}
				for _, r := range a.Rejections {
					if r.Reason != "duplicate_sequence" || !strings.Contains(r.Detail, fmt.Sprint(seq)) {
						t.Errorf("ack %d rejection: %v", i, r)
					}
				}
				if k := a.Rejections[2].Kind; k != aggdv1.ItemKind_ITEM_KIND_EVENT {
					t.Errorf("ack %d: third rejection kind %v, want event", i, k)
				}
			}
			st.CloseSend()
			if _, err := st.Recv(); err != io.EOF {
				t.Fatalf("after CloseSend: got %v, want EOF", err)
			}
			got := map[string]bool{}
			for _, s := range e.rec.Samples() {
				if got[s.Name] {
					t.Errorf("sample %s applied twice", s.Name)
				}
				got[s.Name] = true
			}
			if !maps.Equal(got, wantNames) {
				t.Errorf("applied %v, want %v", got, wantNames)
			}
			if n, want := len(e.rec.Events()), len(wantNames)/2; n != want {
				t.Errorf("events applied: %d, want %d", n, want)
			}
		})
	}
}

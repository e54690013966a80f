package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
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
	"google.golang.org/protobuf/types/known/durationpb"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/client"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// flaky is an aggregator that drops every stream after dropEvery batches,
// the last one unacked, and records every sample value it received.
type flaky struct {
	aggdv1.UnimplementedAggregatorServiceServer
	dropEvery int
	refuse    float64 // a sample with this value is rejected
	never     bool    // never ack

	mu      sync.Mutex
	got     map[float64]int
	batches int
	tenant  string
}

func (f *flaky) Stream(st aggdv1.AggregatorService_StreamServer) error {
	md, _ := metadata.FromIncomingContext(st.Context())
	for n := 1; ; n++ {
		req, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		f.mu.Lock()
		f.batches++
		if v := md.Get("x-tenant-id"); len(v) > 0 {
			f.tenant = v[0]
		}
		ack := &aggdv1.Ack{Sequence: req.Sequence}
		for i, s := range req.Batch.Samples {
			f.got[s.Value]++
			if s.Value == f.refuse {
				ack.Rejections = append(ack.Rejections, &aggdv1.Rejection{Kind: aggdv1.ItemKind_ITEM_KIND_SAMPLE, Index: uint32(i), Reason: "invalid_value"})
			}
		}
		f.mu.Unlock()
		if f.never {
			continue
		}
		if f.dropEvery > 0 && n%f.dropEvery == 0 {
			return status.Error(codes.Unavailable, "dropping the stream")
		}
		if err := st.Send(&aggdv1.StreamResponse{Ack: ack}); err != nil {
			return err
		}
	}
}

// serve serves f, or srv if set (embedding f), on bufconn.
func serve(t *testing.T, f *flaky, srv aggdv1.AggregatorServiceServer, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	f.got = map[float64]int{}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(opts...)
	if srv == nil {
		srv = f
	}
	aggdv1.RegisterAggregatorServiceServer(gs, srv)
	go gs.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///aggd", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); gs.Stop() })
	return conn
}

func sample(v float64) *aggdv1.Sample {
	return &aggdv1.Sample{Name: "m", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: v}
}

func TestResumesAfterDroppedStreamsLosingNothing(t *testing.T) {
	f := &flaky{dropEvery: 7, refuse: -1}
	conn := serve(t, f, nil)
	c := client.New(conn, client.Options{BatchSize: 10, MaxInFlight: 4, Metadata: map[string]string{"x-tenant-id": "shop"}})
	ctx := context.Background()
	const n = 2000
	for i := range n {
		if err := c.Add(ctx, sample(float64(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	dup := 0
	for i := range n {
		switch k := f.got[float64(i)]; {
		case k == 0:
			t.Fatalf("sample %d never arrived", i)
		case k > 1:
			dup++
		}
	}
	if c.Resumes.Load() < 10 || dup == 0 || f.tenant != "shop" {
		t.Fatalf("resumes %d, duplicates %d, tenant %q", c.Resumes.Load(), dup, f.tenant)
	}
	t.Logf("%d resumes; %d of %d samples arrived twice (their batch's ack was lost)", c.Resumes.Load(), dup, n)
}

func TestBackpressureAndRejections(t *testing.T) {
	f := &flaky{never: true}
	conn := serve(t, f, nil)
	c := client.New(conn, client.Options{BatchSize: 2, MaxInFlight: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var err error
	for i := 0; err == nil && i < 10; i++ {
		err = c.Add(ctx, sample(float64(i)))
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Add with no acks: %v, want the caller's deadline", err)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer ccancel()
	c.Close(cctx)

	g := &flaky{refuse: 3}
	c = client.New(serve(t, g, nil), client.Options{BatchSize: 4, OnReject: func(b *aggdv1.Batch, r *aggdv1.Rejection) {
		if b.Samples[r.Index].Value != 3 || r.Reason != "invalid_value" {
			t.Errorf("rejection %v of %v", r, b.Samples[r.Index])
		}
		g.mu.Lock()
		g.got[-100]++
		g.mu.Unlock()
	}})
	for i := range 8 {
		c.Add(context.Background(), sample(float64(i)))
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if g.got[-100] != 1 {
		t.Fatalf("OnReject called %d times", g.got[-100])
	}
}

func TestPermanentErrorStopsTheClient(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	aggdv1.RegisterAggregatorServiceServer(gs, &denied{})
	go gs.Serve(lis)
	defer gs.Stop()
	conn, _ := grpc.NewClient("passthrough:///aggd", grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	c := client.New(conn, client.Options{BatchSize: 1})
	c.Add(context.Background(), sample(1))
	err := c.Close(context.Background())
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("got %v, want Unauthenticated", err)
	}
	if err := c.Add(context.Background(), sample(2)); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
}

type denied struct {
	aggdv1.UnimplementedAggregatorServiceServer
}

func (denied) Stream(aggdv1.AggregatorService_StreamServer) error {
	return status.Error(codes.Unauthenticated, "no token")
}

// refusing refuses its first stream with ResourceExhausted and RetryInfo,
// then acks like flaky, noting when each stream began.
type refusing struct {
	flaky
	delay  time.Duration
	starts []time.Time
}

func (r *refusing) Stream(st aggdv1.AggregatorService_StreamServer) error {
	r.mu.Lock()
	r.starts = append(r.starts, time.Now())
	first := len(r.starts) == 1
	r.mu.Unlock()
	if first {
		s, _ := status.New(codes.ResourceExhausted, "over the memory budget").
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(r.delay)})
		return s.Err()
	}
	return r.flaky.Stream(st)
}

// TestHonoursRetryInfo checks that a refusal with RetryInfo is retried
// no sooner than it asks, and the batch still delivered.
func TestHonoursRetryInfo(t *testing.T) {
	r := &refusing{delay: 500 * time.Millisecond}
	c := client.New(serve(t, &r.flaky, r), client.Options{BatchSize: 1})
	if err := c.Add(context.Background(), sample(1)); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.starts) < 2 || r.got[1] != 1 {
		t.Fatalf("%d streams, sample received %d times", len(r.starts), r.got[1])
	}
	if gap := r.starts[1].Sub(r.starts[0]); gap < r.delay {
		t.Fatalf("the client came back after %v, before the %v RetryInfo asked", gap, r.delay)
	}
}

// TestItemOverTheLimitIsRefused sends, to a server with a 1 KiB message
// limit, batches with one item larger than that among small ones: the
// large one is reported to OnReject (too_large), every small one arrives,
// and Close returns; without OnReject, Close returns the refusal.
func TestItemOverTheLimitIsRefused(t *testing.T) {
	for _, withOnReject := range []bool{true, false} {
		t.Run(fmt.Sprint("OnReject ", withOnReject), func(t *testing.T) {
			f := &flaky{refuse: -1}
			var mu sync.Mutex
			var reasons []string
			opts := client.Options{BatchSize: 4, MaxInFlight: 2}
			if withOnReject {
				opts.OnReject = func(b *aggdv1.Batch, r *aggdv1.Rejection) {
					mu.Lock()
					defer mu.Unlock()
					reasons = append(reasons, fmt.Sprint(r.Reason, " ", b.Samples[r.Index].Value))
				}
			}
			c := client.New(serve(t, f, nil, grpc.MaxRecvMsgSize(1024)), opts)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i := range 20 {
				s := sample(float64(i))
				if i == 5 {
					s.Tags = []string{strings.Repeat("x", 2048)}
				}
				if err := c.Add(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			err := c.Close(ctx)
			switch {
			case withOnReject && err != nil:
				t.Fatalf("Close: %v", err)
			case !withOnReject && status.Code(errors.Unwrap(err)) != codes.ResourceExhausted:
				t.Fatalf("Close: %v, want the refusal", err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			for i := range 20 {
				if want := i != 5; (f.got[float64(i)] > 0) != want {
					t.Errorf("sample %d received %d times", i, f.got[float64(i)])
				}
			}
			if withOnReject && !slices.Equal(reasons, []string{"too_large 5"}) {
				t.Errorf("OnReject got %v, want [too_large 5]", reasons)
			}
		})
	}
}

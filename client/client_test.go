package client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

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

func serve(t *testing.T, f *flaky) *grpc.ClientConn {
	t.Helper()
	f.got = map[float64]int{}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	aggdv1.RegisterAggregatorServiceServer(gs, f)
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
	conn := serve(t, f)
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
	conn := serve(t, f)
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
	c = client.New(serve(t, g), client.Options{BatchSize: 4, OnReject: func(b *aggdv1.Batch, r *aggdv1.Rejection) {
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

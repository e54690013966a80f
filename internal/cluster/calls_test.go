package cluster

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/wal"
	"github.com/aggd/aggd/internal/window"
)

// Calls answers a call applied before with its ack, lets a failed one be
// applied again, makes a second attempt wait for one being applied, and
// forgets a call after its time, or early when full.
func TestCallsRemembersAppliedCalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c := NewCalls(time.Minute, 3)
		a, b := codec.CallID{Replica: 7, Sequence: 1}, codec.CallID{Replica: 7, Sequence: 2}
		ack := &aggdv1.Ack{Accepted: 5}

		if got, err := c.Begin(ctx, a); got != nil || err != nil {
			t.Fatalf("first attempt: %v %v, want it let through", got, err)
		}
		// A second attempt while the first is applied waits for it.
		second := make(chan *aggdv1.Ack)
		go func() {
			got, _ := c.Begin(ctx, a)
			second <- got
		}()
		synctest.Wait()
		select {
		case got := <-second:
			t.Fatalf("second attempt answered %v while the first was applied", got)
		default:
		}
		c.End(a, ack)
		if got := <-second; got != ack {
			t.Fatalf("second attempt: %v, want the first's ack", got)
		}

		// A failed attempt is not remembered: the next one applies.
		if got, _ := c.Begin(ctx, b); got != nil {
			t.Fatal("b was not applied yet")
		}
		c.End(b, nil)
		if got, _ := c.Begin(ctx, b); got != nil {
			t.Fatalf("after a failure: %v, want b let through again", got)
		}
		c.End(b, &aggdv1.Ack{Accepted: 1})

		// A wait ends with its caller's context.
		d := codec.CallID{Replica: 8, Sequence: 1}
		c.Begin(ctx, d)
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.Begin(wctx, d)
		cancel()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("waiting past the caller's deadline: %v", err)
		}
		c.End(d, &aggdv1.Ack{Accepted: 2})

		// Three kept, the limit: a fourth call forgets the oldest early.
		e := codec.CallID{Replica: 9, Sequence: 1}
		c.Begin(ctx, e)
		c.End(e, &aggdv1.Ack{})
		if n := c.forgotten.Load(); n != 1 {
			t.Fatalf("forgotten %d, want 1", n)
		}
		if got, _ := c.Begin(ctx, a); got != nil {
			t.Fatal("a, forgotten early, is still answered")
		}
		c.End(a, ack)

		// After its time, a call is forgotten.
		time.Sleep(time.Minute + time.Second)
		if got, _ := c.Begin(ctx, e); got != nil {
			t.Fatal("e is still remembered after its time")
		}
		if n := c.repeated.Load(); n != 1 {
			t.Errorf("repeated %d, want 1", n)
		}
	})
}

// A call still being applied holds no other back: the calls applied
// after it are forgotten past the limit all the same, and it is kept.
func TestCallsForgetPastACallBeingApplied(t *testing.T) {
	ctx := context.Background()
	c := NewCalls(time.Hour, 4)
	slow := codec.CallID{Replica: 1, Sequence: 1}
	c.Begin(ctx, slow)
	for i := range 100 {
		id := codec.CallID{Replica: 2, Sequence: uint64(i + 1)}
		c.Begin(ctx, id)
		c.End(id, &aggdv1.Ack{Accepted: 1})
	}
	c.mu.Lock()
	n, slowKept := len(c.calls), c.calls[slow] != nil
	c.mu.Unlock()
	if n > 5 {
		t.Fatalf("%d calls remembered while one is applied, want at most the limit 4 and that one", n)
	}
	if !slowKept {
		t.Fatal("the call being applied was forgotten")
	}
	c.End(slow, &aggdv1.Ack{Accepted: 2})
	if got, _ := c.Begin(ctx, slow); got == nil || got.Accepted != 2 {
		t.Fatalf("the slow call, once applied, is answered %v", got)
	}
}

// Calls bounds the bytes of the acks it keeps, not only their number:
// acks that list many refusals, each with its detail, make it forget the
// oldest calls early, while small acks of the same number are all kept.
func TestCallsBoundTheirBytes(t *testing.T) {
	for _, tt := range []struct {
		name    string
		refused int // rejections in each ack
		want    int // calls remembered of 400
	}{
		{"small acks", 0, 400},
		{"acks listing 500 refusals", 500, -1}, // fewer than 400, bytes within the bound
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			c := NewCalls(time.Hour, 0)
			c.maxBytes = 1 << 20
			ack := &aggdv1.Ack{Accepted: 500 - uint32(tt.refused)}
			for i := range tt.refused {
				ack.Rejections = append(ack.Rejections, &aggdv1.Rejection{Index: uint32(i), Reason: "type_conflict",
					Detail: fmt.Sprintf("sample %d: series web.requests was declared a gauge, this sample is a count", i)})
			}
			for i := range 400 {
				id := codec.CallID{Replica: 1, Sequence: uint64(i + 1)}
				c.Begin(ctx, id)
				c.End(id, ack)
			}
			c.mu.Lock()
			n, bytes := len(c.calls), c.bytes
			c.mu.Unlock()
			if tt.want >= 0 && n != tt.want {
				t.Fatalf("remembered %d calls, want %d", n, tt.want)
			}
			if tt.want < 0 && (n >= 400 || n == 0) {
				t.Fatalf("remembered %d of 400 calls of %d bytes each, want fewer, not none", n, proto.Size(ack))
			}
			// The bound holds after the next call trims (one call over it
			// at most, the last one added).
			if limit := c.maxBytes + callOverhead + proto.Size(ack); bytes > limit {
				t.Fatalf("remembered %d bytes, over %d", bytes, limit)
			}
			if tt.want < 0 && c.forgotten.Load() == 0 {
				t.Fatal("no call counted as forgotten early")
			}
		})
	}
}

// cutter is a TCP proxy that can cut every connection through it.
type cutter struct {
	lis   net.Listener
	to    string
	mu    sync.Mutex
	conns []net.Conn
}

func newCutter(tb testing.TB, to string) *cutter {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &cutter{lis: l, to: to}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			wg.Go(func() { io.Copy(s, c); s.Close() })
			wg.Go(func() { io.Copy(c, s); c.Close() })
		}
	})
	tb.Cleanup(func() { l.Close(); p.cut(); wg.Wait() })
	return p
}

func (p *cutter) addr() string { return p.lis.Addr().String() }

// cut closes every connection through p.
func (p *cutter) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// A forward whose answer is lost (the connection cut after the owner took
// the batch, before its ack left) is sent again under the same name: the
// owner that remembers its calls answers with the first ack and takes the
// samples once; one that does not takes them twice.
func TestForwardRetriedAfterLostAnswerAppliesOnce(t *testing.T) {
	const self = "127.0.0.1:1"
	for _, tt := range []struct {
		name     string
		remember bool
		want     int
	}{
		{name: "owner remembers calls", remember: true, want: 3},
		{name: "owner without memory", remember: false, want: 6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var proxy *cutter
			var cuts atomic.Int32
			owner := &servicetest.Recorder{Refuse: func(*window.Sample) window.Reason {
				if cuts.Add(1) == 1 {
					proxy.cut() // the ack of this batch never leaves
				}
				return window.Accepted
			}}
			calls := NewCalls(time.Minute, 0)
			ownerAddr := servicetest.ServePeers(t, owner, token, func(cfg *service.Config) {
				if tt.remember {
					cfg.PeerCalls = calls
				}
			})
			proxy = newCutter(t, ownerAddr)
			m := NewMembership([]string{self, proxy.addr()}, int64(time.Second), int64(time.Hour))
			fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second,
				Timeout: time.Minute, InitialBackoff: 10 * time.Millisecond}, m, slog.New(slog.DiscardHandler))
			defer fwd.Shutdown(context.Background())
			entryAddr := replica(t, discard{}, fwd)

			b := &aggdv1.Batch{}
			for _, name := range ownedBy(m.Latest().Ring, proxy.addr(), 3) {
				b.Samples = append(b.Samples, &aggdv1.Sample{Name: name, Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1})
			}
			if ack := submit(t, entryAddr, b); ack.GetAccepted() != 3 || ack.GetRejected() != 0 {
				t.Fatalf("ack %v, want 3 accepted", ack)
			}
			if got := len(owner.Samples()); got != tt.want {
				t.Errorf("owner took %d samples, want %d", got, tt.want)
			}
			if fwd.callsRetried.Load() == 0 {
				t.Error("the call was not sent again")
			}
			if n := calls.repeated.Load(); tt.remember && n != 1 {
				t.Errorf("repeated calls %d, want 1", n)
			}
		})
	}
}

// recorder is a servicetest.Recorder the write-ahead log replays into.
type recorder struct{ servicetest.Recorder }

func (*recorder) Resume(int64)   {}
func (*recorder) Drained() int64 { return 0 }

// An owner with a write-ahead log that restarts after it applied a
// forwarded call (its answer lost with it) learns the call from its log:
// the call sent again is answered with what the first attempt took, its
// refusals as owner_unavailable, and applied once; a new call is applied.
func TestForwardRetriedAcrossOwnerRestartAppliesOnce(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().UnixNano()
	frame := func(seq uint64) *aggdv1.ForwardRequest {
		b := &aggdv1.Batch{}
		for i, v := range []float64{1, -1, 2} { // the owner refuses -1
			b.Samples = append(b.Samples, &aggdv1.Sample{Name: fmt.Sprintf("m%d", i), Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: v})
		}
		return &aggdv1.ForwardRequest{Batch: b, Tenant: "default", ArrivalUnixNano: now, ReplicaId: 0xfeed, Sequence: seq}
	}
	// owner starts a replica on the log in dir, replaying it first.
	owner := func() (*recorder, aggdv1.PeerServiceClient, func()) {
		l, err := wal.Open(dir, wal.Options{Sync: wal.SyncAlways})
		if err != nil {
			t.Fatal(err)
		}
		tenants, err := service.NewTenants(service.TenantsConfig{MaxTenants: 100})
		if err != nil {
			t.Fatal(err)
		}
		rec := &recorder{servicetest.Recorder{Refuse: func(s *window.Sample) window.Reason {
			if s.Value < 0 {
				return window.ReasonTypeConflict
			}
			return window.Accepted
		}}}
		j, err := journal.New(journal.Config{Log: l, Due: func(ts, now int64) int64 { return max(ts, now) + int64(time.Hour) },
			Tenants: tenants, Limits: codec.DefaultLimits(), Ingest: rec, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		calls := NewCalls(time.Minute, 0)
		j.RememberCalls(calls)
		if err := j.Replay(); err != nil {
			t.Fatal(err)
		}
		addr := servicetest.ServePeers(t, rec, token, func(cfg *service.Config) { cfg.Journal, cfg.PeerCalls = j, calls })
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		return rec, aggdv1.NewPeerServiceClient(cc), func() { cc.Close(); l.Close() }
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token, codec.PeerProtocolKey, codec.PeerProtocol)
	forward := func(c aggdv1.PeerServiceClient, seq uint64) *aggdv1.Ack {
		t.Helper()
		resp, err := c.Forward(ctx, frame(seq))
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAck()
	}

	rec, c, stop := owner()
	if ack := forward(c, 1); ack.GetAccepted() != 2 || ack.GetRejections()[0].GetReason() != "type_conflict" {
		t.Fatalf("first attempt: %v", ack)
	}
	if n := len(rec.Samples()); n != 2 {
		t.Fatalf("owner took %d samples, want 2", n)
	}
	stop() // killed before its answer left; the log has the batch

	rec, c, stop = owner()
	defer stop()
	if n := len(rec.Samples()); n != 2 {
		t.Fatalf("replay took %d samples, want 2", n)
	}
	ack := forward(c, 1)
	if rj := ack.GetRejections(); ack.GetAccepted() != 2 || len(rj) != 1 || rj[0].GetIndex() != 1 || rj[0].GetReason() != "owner_unavailable" {
		t.Fatalf("call sent again after the restart: %v, want 2 accepted, sample 1 owner_unavailable", ack)
	}
	if n := len(rec.Samples()); n != 2 {
		t.Fatalf("after the call was sent again the owner holds %d samples, want 2", n)
	}
	if ack := forward(c, 2); ack.GetAccepted() != 2 {
		t.Fatalf("a new call: %v", ack)
	}
	if n := len(rec.Samples()); n != 4 {
		t.Fatalf("after a new call the owner holds %d samples, want 4", n)
	}
}

package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

const token = "peer-secret"

// replica serves aggd.v1 and aggd.v1.PeerService into ing on loopback;
// fwd, when set, makes it forward what it does not own.
func replica(tb testing.TB, ing service.Ingester, fwd *Forwarder) string {
	tb.Helper()
	return servicetest.ServePeers(tb, ing, token, func(cfg *service.Config) {
		if fwd != nil {
			cfg.Forwarder = fwd
		}
		if sd, ok := ing.(service.Seeder); ok { // the recorder keeps seeds apart
			cfg.Seeder = sd
		}
		if sp, ok := ing.(service.SpanIngester); ok {
			cfg.Spans = sp
		}
	})
}

// benchOwner serves a replica owning what the benchmarks forward: it keeps
// nothing, and remembers the calls it applied, as in cmd/aggd.
func benchOwner(b *testing.B) string {
	return servicetest.ServePeers(b, discard{}, token, func(cfg *service.Config) {
		cfg.PeerCalls = NewCalls(time.Minute, 0)
		cfg.Spans = discard{}
	})
}

func submit(tb testing.TB, addr string, b *aggdv1.Batch) *aggdv1.Ack {
	tb.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	defer cc.Close()
	resp, err := aggdv1.NewAggregatorServiceClient(cc).Submit(context.Background(), &aggdv1.SubmitRequest{Batch: b})
	if err != nil {
		tb.Fatal(err)
	}
	return resp.GetAck()
}

// ownedBy returns n sample names whose context (no tags, no host) is
// owned by want under ring r.
func ownedBy(r *Ring, want string, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		name := fmt.Sprintf("m%d", i)
		if r.Owner(ContextHash("default", window.AppendKey(nil, name, "", nil))) == want {
			out = append(out, name)
		}
	}
	return out
}

func TestForwardOutcomes(t *testing.T) {
	const self = "127.0.0.1:1" // the entry replica's peer address; never dialled
	dead := func() string {    // an address nothing listens on
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		defer l.Close()
		return l.Addr().String()
	}()
	tests := []struct {
		name      string
		token     string
		deadOwner bool
		// want: the reason of the forwarded samples, and the outcome
		// counted for them.
		reason  string
		outcome string
	}{
		{name: "acked", token: token, reason: "", outcome: "acked"},
		{name: "wrong token", token: "guess", reason: "owner_unavailable", outcome: "undelivered"},
		{name: "owner down", token: token, deadOwner: true, reason: "owner_unavailable", outcome: "undelivered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			owner := &servicetest.Recorder{Refuse: func(s *window.Sample) window.Reason {
				if s.Value < 0 {
					return window.ReasonTypeConflict
				}
				return window.Accepted
			}}
			ownerAddr := replica(t, owner, nil)
			if tt.deadOwner {
				ownerAddr = dead
			}
			m := NewMembership([]string{self, ownerAddr}, int64(time.Second), int64(time.Hour))
			// A forward that must fail gives up soon; one that must get
			// through has all the time a busy machine needs.
			timeout := 30 * time.Second
			if tt.reason != "" {
				timeout = 300 * time.Millisecond
			}
			fwd := NewForwarder(Config{Self: self, Token: tt.token, Timing: window.DefaultConfig().Timing(), Interval: time.Second,
				Timeout: timeout, InitialBackoff: 10 * time.Millisecond}, m, slog.New(slog.DiscardHandler))
			defer fwd.Shutdown(context.Background())
			entry := &servicetest.Recorder{}
			entryAddr := replica(t, entry, fwd)

			r := m.Latest().Ring
			remote, local := ownedBy(r, ownerAddr, 3), ownedBy(r, self, 2)
			b := &aggdv1.Batch{}
			for i, name := range []string{remote[0], local[0], remote[1], local[1], remote[2]} {
				v := 1.0
				if i == 4 {
					v = -1 // the owner refuses it
				}
				b.Samples = append(b.Samples, &aggdv1.Sample{Name: name, Type: aggdv1.MetricType_METRIC_TYPE_GAUGE, Value: v})
			}
			ack := submit(t, entryAddr, b)

			if got := len(entry.Samples()); got != 2 {
				t.Errorf("entry replica ingested %d samples, want its own 2", got)
			}
			reasons := map[uint32]string{}
			for _, rj := range ack.GetRejections() {
				reasons[rj.GetIndex()] = rj.GetReason()
			}
			for i := range uint32(5) {
				want := ""
				switch {
				case i == 1 || i == 3: // owned where they arrived
				case tt.reason != "":
					want = tt.reason
				case i == 4:
					want = "type_conflict"
				}
				if reasons[i] != want {
					t.Errorf("sample %d: reason %q, want %q (ack %v)", i, reasons[i], want, ack)
				}
			}
			if tt.reason == "" && len(owner.Samples()) != 2 {
				t.Errorf("owner ingested %d samples, want 2", len(owner.Samples()))
			}
			counted := func(outcome string) float64 {
				return itemsCounted(t, fwd, "sample", outcome)
			}
			if got := counted("local"); got != 2 {
				t.Errorf("local %v, want 2", got)
			}
			wantOut := 3.0
			if tt.reason == "" {
				wantOut = 2
				if got := counted("refused"); got != 1 {
					t.Errorf("refused %v, want 1", got)
				}
			}
			if got := counted(tt.outcome); got != wantOut {
				t.Errorf("%s %v, want %v", tt.outcome, got, wantOut)
			}
			if tt.deadOwner && fwd.callsRetried.Load() == 0 {
				t.Error("the unreachable owner was not retried")
			}
			if tt.token != token && fwd.callsRetried.Load() != 0 {
				t.Error("a refused token was retried")
			}
		})
	}
}

// An OTLP histogram point (a sample with Hist) travels to its owner as
// one item with its exact count, sum, minimum and maximum, and counts as
// one item, not one per bin.
func TestForwardHistogramPoint(t *testing.T) {
	const self = "127.0.0.1:1"
	owner := &servicetest.Recorder{}
	ownerAddr := replica(t, owner, nil)
	m := NewMembership([]string{self, ownerAddr}, int64(time.Second), int64(time.Hour))
	fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second},
		m, slog.New(slog.DiscardHandler))
	defer fwd.Shutdown(context.Background())

	r := m.Latest().Ring
	names := append(ownedBy(r, ownerAddr, 2), ownedBy(r, self, 1)...)
	tn := window.NewTenant("default")
	// 3, 7, 7, 30, 80 and 300, in bins as the OTLP receiver makes them.
	h := &window.HistPoint{Values: []float64{3, 7, 30, 80, 300}, Counts: []float64{1, 2, 1, 1, 1}, Count: 6, Sum: 427, Min: 3, Max: 300}
	now := time.Now().UnixNano()
	smp := []window.Sample{
		{Name: names[0], Type: window.TypeDistribution, Hist: h, Timestamp: now},
		{Name: names[1], Type: window.TypeCount, Value: 2, SampleRate: 1, Timestamp: now},
		{Name: names[2], Type: window.TypeDistribution, Hist: h, Timestamp: now},
	}
	for i := range smp {
		smp[i].Prepare(tn, nil)
	}
	o := &service.Outgoing{Tenant: tn, Now: now, Samples: smp, Results: make([]window.Reason, 3), Details: make([]string, 3),
		SampleSent: make([]bool, 3)}
	fwd.Forward(context.Background(), o)

	if want := []bool{true, true, false}; !slices.Equal(o.SampleSent, want) {
		t.Fatalf("sent %v, want %v", o.SampleSent, want)
	}
	if want := make([]window.Reason, 3); !slices.Equal(o.Results, want) {
		t.Fatalf("results %v %q, want all accepted", o.Results, o.Details)
	}
	got := owner.Samples()
	if len(got) != 2 || got[0].Name != names[0] || got[1].Name != names[1] || got[1].Value != 2 {
		t.Fatalf("owner took %+v", got)
	}
	if g := got[0].Hist; g == nil || fmt.Sprint(*g) != fmt.Sprint(*h) {
		t.Fatalf("owner took the histogram as %+v, want %+v", g, h)
	}
	if n := itemsCounted(t, fwd, "sample", "acked"); n != 2 {
		t.Errorf("acked %v items, want 2: a histogram point is one item, whatever its bins", n)
	}
	if n := itemsCounted(t, fwd, "sample", "local"); n != 1 {
		t.Errorf("local %v items, want 1", n)
	}
}

// itemsCounted reads aggd_cluster_items_total{kind, outcome} from f.
func itemsCounted(tb testing.TB, f *Forwarder, kind, outcome string) float64 {
	tb.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(f)
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "aggd_cluster_items_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["kind"] == kind && l["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	tb.Fatalf("no aggd_cluster_items_total{kind=%q,outcome=%q}", kind, outcome)
	return 0
}

// BenchmarkForward submits batches of 500 samples, or of 500 spans (100
// traces of 5), to a replica that owns them all (local) or none
// (forwarded: every item goes on to a second replica over the peer
// service, which remembers each call it applied), both on loopback in
// this process. The difference per item is the cost of forwarding it:
// encoding, the peer call, and the owner's decoding.
func BenchmarkForward(b *testing.B) {
	const self = "127.0.0.1:1"
	batch := &aggdv1.Batch{}
	for i := range 500 {
		batch.Samples = append(batch.Samples, &aggdv1.Sample{Name: "bench.count", Type: aggdv1.MetricType_METRIC_TYPE_COUNT,
			Value: 1, Tags: []string{fmt.Sprintf("ctx:%d", i%100), "env:bench"}})
	}
	// Spans: 100 traces of 5, as aggload sends them.
	spanBatch := &aggdv1.Batch{}
	now := time.Now().UnixNano()
	for i := range 500 {
		tr := i / 5
		spanBatch.Spans = append(spanBatch.Spans, &aggdv1.Span{TraceId: []byte{byte(tr), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
			SpanId: []byte{byte(i % 5), 1, 1, 1, 1, 1, 1, byte(tr)}, Service: "svc", Name: "http.request", Resource: fmt.Sprintf("/r/%d", i%20),
			StartUnixNano: now, DurationNano: 1000})
	}
	batches := map[string]*aggdv1.Batch{"samples": batch, "spans": spanBatch}
	ownerAddr := benchOwner(b)
	for _, items := range []string{"samples", "spans"} {
		for _, mode := range []string{"local", "forwarded"} {
			b.Run(items+"/"+mode, func(b *testing.B) {
				members := []string{self}
				if mode == "forwarded" {
					members = []string{ownerAddr}
				}
				fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second},
					NewMembership(members, int64(time.Second), int64(time.Hour)), slog.New(slog.DiscardHandler))
				defer fwd.Shutdown(context.Background())
				submitLoop(b, replica(b, discard{}, fwd), batches[items])
			})
		}
	}
}

// discard is an Ingester that keeps nothing.
type discard struct{}

func (discard) Ingest(*window.Batch) {}

func (discard) IngestSpans(*window.Tenant, int64, []spans.Span, []window.Reason) {}

// cpuTime returns the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// spanRecorder records the trace ids of the spans it takes.
type spanRecorder struct {
	mu     sync.Mutex
	traces map[[16]byte]int
}

func (r *spanRecorder) IngestSpans(_ *window.Tenant, _ int64, sps []spans.Span, results []window.Reason) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.traces == nil {
		r.traces = map[[16]byte]int{}
	}
	for i := range sps {
		if results[i] == window.Accepted {
			r.traces[sps[i].TraceID]++
		}
	}
}

func (r *spanRecorder) spans(id [16]byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.traces[id]
}

// Spans of one trace sent to different replicas all reach the trace's
// owner, whose span ingester (tail sampling) sees the trace whole; the
// other replica's sees none of it.
func TestForwardRoutesSpansByTrace(t *testing.T) {
	var lis [2]net.Listener
	var addrs []string
	for i := range lis {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis[i], addrs = l, append(addrs, l.Addr().String())
	}
	m := NewMembership(addrs, int64(time.Second), int64(time.Hour))
	var recs [2]spanRecorder
	for i := range lis {
		fwd := NewForwarder(Config{Self: addrs[i], Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second},
			m, slog.New(slog.DiscardHandler))
		t.Cleanup(func() { fwd.Shutdown(context.Background()) })
		servicetest.ServeOn(t, lis[i], discard{}, token, func(cfg *service.Config) {
			cfg.Forwarder = fwd
			cfg.Spans = &recs[i]
		})
	}
	const traces, perTrace = 40, 6
	now := time.Now().UnixNano()
	for part := range 2 { // each trace's spans split over both replicas
		b := &aggdv1.Batch{}
		for tr := range traces {
			for s := range perTrace / 2 {
				b.Spans = append(b.Spans, &aggdv1.Span{
					TraceId: []byte{byte(tr), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
					SpanId:  []byte{byte(part), byte(s), 1, 1, 1, 1, 1, byte(tr)},
					Service: "svc", Name: "op", StartUnixNano: now, DurationNano: 1000,
				})
			}
		}
		if ack := submit(t, addrs[part], b); ack.GetRejected() != 0 {
			t.Fatalf("replica %d refused spans: %v", part, ack.GetRejections())
		}
	}
	owned := [2]int{}
	for tr := range traces {
		id := [16]byte{byte(tr), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
		owner, _ := m.Owner(TraceHash("default", id), 0)
		for i := range recs {
			want := 0
			if addrs[i] == owner {
				want = perTrace
				owned[i]++
			}
			if got := recs[i].spans(id); got != want {
				t.Errorf("trace %d: replica %d holds %d spans, want %d (owner %s)", tr, i, got, want, owner)
			}
		}
	}
	if owned[0] == 0 || owned[1] == 0 {
		t.Errorf("traces owned %v: the test needs both replicas to own some", owned)
	}
}

// submitLoop submits batch, of 500 samples, spans or events, to the
// replica at addr for the benchmark's loop, and reports the wall and CPU time per item.
func submitLoop(b *testing.B, addr string, batch *aggdv1.Batch) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	c := aggdv1.NewAggregatorServiceClient(cc)
	req := &aggdv1.SubmitRequest{Batch: batch}
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		resp, err := c.Submit(context.Background(), req)
		if err != nil || resp.GetAck().GetAccepted() != 500 { // samples, spans or events
			b.Fatalf("ack %v, err %v", resp.GetAck(), err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*500), "ns/item")
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N*500), "cpu-ns/item")
}

// A late sample of a bucket owned by a member that has since left the
// list (a replica scaled away, which owns its old buckets while it runs)
// waits DepartedTimeout for it, not Timeout: once that replica has
// stopped, its forwards are refused owner_unavailable at once, with the
// reason, instead of holding the client's acks for the whole timeout. A
// member still in the list is waited for as long as Timeout allows.
func TestForwardToADepartedMember(t *testing.T) {
	const self = "127.0.0.1:1" // never dialled
	dead := func() string {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		defer l.Close()
		return l.Addr().String()
	}()
	now := time.Now()
	for _, tt := range []struct {
		name     string
		departed bool
	}{
		{"departed", true},
		{"still a member", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMembership([]string{self, dead}, int64(time.Second), int64(time.Hour))
			old := m.Latest().Ring
			later := []string{self, dead}
			if tt.departed {
				later = []string{self}
			}
			// The later list took effect 10 s ago; the sample is of the
			// bucket 20 s ago, owned by dead under the first list.
			m.Schedule(later, now.Add(-10*time.Second).UnixNano(), now.UnixNano())
			timeout := time.Minute
			if !tt.departed {
				timeout = 300 * time.Millisecond // the test does not wait a minute
			}
			fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second,
				Timeout: timeout, DepartedTimeout: 100 * time.Millisecond, InitialBackoff: 10 * time.Millisecond}, m, slog.New(slog.DiscardHandler))
			defer fwd.Shutdown(context.Background())
			entry := replica(t, &servicetest.Recorder{}, fwd)
			name := ownedBy(old, dead, 1)[0]
			start := time.Now()
			ack := submit(t, entry, &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: name, Type: aggdv1.MetricType_METRIC_TYPE_GAUGE, Value: 1,
				TimestampUnixNano: now.Add(-20 * time.Second).UnixNano()}}})
			took := time.Since(start)
			rj := ack.GetRejections()
			if len(rj) != 1 || rj[0].GetReason() != "owner_unavailable" {
				t.Fatalf("ack %v, want the sample refused owner_unavailable", ack)
			}
			if left := strings.Contains(rj[0].GetDetail(), "left the member list"); left != tt.departed {
				t.Errorf("detail %q: says the owner left: %v, want %v", rj[0].GetDetail(), left, tt.departed)
			}
			if tt.departed && took >= timeout/2 {
				t.Errorf("the forward to a departed owner took %v, as long as the timeout (%v)", took, timeout)
			}
			if !tt.departed && took < timeout {
				t.Errorf("the forward to a member gave up after %v, before the timeout (%v)", took, timeout)
			}
		})
	}
}

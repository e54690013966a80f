package dogstatsd_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/DataDog/datadog-go/v5/statsd"
	"go.uber.org/goleak"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/dogstatsd"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/flush/flushtest"
	"github.com/aggd/aggd/internal/overload"
	"github.com/aggd/aggd/internal/window"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/DataDog/datadog-go/v5/statsd.(*sender).sendLoop"))
}

type tenants []*window.Tenant

func (t tenants) List() []*window.Tenant { return t }

// start starts a server configured by cfg and the test's readers, packet
// size and limits.
func start(t *testing.T, cfg dogstatsd.Config) (*dogstatsd.Server, *flush.Aggregator, *window.Tenant) {
	t.Helper()
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 4})
	tn := window.NewTenant("statsd")
	cfg.Readers, cfg.PacketSize, cfg.Limits = 2, 8192, codec.DefaultLimits()
	s, err := dogstatsd.New(cfg, tn, agg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, agg, tn
}

// waitLines waits until the server has read n lines.
func waitLines(t *testing.T, s *dogstatsd.Server, n int64) {
	t.Helper()
	waitCount(t, &s.Lines, n, "lines")
}

// waitCount waits until counter c reaches n.
func waitCount(t *testing.T, c *atomic.Int64, n int64, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("read %d of %d %s", c.Load(), n, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func flushAll(t *testing.T, agg *flush.Aggregator, tn *window.Tenant) *flushtest.Exporter {
	exp := &flushtest.Exporter{}
	fl, err := flush.NewFlusher(agg, exp, tenants{tn}, flush.Config{Interval: 10 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fl.Shutdown(context.Background())
	return exp
}

func TestDatadogClientEveryKind(t *testing.T) {
	s, agg, tn := start(t, dogstatsd.Config{UDP: "127.0.0.1:0"})
	addr := s.Addrs()[0].String()
	c, err := statsd.New(addr, statsd.WithoutTelemetry())
	if err != nil {
		t.Fatal(err)
	}
	tags := []string{"env:prod"}
	c.Gauge("g", 1, tags, 1)
	c.Gauge("g", 7, tags, 1)
	for range 3 {
		c.Count("c", 2, tags, 1)
	}
	c.Incr("c", tags, 1)
	for _, v := range []float64{1, 2, 3, 4} {
		c.Histogram("h", v, tags, 1)
		c.Distribution("d", v*10, tags, 1)
	}
	c.Timing("t", 250*time.Millisecond, tags, 1)
	c.Set("s", "alice", tags, 1)
	c.Set("s", "bob", tags, 1)
	c.Set("s", "alice", tags, 1)
	c.Event(&statsd.Event{Title: "deploy", Text: "v2\nlive", Tags: tags, AlertType: statsd.Error})
	c.ServiceCheck(&statsd.ServiceCheck{Name: "db.up", Status: statsd.Critical, Message: "timeout", Tags: tags})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Lines the client does not send: packed values, sample rates, and a
	// datagram whose bad lines are skipped without losing the rest.
	raw, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("packed:1:2:3|h|#env:prod\nrated:1|c|@0.25|#env:prod"))
	raw.Write([]byte("ok1:1|c\nbroken|c\nbad:x|c\nnan:NaN|g\nok2:2|c|#host:web-9\nwhat:1|z\n_sc|x|7\nok3:3|c"))
	raw.Close()
	// The client aggregates gauges, counts and sets before sending: g, c and
	// two set members are 4 lines, then 4 h, 4 d, 1 t, the event and the
	// check; the raw datagrams hold 2 and 8 lines.
	waitLines(t, s, 4+4+4+1+1+1+2+8)

	s.Shutdown(context.Background())
	exp := flushAll(t, agg, tn)
	got := map[string]flushtestPoint{}
	for _, p := range exp.Points() {
		got[p.Name+"{"+p.Tags+"}"] = flushtestPoint{p.Value, p.Count, p.Type}
	}
	want := map[string]flushtestPoint{
		"g{env:prod}": {7, 0, window.TypeGauge}, "c{env:prod}": {7, 0, window.TypeCount}, "s{env:prod}": {2, 0, window.TypeSet},
		"h{env:prod}": {0, 4, window.TypeHistogram}, "d{env:prod}": {0, 4, window.TypeDistribution}, "t{env:prod}": {0, 1, window.TypeTiming},
		"packed{env:prod}": {0, 3, window.TypeHistogram}, "rated{env:prod}": {4, 0, window.TypeCount},
		"ok1{}": {1, 0, window.TypeCount}, "ok2{}": {2, 0, window.TypeCount}, "ok3{}": {3, 0, window.TypeCount},
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || math.Abs(g.v-w.v) > 1e-9 || g.n != w.n || g.typ != w.typ {
			t.Errorf("%s = %+v, want %+v", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d series, want %d: %v", len(got), len(want), got)
	}
	ev := exp.Events()
	if len(ev) != 1 || ev[0].Title != "deploy" || ev[0].Text != "v2\nlive" || ev[0].AlertType != window.AlertError || ev[0].Tenant != tn {
		t.Errorf("events %+v", ev)
	}
	var checks []string
	for _, c := range exp.Checks() {
		checks = append(checks, fmt.Sprintf("%s/%d/%s", c.Name, c.Status, c.Message))
	}
	if fmt.Sprint(checks) != "[db.up/2/timeout aggd.up/0/]" {
		t.Errorf("checks %v", checks)
	}
	rej := map[string]uint64{}
	for r := window.Reason(1); r < window.NumReasons; r++ {
		if n := tn.Rejected[r].Load(); n > 0 {
			rej[r.String()] = n
		}
	}
	if fmt.Sprint(rej) != "map[invalid_status:1 invalid_type:1 invalid_value:2 malformed:1]" {
		t.Errorf("rejections %v", rej)
	}
}

type flushtestPoint struct {
	v, n float64
	typ  window.MetricType
}

func TestUnixDatagramSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dsd.sock")
	s, agg, tn := start(t, dogstatsd.Config{Socket: path})
	c, err := statsd.New("unix://"+path, statsd.WithoutTelemetry())
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		c.Count("uds.c", 1, nil, 1)
	}
	c.Close()
	waitLines(t, s, 1)
	s.Shutdown(context.Background())
	pts := flushAll(t, agg, tn).Points()
	if len(pts) != 1 || pts[0].Name != "uds.c" || pts[0].Value != 10 {
		t.Fatalf("points %+v", pts)
	}
}

type level struct{ l atomic.Int32 }

func (l *level) Level() overload.Level { return overload.Level(l.l.Load()) }

// TestHardMemoryLimitDropsDatagrams: past the hard limit datagrams are read
// and dropped, counted; below it they are taken again.
func TestHardMemoryLimitDropsDatagrams(t *testing.T) {
	lv := &level{}
	s, agg, tn := start(t, dogstatsd.Config{UDP: "127.0.0.1:0", Load: lv})
	c, err := net.Dial("udp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, tc := range []struct {
		level   overload.Level
		refused int64
	}{
		{overload.Hard, 1},
		{overload.Soft, 1},
		{overload.OK, 1},
	} {
		lv.l.Store(int32(tc.level))
		if _, err := c.Write([]byte("mem.c:1|c")); err != nil {
			t.Fatal(err)
		}
		waitCount(t, &s.Packets, int64(i+1), "datagrams")
		if got := s.Refused.Load(); got != tc.refused {
			t.Fatalf("level %d: refused %d datagrams, want %d", tc.level, got, tc.refused)
		}
	}
	if m, q := s.RefusedMemory.Load(), s.RefusedQueue.Load(); m != 1 || q != 0 {
		t.Errorf("refused for memory %d, for the send queue %d; want 1 and 0", m, q)
	}
	s.Shutdown(context.Background())
	pts := flushAll(t, agg, tn).Points()
	if len(pts) != 1 || pts[0].Name != "mem.c" || pts[0].Value != 2 {
		t.Fatalf("points %+v, want mem.c = 2 (the datagram past the hard limit dropped)", pts)
	}
}

// TestFullSendQueueDropsDatagramsAsSuch: a datagram dropped because the
// send queue is full (overload.Pushback) counts as the queue's, not as
// memory's.
func TestFullSendQueueDropsDatagramsAsSuch(t *testing.T) {
	var full atomic.Bool
	full.Store(true)
	s, _, _ := start(t, dogstatsd.Config{UDP: "127.0.0.1:0", Load: overload.Pushback{Full: full.Load}})
	c, err := net.Dial("udp", s.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("q.c:1|c")); err != nil {
		t.Fatal(err)
	}
	waitCount(t, &s.Packets, 1, "datagrams")
	if r, m, q := s.Refused.Load(), s.RefusedMemory.Load(), s.RefusedQueue.Load(); r != 1 || m != 0 || q != 1 {
		t.Errorf("refused %d: for memory %d, for the send queue %d; want 1: 0 and 1", r, m, q)
	}
	s.Shutdown(context.Background())
}

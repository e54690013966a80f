package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

func TestLoadIsAckedAndCoversEveryContext(t *testing.T) {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 4})
	addr := servicetest.Serve(t, agg)
	o := options{addr: addr, streams: 3, batch: 100, contexts: 2000, tenants: 3, tags: 3,
		mix:      "gauge:1,count:1,histogram:1,distribution:1,set:1,rate:1,monotonic_count:1,timing:1",
		duration: 30 * time.Second, batches: 20, inflight: 4, seed: 1}
	r, err := run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.sentSamples != 6000 || r.accepted != 6000 || r.rejects != 0 || len(r.latencies) != 60 {
		t.Fatalf("sent %d, accepted %d, rejected %d (%s), acks %d; want 6000, 6000, 0, 60",
			r.sentSamples, r.accepted, r.rejects, r.firstReject, len(r.latencies))
	}
	// Each stream is its own tenant and sends 20 batches of 100: all 20
	// pre-encoded batches, so every one of the 2000 contexts.
	if n := agg.Contexts(); n != 3*2000 {
		t.Fatalf("%d contexts, want 6000", n)
	}
	var out bytes.Buffer
	r.print(&out, o)
	if !strings.Contains(out.String(), "acked: 6000 samples") || !strings.Contains(out.String(), "p99") {
		t.Fatalf("report:\n%s", out.String())
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []options{
		{duration: time.Hour, streams: 1, batch: 1, contexts: 1, tenants: 1, inflight: 1, tags: 1, mix: "gauge:1"},
		{duration: time.Second, streams: 0, batch: 1, contexts: 1, tenants: 1, inflight: 1, tags: 1, mix: "gauge:1"},
		{duration: time.Second, streams: 1, batch: 1, contexts: 1, tenants: 1, inflight: 1, tags: 1, mix: "gauge"},
		{duration: time.Second, streams: 1, batch: 1, contexts: 1, tenants: 1, inflight: 1, tags: 1, mix: "nope:1"},
	} {
		if _, err := run(context.Background(), o); err == nil {
			t.Errorf("%+v: accepted", o)
		}
	}
}

func TestSpansModeSendsFreshTraces(t *testing.T) {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 4})
	rec := &spanCounter{}
	addr := servicetest.ServeSpans(t, agg, rec)
	o := options{addr: addr, streams: 2, batch: 100, contexts: 300, tenants: 1, tags: 1, mix: "gauge:1",
		duration: 30 * time.Second, batches: 6, inflight: 2, seed: 1, spansPerTrace: 4}
	r, err := run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.accepted != 1200 || r.rejects != 0 {
		t.Fatalf("accepted %d, rejected %d (%s)", r.accepted, r.rejects, r.firstReject)
	}
	// 12 batches of 25 traces, each batch with fresh trace ids.
	if n := rec.traces(); n != 12*25 {
		t.Fatalf("%d distinct traces, want 300", n)
	}
}

type spanCounter struct {
	mu  sync.Mutex
	ids map[[16]byte]int
}

func (c *spanCounter) IngestSpans(_ *window.Tenant, _ int64, sp []spans.Span, _ []window.Reason) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ids == nil {
		c.ids = map[[16]byte]int{}
	}
	for i := range sp {
		c.ids[sp[i].TraceID]++
	}
}

func (c *spanCounter) traces() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

func TestPairsRunAggdAndBaselineAlternately(t *testing.T) {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 4})
	addr := servicetest.Serve(t, agg)
	o := options{addr: addr, streams: 2, batch: 50, contexts: 500, tenants: 1, tags: 2, mix: "gauge:1,count:1,set:1",
		duration: 30 * time.Second, batches: 10, inflight: 2, seed: 1}
	var out bytes.Buffer
	runs, err := runPairs(context.Background(), o, 2, &out)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 {
		t.Fatalf("%d pairs, want 2", len(runs))
	}
	for i, p := range runs {
		for _, r := range []*result{p.aggd, p.base} {
			if r.accepted != 1000 || r.rejects != 0 || len(r.latencies) != 20 {
				t.Fatalf("pair %d: accepted %d, rejected %d, acks %d; want 1000, 0, 20", i, r.accepted, r.rejects, len(r.latencies))
			}
		}
	}
	// Only aggd's runs reached the aggregator: 2 runs of the same 500
	// contexts.
	if n := agg.Contexts(); n != 500 {
		t.Fatalf("%d contexts, want 500", n)
	}
	if !strings.Contains(out.String(), "over 2 interleaved pairs") {
		t.Fatalf("report:\n%s", out.String())
	}

	// A baseline of another process (-serve-baseline, -baseline-addr).
	base, stop, err := startBaseline("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	o.baselineAddr = base
	if runs, err = runPairs(context.Background(), o, 1, io.Discard); err != nil || runs[0].base.accepted != 1000 {
		t.Fatalf("pairs with an outside baseline: %v, %v", runs, err)
	}
	// With their process ids, each run reports its server's CPU: here
	// both serve in this process, so it is this process's CPU over the
	// run, which getrusage measures too (/proc to a 10 ms tick).
	o.pid, o.baselinePID = os.Getpid(), os.Getpid()
	out.Reset()
	if runs, err = runPairs(context.Background(), o, 1, &out); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*result{runs[0].aggd, runs[0].base} {
		if d := r.serverCPU - r.cpu; d < -20*time.Millisecond || d > 20*time.Millisecond {
			t.Errorf("server CPU %v, this process's %v over the same run", r.serverCPU, r.cpu)
		}
	}
	if !strings.Contains(out.String(), "server CPU per item aggd") {
		t.Fatalf("report:\n%s", out.String())
	}
	if _, _, err := startBaseline("0.0.0.0:0"); err == nil {
		t.Fatal("the baseline served beyond loopback")
	}
}

// With -refs every stream declares each context's reference the first
// time it sends it and then sends references: every sample is accepted
// into the same contexts as with full names.
func TestRefsModeDeclaresOncePerStream(t *testing.T) {
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 4})
	addr := servicetest.Serve(t, agg)
	o := options{addr: addr, streams: 2, batch: 100, contexts: 1000, tenants: 1, tags: 3, mix: "gauge:1,count:1,set:1,distribution:1",
		duration: 30 * time.Second, batches: 25, inflight: 4, seed: 1, refs: true}
	r, err := run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if r.accepted != 5000 || r.rejects != 0 {
		t.Fatalf("accepted %d, rejected %d (%s); want 5000, 0", r.accepted, r.rejects, r.firstReject)
	}
	if n := agg.Contexts(); n != 1000 {
		t.Fatalf("%d contexts, want 1000", n)
	}
	full, _ := encodeBatches(options{batch: 100, contexts: 100, tags: 3, mix: "count:1", seed: 1})
	refs, _ := encodeBatches(options{batch: 100, contexts: 100, tags: 3, mix: "count:1", seed: 1, refs: true})
	if len(refs[0].data)*3 > len(full[0].data) || len(refs[0].declare) <= len(full[0].data) {
		t.Fatalf("a batch by reference is %d bytes, with full names %d", len(refs[0].data), len(full[0].data))
	}
}

// TestPhasesSplitLatencyBySecondOfInterval checks that -phases files each
// ack under the second of the interval its batch was sent in, over every
// interval, and leaves the overall figures whole.
func TestPhasesSplitLatencyBySecondOfInterval(t *testing.T) {
	const s = int64(time.Second)
	base := 1_700_000_000 * s // a multiple of 10 s
	r := &result{elapsed: time.Second}
	for i, at := range []int64{base + s/2, base + 10*s + s/4, base + 3*s, base + 9*s + s - 1, base + 20*s} {
		r.sent = append(r.sent, at)
		r.latencies = append(r.latencies, time.Duration(i+1)*time.Millisecond)
	}
	var out bytes.Buffer
	r.print(&out, options{phases: 10 * time.Second, mix: "count:1"})
	for _, want := range []string{
		"sent  0s into the interval: p50 2ms p99 5ms max 5ms (3 acks)",
		"sent  3s into the interval: p50 3ms p99 3ms max 3ms (1 acks)",
		"sent  9s into the interval: p50 4ms p99 4ms max 4ms (1 acks)",
		"ack latency: p50 3ms p99 5ms max 5ms (5 acks)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "sent  1s") {
		t.Errorf("a second without acks is reported:\n%s", out.String())
	}
}

// TestSpanBatchesAreStampedWhenSent checks that a span batch sent carries
// the time of sending as every span's start, and fresh trace ids, whatever
// time it was encoded at.
func TestSpanBatchesAreStampedWhenSent(t *testing.T) {
	o := options{batch: 60, contexts: 300, spansPerTrace: 3, seed: 1}
	ts, err := encodeSpanBatches(o)
	if err != nil {
		t.Fatal(err)
	}
	for i, start := range []time.Time{time.Unix(1_800_000_000, 5), time.Now().Add(time.Hour)} {
		for k, tpl := range ts {
			body := slices.Clone(tpl.data)
			fresh := uint64(i+1)<<48 | uint64(k)
			tpl.stamp(body, fresh, start)
			var b aggdv1.Batch
			if err := proto.Unmarshal(body, &b); err != nil {
				t.Fatal(err)
			}
			if len(b.Spans) != o.batch {
				t.Fatalf("%d spans, want %d", len(b.Spans), o.batch)
			}
			for _, sp := range b.Spans {
				if sp.StartUnixNano != start.UnixNano() {
					t.Fatalf("span starts at %d, want %d", sp.StartUnixNano, start.UnixNano())
				}
				if got := binary.BigEndian.Uint64(sp.TraceId); got != fresh {
					t.Fatalf("trace id starts %x, want %x", got, fresh)
				}
			}
		}
	}
}

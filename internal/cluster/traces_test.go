package cluster

import (
	"context"
	"log/slog"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// keepErrors keeps the traces with a span in error and drops the rest.
const keepErrors = `
[trace]
data_ttl = "10s"
group_key = "trace_id"

[[trace.sampling_pipeline]]
name = "errors"
type = "condition"
condition = '{ status = "error" }'
action = "keep"
`

// A member list moves traces from the replica holding them: at its first
// tick under the new list, that replica hands the held spans and the
// decisions of the moved traces to their new owner, and keeps the rest.
// The new owner judges a moved trace whole, with the spans it takes after
// the change, and late spans of a trace decided before the change follow
// that decision; a span handed over again (a restarted sender's log) is
// held once.
func TestMoveTracesHandsHeldTracesAndDecisions(t *testing.T) {
	policy, err := spans.ParsePolicy(keepErrors)
	if err != nil {
		t.Fatal(err)
	}
	heir := spans.NewSampler(policy, spans.DefaultLimits())
	heirAddr := servicetest.ServePeers(t, discard{}, token, func(cfg *service.Config) {
		cfg.Spans = spans.NewProcessor(discard{}, heir, nil)
		cfg.Decisions = heir
	})
	const self = "127.0.0.1:1"
	m := NewMembership([]string{self}, int64(time.Second), int64(time.Hour))
	fwd := NewForwarder(Config{Self: self, Token: token, Timing: window.DefaultConfig().Timing(), Interval: time.Second}, m, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { fwd.Shutdown(context.Background()) })
	now := time.Now().UnixNano()
	v := m.Schedule([]string{self, heirAddr}, now+int64(time.Minute), now)

	// Traces by what becomes of them: moved or not, held or decided
	// before the change, kept (a span in error) or dropped.
	type trace struct {
		name          string
		moved, held   bool
		keep          bool
		id            [16]byte
		before, after int // spans taken before the change, sent to the heir after
		want          int // spans the heir exports
	}
	traces := []*trace{
		{name: "moved, held, kept", moved: true, held: true, keep: true, before: 2, after: 1, want: 3},
		{name: "moved, held, dropped", moved: true, held: true, before: 2, after: 1},
		{name: "moved, decided kept", moved: true, keep: true, before: 2, after: 1, want: 1},
		{name: "moved, decided dropped", moved: true, before: 2, after: 1},
		{name: "kept here, held", held: true, keep: true, before: 2},
	}
	next := byte(0)
	for _, tr := range traces {
		for {
			next++
			tr.id = [16]byte{next, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}
			if (v.owner(TraceHash("default", tr.id)) == heirAddr) == tr.moved {
				break
			}
		}
	}
	tn := window.NewTenant("default")
	old := spans.NewSampler(policy, spans.DefaultLimits())
	span := func(tr *trace, n int) spans.Span {
		return spans.Span{TraceID: tr.id, SpanID: [8]byte{byte(n + 1)}, Service: "svc", Name: "op", Start: now, Duration: 1000,
			Error: tr.keep && n == 0}
	}
	for _, tr := range traces {
		if tr.held {
			continue
		}
		for n := range tr.before {
			sp := span(tr, n)
			old.Add(tn, &sp, now-int64(30*time.Second))
		}
	}
	old.Advance(now-int64(15*time.Second), false) // decides those
	for _, tr := range traces {
		if !tr.held {
			continue
		}
		for n := range tr.before {
			sp := span(tr, n)
			old.Add(tn, &sp, now)
		}
	}
	ctx := context.Background()
	fwd.MoveTraces(ctx, old, now) // the old list is in force: nothing moves
	if got := old.C.HeldTraces.Load(); got != 3 {
		t.Fatalf("before the change the old owner holds %d traces, want 3", got)
	}
	after := v.Since + int64(time.Second)
	fwd.MoveTraces(ctx, old, after)
	if got := old.C.HeldTraces.Load(); got != 1 {
		t.Errorf("after the change the old owner holds %d traces, want 1 (the one it still owns)", got)
	}
	if got := itemsCounted(t, fwd, "held_span", "acked"); got != 4 {
		t.Errorf("held spans handed over and acked: %v, want 4", got)
	}
	if got := itemsCounted(t, fwd, "decision", "acked"); got != 2 {
		t.Errorf("decisions handed over and acked: %v, want 2", got)
	}
	// The old owner's log replayed after a restart holds the first moved
	// trace again: handed over again, its spans are held once.
	for n := range traces[0].before {
		sp := span(traces[0], n)
		old.Add(tn, &sp, after)
	}
	fwd.MoveTraces(ctx, old, after+int64(time.Second))

	b := &aggdv1.Batch{}
	for _, tr := range traces {
		for n := tr.before; n < tr.before+tr.after; n++ {
			b.Spans = append(b.Spans, &aggdv1.Span{TraceId: tr.id[:], SpanId: []byte{byte(n + 1), 0, 0, 0, 0, 0, 0, 0},
				Service: "svc", Name: "op", StartUnixNano: now, DurationNano: 1000})
		}
	}
	if ack := submit(t, heirAddr, b); ack.GetRejected() != 0 {
		t.Fatalf("the heir refused spans: %v", ack.GetRejections())
	}
	got := map[[16]byte]int{}
	parts := map[[16]byte]int{}
	for _, x := range heir.Advance(after+int64(time.Hour), false) {
		got[x.TraceID] += len(x.Spans)
		parts[x.TraceID]++
	}
	for _, tr := range traces {
		if got[tr.id] != tr.want {
			t.Errorf("%s: the heir exported %d spans, want %d", tr.name, got[tr.id], tr.want)
		}
		if parts[tr.id] > 1 {
			t.Errorf("%s: the heir exported it in %d parts, want one", tr.name, parts[tr.id])
		}
	}
}

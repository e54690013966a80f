package cluster

import (
	"context"
	"sync"

	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

var _ spans.Mover = (*Forwarder)(nil)

// MoveTraces hands the traces h holds, and the decisions it remembers, of
// traces another replica owns at now to that replica: the spans marked
// handed over (it holds them with the spans it takes of the trace from
// now on, logs them and makes no stats of them), the decisions in
// ForwardRequest.traces_kept and traces_dropped (its later spans follow
// them there). Spans are routed by the bucket of their arrival, so a
// trace moves when a member list takes effect; MoveTraces looks for
// moved traces on its first call, once per list in force, and on every
// call until a forward routed by the previous list can no longer arrive
// (Timeout and two intervals after the list took effect), so that a span
// reaching this replica late is handed on too. What a new owner does not
// take within Timeout is held here again, and decided here (counted
// undelivered or refused). It returns once every new owner answered.
func (f *Forwarder) MoveTraces(ctx context.Context, h *spans.Sampler, now int64) {
	if f.m.Single(f.cfg.Self) {
		return
	}
	bucket := window.Start(now, int64(f.cfg.Interval))
	v := inForce(f.m.Versions(), bucket)
	if f.swept.Load() == v.N && now >= v.Since+int64(f.cfg.Timeout+2*f.cfg.Interval) {
		return
	}
	f.swept.Store(v.N)
	type heirTenant struct {
		heir string
		t    *window.Tenant
	}
	owners := map[heirTenant]*service.Outgoing{}
	decisions := map[heirTenant][]spans.Decision{}
	moved := func(t *window.Tenant, id [16]byte) bool {
		o := v.owner(TraceHash(t.ID, id))
		return o != f.cfg.Self && o != ""
	}
	traces, decided := h.Move(moved)
	if len(traces) == 0 && len(decided) == 0 {
		return
	}
	for _, tr := range traces {
		k := heirTenant{v.owner(TraceHash(tr.Tenant.ID, tr.TraceID)), tr.Tenant}
		o := owners[k]
		if o == nil {
			o = &service.Outgoing{Tenant: tr.Tenant, Now: now}
			owners[k] = o
		}
		for _, sp := range tr.Spans {
			sp.HandedOver = true
			o.Spans = append(o.Spans, sp)
		}
	}
	for _, d := range decided {
		k := heirTenant{v.owner(TraceHash(d.Tenant.ID, d.TraceID)), d.Tenant}
		decisions[k] = append(decisions[k], d)
		if owners[k] == nil {
			owners[k] = &service.Outgoing{Tenant: d.Tenant, Now: now}
		}
	}
	var wg sync.WaitGroup
	for k, o := range owners {
		wg.Go(func() {
			n := len(o.Spans)
			o.SpanResults, o.SpanDetails, o.SpanSent = make([]window.Reason, n), make([]string, n), make([]bool, n)
			g := &group{owner: k.heir, version: v.N, handOver: true, decisions: decisions[k]}
			for i := range o.Spans {
				g.spans = append(g.spans, i)
			}
			f.encode(g, o)
			err := f.deliver(ctx, g, o)
			// What the new owner did not take is held here again, and
			// decided here.
			for i := range o.Spans {
				if o.SpanResults[i] != window.Accepted {
					sp := o.Spans[i]
					sp.HandedOver = false
					h.Add(o.Tenant, &sp, now)
				}
			}
			if err != nil {
				for _, d := range g.decisions {
					h.Remember(d.Tenant, d.TraceID, d.Keep, now)
				}
			}
		})
	}
	wg.Wait()
	f.log.Info("traces handed over", "membership_version", v.N, "traces", len(traces), "decisions", len(decided))
}

package upstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/aggd/aggd/internal/window"
)

// Upstream is one intake: it encodes the part of a flush routed to it and
// delivers it. JSONLines, Datadog and OTLP are upstreams.
type Upstream interface {
	Name() string
	// Export encodes the aggregates, events and checks of f whose tenant
	// routes says go here; it must not keep f after returning.
	Export(ctx context.Context, f *window.Flush, routes Routes) error
	Start(ctx context.Context) error
	// Shutdown delivers what is queued within ctx, then releases the
	// upstream's connections.
	Shutdown(ctx context.Context) error
}

// Queuer is an upstream with a send queue, which it reports: its state,
// and whether it is at its bound (Pipeline.Full).
type Queuer interface {
	Queue() QueueState
	Full() bool
}

var (
	_ Upstream = (*JSONLines)(nil)
	_ Upstream = (*Datadog)(nil)
	_ Upstream = (*OTLP)(nil)
	_ Queuer   = (*Datadog)(nil)
	_ Queuer   = (*OTLP)(nil)
)

// TenantRoute sends one tenant's data to its own upstreams with its own
// credentials, instead of the defaults.
// The toml keys are those of a [[tenant]] entry of the tenants file.
type TenantRoute struct {
	Upstreams   []string               `toml:"upstreams"`
	Credentials map[string]Credentials `toml:"credentials"` // by upstream name
}

// Router fans each flush out to upstreams by tenant. It implements
// flush.Exporter. Tenants with a TenantRoute go to its upstreams; all
// others go to the default upstreams with the upstreams' own credentials.
type Router struct {
	upstreams []Upstream
	defaults  []string
	tenants   map[string]TenantRoute
}

// NewRouter returns a router over upstreams. Every name in defaults and in
// the tenants' routes must be an upstream's.
func NewRouter(upstreams []Upstream, defaults []string, tenants map[string]TenantRoute) (*Router, error) {
	known := map[string]bool{}
	for _, u := range upstreams {
		if known[u.Name()] {
			return nil, fmt.Errorf("upstream %q is defined twice", u.Name())
		}
		known[u.Name()] = true
	}
	for _, n := range defaults {
		if !known[n] {
			return nil, fmt.Errorf("default upstream %q is not defined", n)
		}
	}
	for id, r := range tenants {
		for _, n := range r.Upstreams {
			if !known[n] {
				return nil, fmt.Errorf("tenant %q: upstream %q is not defined", id, n)
			}
		}
		for n := range r.Credentials {
			if !slices.Contains(r.Upstreams, n) {
				return nil, fmt.Errorf("tenant %q: credentials for upstream %q, which the tenant does not use", id, n)
			}
		}
	}
	return &Router{upstreams: upstreams, defaults: defaults, tenants: tenants}, nil
}

// Routes returns the routing of upstream name.
func (r *Router) Routes(name string) Routes {
	byDefault := slices.Contains(r.defaults, name)
	return func(t *window.Tenant) (Credentials, bool) {
		tr, own := r.tenants[t.ID]
		if !own {
			return Credentials{}, byDefault
		}
		if !slices.Contains(tr.Upstreams, name) {
			return Credentials{}, false
		}
		return tr.Credentials[name], true
	}
}

// Export implements flush.Exporter: every upstream encodes f concurrently.
func (r *Router) Export(ctx context.Context, f *window.Flush) error {
	return r.concurrently(func(u Upstream) error { return u.Export(ctx, f, r.Routes(u.Name())) })
}

// Start starts every upstream.
func (r *Router) Start(ctx context.Context) error {
	for _, u := range r.upstreams {
		if err := u.Start(ctx); err != nil {
			return fmt.Errorf("upstream %s: %w", u.Name(), err)
		}
	}
	return nil
}

// Shutdown shuts every upstream down concurrently within ctx.
func (r *Router) Shutdown(ctx context.Context) error {
	return r.concurrently(func(u Upstream) error { return u.Shutdown(ctx) })
}

// concurrently runs do for every upstream at once and joins the errors,
// each named by its upstream.
func (r *Router) concurrently(do func(Upstream) error) error {
	errs := make([]error, len(r.upstreams))
	var wg sync.WaitGroup
	for i, u := range r.upstreams {
		wg.Go(func() {
			if err := do(u); err != nil {
				errs[i] = fmt.Errorf("upstream %s: %w", u.Name(), err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Queues returns the send queue of every upstream that has one.
func (r *Router) Queues() []QueueState {
	var out []QueueState
	for _, u := range r.upstreams {
		if q, ok := u.(Queuer); ok {
			out = append(out, q.Queue())
		}
	}
	return out
}

// Full reports whether some upstream's send queue is at its bound.
func (r *Router) Full() bool {
	for _, u := range r.upstreams {
		if q, ok := u.(Queuer); ok && q.Full() {
			return true
		}
	}
	return false
}

// Full reports whether the send queue is at its bound.
func (d *Datadog) Full() bool { return d.pipe.Full() }

// Full reports whether the send queue is at its bound.
func (o *OTLP) Full() bool { return o.pipe.Full() }

// Queue returns the send queue's state.
func (d *Datadog) Queue() QueueState { return d.pipe.State() }

// Queue returns the send queue's state.
func (o *OTLP) Queue() QueueState { return o.pipe.State() }

package spans

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aggd/aggd/internal/window"
)

// StatsSink takes the stats samples of spans: the aggregator, or in
// cluster mode what forwards each to its context's owner.
type StatsSink interface {
	Ingest(b *window.Batch)
}

// ReplaySink is a StatsSink that takes the stats of replayed spans apart
// (service.Routed: only those this replica owns).
type ReplaySink interface {
	IngestReplayed(b *window.Batch)
}

// Processor takes spans: their stats go to a StatsSink, then the spans to
// the Sampler. It implements service.SpanIngester and is safe for
// concurrent use.
type Processor struct {
	sink     StatsSink
	sampler  *Sampler
	observer Observer
	cache    *statsCache
	states   sync.Pool
}

// Observer sees every accepted span (aggregation rules). cutoff is
// non-zero for replayed spans: the tick of the last flush that carried
// them, whose windows must not take them again. ObserveSpan reports
// whether a rule selected a field of the span.
type Observer interface {
	ObserveSpan(t *window.Tenant, s *Span, now, cutoff int64) bool
}

type procState struct {
	stats Stats
	batch window.Batch
	first []int
}

// NewProcessor returns a processor feeding sink and sampler that shows
// every accepted span to o (nil: to none).
func NewProcessor(sink StatsSink, sampler *Sampler, o Observer) *Processor {
	p := &Processor{sink: sink, sampler: sampler, observer: o, cache: newStatsCache(statsCacheShardSize)}
	p.states.New = func() any { return &procState{stats: Stats{cache: p.cache}} }
	return p
}

// IngestSpans aggregates the stats of the accepted spans and holds them for
// sampling. A span whose stats are refused (its end is too old or too new
// for the windows, or its tenant is at its context limit) is refused whole.
// A span marked RulesOnly (another replica runs its trace) is only
// observed by the rules, and refused rules_mismatch when no rule selects
// it; one marked HandedOver (a trace moved here) is only held.
func (p *Processor) IngestSpans(t *window.Tenant, now int64, sp []Span, results []window.Reason) {
	p.ingest(t, now, sp, results, 0, true, false)
}

// ReplaySpans takes spans back from a write-ahead log after a restart:
// their stats, except in windows the flush at cutoff (zero: none) already
// carried, and the spans themselves to tail sampling only when sample is
// set.
func (p *Processor) ReplaySpans(t *window.Tenant, now int64, sp []Span, results []window.Reason, cutoff int64, sample bool) {
	p.ingest(t, now, sp, results, cutoff, sample, true)
}

func (p *Processor) ingest(t *window.Tenant, now int64, sp []Span, results []window.Reason, cutoff int64, sample, replay bool) {
	st := p.states.Get().(*procState)
	defer p.states.Put(st)
	st.batch.Reset()
	st.stats.Reset()
	st.first = st.first[:0]
	st.batch.Tenant, st.batch.Now, st.batch.Cutoff = t, now, cutoff
	for i := range sp {
		st.first = append(st.first, len(st.batch.Samples))
		if results[i] != window.Accepted || sp[i].RulesOnly || sp[i].HandedOver {
			continue
		}
		st.stats.Add(&st.batch, &sp[i])
	}
	if rs, ok := p.sink.(ReplaySink); ok && replay {
		rs.IngestReplayed(&st.batch)
	} else {
		p.sink.Ingest(&st.batch)
	}
	st.first = append(st.first, len(st.batch.Samples))
	for i := range sp {
		if results[i] != window.Accepted {
			continue
		}
		if sp[i].RulesOnly {
			// Its trace runs on another replica, which made its stats
			// and holds it: only the rule groups owned here take it.
			if p.observer == nil || !p.observer.ObserveSpan(t, &sp[i], now, cutoff) {
				results[i] = window.ReasonRulesMismatch
			}
			continue
		}
		if sp[i].HandedOver {
			// Another replica took it, made its stats and fed its
			// rules, and held it until a member list moved its trace
			// here: it is only held.
			if sample {
				p.sampler.Add(t, &sp[i], now)
			}
			continue
		}
		if r := st.batch.Results[st.first[i]]; r != window.Accepted {
			results[i] = r
			continue
		}
		// A stats sample whose owner (another replica) could not be
		// reached refuses its span, which the client sends again.
		if slices.Contains(st.batch.Results[st.first[i]:st.first[i+1]], window.ReasonOwnerUnavailable) {
			results[i] = window.ReasonOwnerUnavailable
			continue
		}
		if p.observer != nil {
			p.observer.ObserveSpan(t, &sp[i], now, cutoff)
		}
		if sample {
			p.sampler.Add(t, &sp[i], now)
		}
	}
}

// Exporter sends kept traces upstream. It must not keep the slice.
type Exporter interface {
	ExportTraces(ctx context.Context, traces []Trace) error
}

// Mover hands the traces a sampler holds that another replica now runs
// to that replica (cluster.Forwarder).
type Mover interface {
	MoveTraces(ctx context.Context, h *Sampler, now int64)
}

// Runner decides held traces every second and exports the kept ones.
// Start may be called once; Shutdown after the first returns at once.
type Runner struct {
	mover    atomic.Pointer[moverRef]
	sampler  *Sampler
	exp      Exporter
	timeout  time.Duration
	log      *slog.Logger
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	started  bool
}

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	// Sampler holds the traces; Exporter sends the kept ones.
	Sampler  *Sampler
	Exporter Exporter
	// Timeout bounds one export.
	Timeout time.Duration
	// Logger logs failed exports.
	Logger *slog.Logger
}

// Validate reports a missing or out-of-range setting.
func (c RunnerConfig) Validate() error {
	if c.Sampler == nil || c.Exporter == nil || c.Logger == nil {
		return errors.New("spans: a runner needs a sampler, an exporter and a logger")
	}
	if c.Timeout <= 0 {
		return errors.New("spans: the runner's export timeout must be positive")
	}
	return nil
}

// NewRunner returns a runner of cfg, or why cfg is not valid.
func NewRunner(cfg RunnerConfig) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Runner{sampler: cfg.Sampler, exp: cfg.Exporter, timeout: cfg.Timeout, log: cfg.Logger,
		stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// Start starts the decision loop; it exits when Shutdown is called.
func (r *Runner) Start(context.Context) error {
	r.started = true
	go func() {
		defer close(r.done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case now := <-t.C:
				if err := r.export(context.Background(), now, false); err != nil {
					r.log.Error("trace export failed", "err", err)
				}
			}
		}
	}()
	return nil
}

type moverRef struct{ m Mover }

// MoveBy makes each tick, before it decides, hand the traces other
// replicas now run to them by m. Call it once the sampler holds what a
// write-ahead log restored. It is safe to call while the runner runs.
func (r *Runner) MoveBy(m Mover) { r.mover.Store(&moverRef{m}) }

// export decides the traces due at now (all when final is set) and exports
// the kept ones, within the runner's timeout and ctx.
func (r *Runner) export(ctx context.Context, now time.Time, final bool) error {
	if m := r.mover.Load(); m != nil {
		m.m.MoveTraces(ctx, r.sampler, now.UnixNano())
	}
	traces := r.sampler.Advance(now.UnixNano(), final)
	if len(traces) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := r.exp.ExportTraces(ctx, traces); err != nil {
		return fmt.Errorf("trace export of %d traces: %w", len(traces), err)
	}
	return nil
}

// Shutdown stops the loop, then decides every held trace and exports the
// kept ones within ctx's deadline. A second call returns nil at once.
func (r *Runner) Shutdown(ctx context.Context) error {
	first := false
	r.stopOnce.Do(func() { close(r.stop); first = true })
	if !first {
		return nil
	}
	if r.started {
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return r.export(ctx, time.Now(), true)
}

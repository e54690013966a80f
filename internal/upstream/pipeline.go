package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Payload is one request body, encoded and compressed, waiting to be sent.
type Payload struct {
	// Tenant whose data the payload carries.
	Tenant string
	// Kind says what the body is to its Sender: for Datadog the endpoint
	// ("series", "sketches", "check_run", "event"); for OTLP "metrics".
	Kind string
	// Body is the request body, compressed as Encoding says.
	Body []byte
	// Encoding is the Content-Encoding of Body: "zstd", "gzip" or "".
	Encoding string
	// Header holds per-tenant credentials and other request headers.
	Header http.Header
	// Points is the number of aggregates, events or checks in Body.
	Points int
	// Replaces marks a payload that carries points replacing points of
	// payloads queued before it (corrections of flushed buckets): it is
	// sent only once every payload queued before it is done, so that an
	// intake keeping the last write ends with the corrected value.
	Replaces bool

	spoolKey uint64 // the payload's key in the pipeline's spool; 0 if none
	seq      uint64 // the payload's place in the queue's order
}

// queueOrder tracks which queued payloads are not done yet, so that a
// payload that replaces earlier points waits for them.
type queueOrder struct {
	mu      sync.Mutex
	next    uint64
	open    map[uint64]struct{}
	changed chan struct{} // closed and replaced whenever a payload is done
}

// begin gives pl the next place in the order.
func (o *queueOrder) begin(pl *Payload) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.open == nil {
		o.open, o.changed = map[uint64]struct{}{}, make(chan struct{})
	}
	o.next++
	pl.seq = o.next
	o.open[pl.seq] = struct{}{}
}

// end marks pl done.
func (o *queueOrder) end(pl *Payload) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.open[pl.seq]; !ok {
		return
	}
	delete(o.open, pl.seq)
	close(o.changed)
	o.changed = make(chan struct{})
}

// wait returns once no payload queued before pl is open, or stop ends.
func (o *queueOrder) wait(stop <-chan struct{}, pl *Payload) {
	for {
		o.mu.Lock()
		earlier := false
		for seq := range o.open {
			if seq < pl.seq {
				earlier = true
				break
			}
		}
		ch := o.changed
		o.mu.Unlock()
		if !earlier {
			return
		}
		select {
		case <-ch:
		case <-stop:
			return
		}
	}
}

// Sender delivers payloads to one intake. Send returns nil once the intake
// has accepted the payload; a *PermanentError when retrying cannot help;
// any other error is retried, after RetryAfterError.After if it is one.
type Sender interface {
	Send(ctx context.Context, p *Payload) error
}

// PermanentError is a failure that no retry can fix, such as HTTP 400.
type PermanentError struct {
	// Reason is a short label for metrics, such as "http_400".
	Reason string
	Err    error
}

func (e *PermanentError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// RetryAfterError is a retryable failure for which the intake asked for a
// delay (HTTP Retry-After, gRPC RetryInfo).
type RetryAfterError struct {
	After time.Duration
	// Reason is a short label for metrics, such as "http_429".
	Reason string
	Err    error
}

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("%s (retry after %v): %v", e.Reason, e.After, e.Err)
}
func (e *RetryAfterError) Unwrap() error { return e.Err }

// ReasonError labels a retryable failure for metrics, such as "http_503"
// or "timeout".
type ReasonError struct {
	Reason string
	Err    error
}

func (e *ReasonError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *ReasonError) Unwrap() error { return e.Err }

func reasonOf(err error) string {
	var p *PermanentError
	var r *RetryAfterError
	var re *ReasonError
	switch {
	case errors.As(err, &p):
		return p.Reason
	case errors.As(err, &r):
		return r.Reason
	case errors.As(err, &re):
		return re.Reason
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "error"
}

// PipelineMetrics is told what a pipeline does. Implementations must be
// safe for concurrent use.
type PipelineMetrics interface {
	Sent(upstream string, points int, latency time.Duration)
	Failed(upstream, reason string)
	Lost(upstream, reason string, points int)
	Queue(upstream string, depth, bytes int)
	// Started is told once, when the pipeline starts, the bound of its
	// queue: capacity payloads in memory, or capacityBytes (nonzero) on
	// disk.
	Started(upstream string, capacity int, capacityBytes int64)
}

// PipelineConfig configures a Pipeline.
type PipelineConfig struct {
	// Name labels the pipeline's metrics and logs.
	Name string
	// QueueSize bounds the payloads waiting to be sent. With payloads at
	// most MaxPayloadBytes, it bounds the queue's memory too.
	QueueSize int
	// Senders is the number of concurrent requests.
	Senders int
	// Timeout bounds one request.
	Timeout time.Duration
	// InitialBackoff and MaxBackoff bound the delay between attempts; each
	// retry doubles the ceiling and waits a random time below it.
	InitialBackoff, MaxBackoff time.Duration
	// Tracer, if set, traces every attempt (span aggd.send).
	Tracer trace.Tracer
	// Spool, if set, keeps the payloads on disk until the intake takes
	// them: the queue is bounded by its bytes instead of QueueSize, and
	// the payloads it held from before are sent first. The pipeline's
	// Shutdown closes it.
	Spool *Spool
}

// DefaultPipelineConfig returns the documented defaults.
func DefaultPipelineConfig(name string) PipelineConfig {
	return PipelineConfig{Name: name, QueueSize: 1000, Senders: 8, Timeout: 10 * time.Second,
		InitialBackoff: 500 * time.Millisecond, MaxBackoff: 30 * time.Second}
}

// Validate reports a setting out of range.
func (c PipelineConfig) Validate() error {
	if c.QueueSize < 1 || c.Senders < 1 || c.Timeout <= 0 || c.InitialBackoff <= 0 || c.MaxBackoff < c.InitialBackoff {
		return fmt.Errorf("upstream %s: queue size, senders and timeout must be positive, max backoff at least the initial one", c.Name)
	}
	return nil
}

// Pipeline is a bounded queue of payloads and the senders that deliver
// them, retrying with exponential backoff and jitter until the intake
// accepts a payload, refuses it permanently, or shutdown's deadline passes.
// It is safe for concurrent use.
type Pipeline struct {
	cfg     PipelineConfig
	send    Sender
	metrics PipelineMetrics
	log     *slog.Logger

	queue   chan *Payload
	order   queueOrder
	spool   *Spool
	feeding sync.WaitGroup
	bytes   atomic.Int64
	full    atomic.Bool // logged once per episode
	stop    context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closing sync.Once
}

// NewPipeline returns a pipeline delivering through send. Start starts it.
func NewPipeline(cfg PipelineConfig, send Sender, m PipelineMetrics, log *slog.Logger) *Pipeline {
	if cfg.Tracer == nil {
		cfg.Tracer = noop.NewTracerProvider().Tracer("aggd")
	}
	stop, cancel := context.WithCancel(context.Background())
	p := &Pipeline{cfg: cfg, send: send, metrics: m, log: log.With("upstream", cfg.Name),
		queue: make(chan *Payload, cfg.QueueSize), spool: cfg.Spool, stop: stop, cancel: cancel}
	if p.spool != nil {
		p.queue = make(chan *Payload) // payloads wait on disk, not here
	}
	return p
}

// Start starts the senders. They exit when Shutdown returns.
func (p *Pipeline) Start(context.Context) error {
	if p.spool != nil {
		p.metrics.Started(p.cfg.Name, 0, p.spool.maxBytes)
		p.spoolGauge()
	} else {
		p.metrics.Started(p.cfg.Name, p.cfg.QueueSize, 0)
		p.metrics.Queue(p.cfg.Name, len(p.queue), int(p.bytes.Load()))
	}
	if p.spool != nil {
		p.feeding.Add(1)
		go p.feed()
	}
	for range p.cfg.Senders {
		p.wg.Add(1)
		go p.sender()
	}
	return nil
}

// Enqueue adds pl to the queue. When the queue is full it waits, which
// slows the flush that calls it, until there is room or ctx ends; then pl
// is counted as lost (queue_full) and ctx's error returned. Payloads keep
// the order of the Enqueue calls, which their callers serialise.
func (p *Pipeline) Enqueue(ctx context.Context, pl *Payload) error {
	if p.spool != nil {
		return p.enqueueSpooled(ctx, pl)
	}
	p.order.begin(pl)
	select {
	case p.queue <- pl:
		p.queued(pl)
		return nil
	default:
	}
	if p.full.CompareAndSwap(false, true) {
		p.log.Warn("send queue full: flushes wait for room", "queue_size", p.cfg.QueueSize)
	}
	p.metrics.Failed(p.cfg.Name, "queue_full")
	select {
	case p.queue <- pl:
		p.queued(pl)
		return nil
	case <-ctx.Done():
		p.order.end(pl)
		p.metrics.Lost(p.cfg.Name, "queue_full", pl.Points)
		p.log.Error("payload dropped: the send queue stayed full", "tenant", pl.Tenant, "kind", pl.Kind, "points", pl.Points)
		return ctx.Err()
	}
}

// enqueueSpooled writes pl to the spool, waiting while it is full or its
// disk refuses writes (a full filesystem): the queue counts as full then,
// so ingest is pushed back, and the write is tried again until ctx ends.
func (p *Pipeline) enqueueSpooled(ctx context.Context, pl *Payload) error {
	onFull := func() {
		p.full.Store(true)
		p.metrics.Failed(p.cfg.Name, "queue_full")
		p.log.Warn("send queue on disk is full: flushes wait for room and ingest is refused", "max_bytes", p.spool.maxBytes)
	}
	var err error
	for wait, failing := 50*time.Millisecond, false; ; wait = min(2*wait, 2*time.Second) {
		if _, err = p.spool.Put(ctx, pl, onFull); err == nil || ctx.Err() != nil {
			if failing && err == nil {
				p.log.Info("send queue on disk written again")
			}
			break
		}
		if !failing {
			failing = true
			p.full.Store(true)
			p.metrics.Failed(p.cfg.Name, "queue_write")
			p.log.Error("send queue on disk cannot be written: flushes wait and ingest is refused until it can", "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	p.spoolGauge()
	if err != nil {
		p.metrics.Lost(p.cfg.Name, "queue_full", pl.Points)
		p.log.Error("payload dropped: the send queue on disk stayed full or could not be written", "tenant", pl.Tenant, "kind", pl.Kind, "points", pl.Points, "err", err)
		return err
	}
	return nil
}

func (p *Pipeline) spoolGauge() {
	n, b := p.spool.Len()
	p.metrics.Queue(p.cfg.Name, n, int(b))
	if b < p.spool.maxBytes/2 {
		p.full.Store(false)
	}
}

// feed hands the spool's payloads to the senders, oldest first, until
// Shutdown stops it.
func (p *Pipeline) feed() {
	defer p.feeding.Done()
	defer close(p.queue)
	for {
		_, pl, err := p.spool.Next(p.stop)
		if err != nil {
			if p.stop.Err() == nil {
				p.log.Error("send queue on disk unreadable; sending stops", "err", err)
			}
			return
		}
		p.order.begin(pl) // the spool hands payloads out oldest first
		select {
		case p.queue <- pl:
		case <-p.stop.Done():
			p.order.end(pl)
			return
		}
	}
}

// Full reports whether the pipeline's queue is at its bound.
func (p *Pipeline) Full() bool { return p.full.Load() }

func (p *Pipeline) queued(pl *Payload) {
	n := p.bytes.Add(int64(len(pl.Body)))
	p.metrics.Queue(p.cfg.Name, len(p.queue), int(n))
}

func (p *Pipeline) sender() {
	defer p.wg.Done()
	for pl := range p.queue {
		if pl.Replaces {
			p.order.wait(p.stop.Done(), pl)
		}
		p.deliverInOrder(pl)
	}
}

// deliverInOrder delivers pl and marks it done in the queue's order.
func (p *Pipeline) deliverInOrder(pl *Payload) {
	defer p.order.end(pl)
	if p.spool != nil {
		if p.deliver(pl) {
			if err := p.spool.Delete(pl.spoolKey); err != nil {
				p.log.Error("send queue on disk", "err", err)
			}
			p.spoolGauge()
		}
		return
	}
	n := p.bytes.Add(-int64(len(pl.Body)))
	p.metrics.Queue(p.cfg.Name, len(p.queue), int(n))
	if len(p.queue) < p.cfg.QueueSize/2 {
		p.full.Store(false)
	}
	p.deliver(pl)
}

// deliver sends pl until it is accepted, refused for good, or the pipeline
// is stopped; it reports false in the last case. A spooled payload cut
// short by shutdown stays on disk and is not lost.
func (p *Pipeline) deliver(pl *Payload) bool {
	lost := func() {
		if pl.spoolKey == 0 {
			p.metrics.Lost(p.cfg.Name, "shutdown", pl.Points)
		}
	}
	ceiling := p.cfg.InitialBackoff
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(p.stop, p.cfg.Timeout)
		ctx, span := p.cfg.Tracer.Start(ctx, "aggd.send", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
			attribute.String("aggd.upstream", p.cfg.Name), attribute.String("aggd.tenant", pl.Tenant), attribute.String("aggd.kind", pl.Kind),
			attribute.Int("aggd.points", pl.Points), attribute.Int("aggd.bytes", len(pl.Body)), attribute.Int("aggd.attempt", attempt)))
		start := time.Now()
		err := p.send.Send(ctx, pl)
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		cancel()
		if err == nil {
			p.metrics.Sent(p.cfg.Name, pl.Points, time.Since(start))
			return true
		}
		reason := reasonOf(err)
		var perm *PermanentError
		if errors.As(err, &perm) {
			p.metrics.Lost(p.cfg.Name, reason, pl.Points)
			p.log.Error("payload refused for good", "tenant", pl.Tenant, "kind", pl.Kind, "points", pl.Points, "err", err)
			return true
		}
		if p.stop.Err() != nil {
			lost()
			return false
		}
		p.metrics.Failed(p.cfg.Name, reason)
		wait := time.Duration(rand.Int64N(int64(ceiling)) + 1) // full jitter
		var ra *RetryAfterError
		if errors.As(err, &ra) && ra.After > wait {
			wait = min(ra.After, 5*p.cfg.MaxBackoff)
		}
		ceiling = min(2*ceiling, p.cfg.MaxBackoff)
		p.log.Warn("send failed; retrying", "tenant", pl.Tenant, "kind", pl.Kind, "attempt", attempt, "wait", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-p.stop.Done():
			t.Stop()
			lost()
			return false
		}
	}
}

// Shutdown stops taking payloads and waits for the queue to drain. When ctx
// ends first, sending stops and whatever is left is counted as lost
// (shutdown). Enqueue must not be called once Shutdown has begun.
func (p *Pipeline) Shutdown(ctx context.Context) error {
	if p.spool != nil {
		return p.shutdownSpooled(ctx)
	}
	p.closing.Do(func() { close(p.queue) })
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		p.cancel()
		return nil
	case <-ctx.Done():
	}
	p.cancel()
	<-done
	// Senders exited on cancel; count what they never took.
	for pl := range p.queue {
		p.order.end(pl)
		p.metrics.Lost(p.cfg.Name, "shutdown", pl.Points)
	}
	return ctx.Err()
}

// shutdownSpooled waits for the spool to empty until ctx ends, then stops
// sending; what is left stays on disk for the next start.
func (p *Pipeline) shutdownSpooled(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	var err error
	for n, _ := p.spool.Len(); n > 0 && err == nil; n, _ = p.spool.Len() {
		select {
		case <-t.C:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	p.cancel()
	p.feeding.Wait()
	p.wg.Wait()
	if n, b := p.spool.Len(); n > 0 {
		p.log.Warn("payloads stay in the send queue on disk for the next start", "payloads", n, "bytes", b)
	}
	return errors.Join(err, p.spool.Close())
}

// QueueState is a send queue's state.
type QueueState struct {
	Upstream        string
	Depth, Capacity int
	Bytes           int64
	// MaxBytes bounds a queue on disk, which has no Capacity.
	MaxBytes int64
}

// State returns the queue's state now.
func (p *Pipeline) State() QueueState {
	if p.spool != nil {
		n, b := p.spool.Len()
		return QueueState{Upstream: p.cfg.Name, Depth: n, Bytes: b, MaxBytes: p.spool.maxBytes}
	}
	return QueueState{Upstream: p.cfg.Name, Depth: len(p.queue), Capacity: cap(p.queue), Bytes: p.bytes.Load()}
}

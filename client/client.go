// Package client is the Go client of aggd. It batches items by size and
// time, streams batches with acks, bounds the batches in flight (Add
// blocks when they are all taken: backpressure), and when a stream breaks
// (Unavailable, GOAWAY, a transport error, the server's stream age) opens a
// new one and resends every batch not yet acked, in order. Delivery is
// at-least-once: a batch whose ack was lost is sent again.
//
// A batch is split to fit the server's message limit (MaxBatchBytes, and
// the limit the server states when it refuses a larger one). A refusal
// with ResourceExhausted and RetryInfo is retried after the delay it
// asks; one without RetryInfo (tenant_limit, an item larger than the
// limit) is final for the batch at the head of the stream, which is
// reported to OnReject, item by item, and the batches after it go on.
//
//	conn, _ := grpc.NewClient("aggd:8127", grpc.WithTransportCredentials(insecure.NewCredentials()))
//	c := client.New(conn, client.Options{Metadata: map[string]string{"x-tenant-id": "shop"}})
//	defer c.Close(ctx)
//	c.Add(ctx, &aggdv1.Sample{Name: "http.requests", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1})
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

// Options configures a Client. The zero value works.
type Options struct {
	// BatchSize is the number of items that fills a batch (default 500).
	BatchSize int
	// FlushInterval sends a partial batch after this long (default 1s).
	FlushInterval time.Duration
	// MaxInFlight bounds the batches sent and not yet acked (default 8).
	MaxInFlight int
	// Metadata is sent with every stream: x-tenant-id, authorization.
	Metadata map[string]string
	// OnReject, if set, is called for every item the server refused, with
	// the batch it was in. It runs on the client's goroutine: keep it short.
	OnReject func(b *aggdv1.Batch, r *aggdv1.Rejection)
	// OnError, if set, is told why a stream broke before it is resumed.
	OnError func(err error)
	// MaxBackoff bounds the wait between reconnection attempts (default 5s).
	MaxBackoff time.Duration
	// MaxBatchBytes is the largest request sent (default 4 MiB, the
	// default limit of gRPC servers; aggd's --max-recv-msg-size is 16 MiB
	// by default): a larger batch is split. A server refusing a request
	// as too large lowers it to the limit the server states.
	MaxBatchBytes int
	// FullNames sends every sample with its full name. By default the
	// first sample of a series on a stream declares a series reference
	// and the next ones send only the reference and the measurement;
	// a new stream declares again.
	FullNames bool
}

func (o *Options) defaults() {
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = time.Second
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 8
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Second
	}
	if o.MaxBatchBytes <= 0 {
		o.MaxBatchBytes = 4 << 20
	}
}

// ErrClosed is returned by calls on a closed client.
var ErrClosed = errors.New("aggd client: closed")

// Client sends items to aggd. It is safe for concurrent use.
type Client struct {
	opts   Options
	client aggdv1.AggregatorServiceClient

	mu      sync.Mutex
	cur     *aggdv1.Batch
	timer   *time.Timer
	pending []*entry // sent or waiting, not yet acked, in order
	nextSeq uint64
	space   chan struct{} // one token per free in-flight slot
	wake    chan struct{} // one-slot: new batch to send
	acked   *sync.Cond
	closed  bool
	err     error // permanent failure
	refused error // a batch refused for good with no OnReject to tell
	// maxBytes is the largest request to send: Options.MaxBatchBytes, or
	// less once the server said so.
	maxBytes int

	stop chan struct{}
	done chan struct{}

	// Resumes counts the streams opened after a failure.
	Resumes  atomic.Int64
	ackCount atomic.Int64
}

type entry struct {
	seq   uint64
	batch *aggdv1.Batch
	// token says the entry holds an in-flight slot, given back when it is
	// acked. The pieces a batch is split into share its slot.
	token bool
}

// New returns a client over conn and starts its sending goroutine, which
// Close stops.
func New(conn grpc.ClientConnInterface, opts Options) *Client {
	opts.defaults()
	c := &Client{opts: opts, client: aggdv1.NewAggregatorServiceClient(conn),
		space: make(chan struct{}, opts.MaxInFlight), wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{}), nextSeq: 1, maxBytes: opts.MaxBatchBytes}
	c.acked = sync.NewCond(&c.mu)
	for range opts.MaxInFlight {
		c.space <- struct{}{}
	}
	go c.run()
	return c
}

func items(b *aggdv1.Batch) int {
	return len(b.Samples) + len(b.Events) + len(b.ServiceChecks) + len(b.Spans)
}

// Add queues a sample. It blocks while every in-flight slot is taken and
// the current batch is full, until ctx ends.
func (c *Client) Add(ctx context.Context, s *aggdv1.Sample) error {
	return c.add(ctx, func(b *aggdv1.Batch) { b.Samples = append(b.Samples, s) })
}

// AddEvent queues an event.
func (c *Client) AddEvent(ctx context.Context, e *aggdv1.Event) error {
	return c.add(ctx, func(b *aggdv1.Batch) { b.Events = append(b.Events, e) })
}

// AddServiceCheck queues a service check.
func (c *Client) AddServiceCheck(ctx context.Context, sc *aggdv1.ServiceCheck) error {
	return c.add(ctx, func(b *aggdv1.Batch) { b.ServiceChecks = append(b.ServiceChecks, sc) })
}

// AddSpan queues a span.
func (c *Client) AddSpan(ctx context.Context, s *aggdv1.Span) error {
	return c.add(ctx, func(b *aggdv1.Batch) { b.Spans = append(b.Spans, s) })
}

func (c *Client) add(ctx context.Context, put func(*aggdv1.Batch)) error {
	c.mu.Lock()
	if err := c.usable(); err != nil {
		c.mu.Unlock()
		return err
	}
	if c.cur == nil {
		c.cur = &aggdv1.Batch{}
		c.timer = time.AfterFunc(c.opts.FlushInterval, c.timedFlush)
	}
	put(c.cur)
	full := items(c.cur) >= c.opts.BatchSize
	c.mu.Unlock()
	if full {
		return c.seal(ctx)
	}
	return nil
}

func (c *Client) usable() error {
	if c.closed {
		return ErrClosed
	}
	return c.err
}

func (c *Client) timedFlush() {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.FlushInterval)
	defer cancel()
	c.seal(ctx)
}

// seal moves the current batch into the in-flight queue, waiting for a
// slot: this is where backpressure reaches callers.
func (c *Client) seal(ctx context.Context) error {
	select {
	case <-c.space:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.stop:
		return ErrClosed
	}
	c.mu.Lock()
	b := c.cur
	c.cur = nil
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if b == nil || items(b) == 0 {
		c.mu.Unlock()
		c.space <- struct{}{}
		return nil
	}
	for i, p := range split(b, c.maxBytes) {
		c.pending = append(c.pending, &entry{seq: c.nextSeq, batch: p, token: i == 0})
		c.nextSeq++
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

// Flush sends the current batch and waits until every batch sent so far
// is acked, or ctx ends.
func (c *Client) Flush(ctx context.Context) error {
	if err := c.seal(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	stopWaking := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		c.acked.Broadcast()
		c.mu.Unlock()
	})
	defer stopWaking()
	for len(c.pending) > 0 && c.err == nil && ctx.Err() == nil {
		c.acked.Wait()
	}
	if c.err != nil {
		return c.err
	}
	if err := c.refused; err != nil && ctx.Err() == nil {
		c.refused = nil
		return err
	}
	return ctx.Err()
}

// Close flushes within ctx, then stops the client.
func (c *Client) Close(ctx context.Context) error {
	err := c.Flush(ctx)
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.stop)
	}
	c.mu.Unlock()
	<-c.done
	return err
}

// retryable reports whether a stream error is worth a new stream.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Aborted, codes.ResourceExhausted, codes.DeadlineExceeded, codes.Canceled, codes.Internal, codes.Unknown:
		return true
	}
	return false
}

// run owns the stream: it sends pending batches, reads acks and resumes.
func (c *Client) run() {
	defer close(c.done)
	const initial = 50 * time.Millisecond
	backoff := initial
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		before := c.ackCount.Load()
		err := c.session()
		if c.ackCount.Load() > before {
			backoff = initial // the stream worked for a while: retry promptly
		}
		if err == nil {
			return // stopped
		}
		if !retryable(err) {
			c.mu.Lock()
			c.err = err
			c.acked.Broadcast()
			c.mu.Unlock()
			return
		}
		if c.opts.OnError != nil {
			c.opts.OnError(err)
		}
		c.Resumes.Add(1)
		wait := time.Duration(rand.Int64N(int64(backoff))) + backoff/2
		backoff = min(2*backoff, c.opts.MaxBackoff)
		if d, ok := retryDelay(err); ok {
			wait = d // the server says when
		} else if status.Code(err) == codes.ResourceExhausted && c.refuseHead(err) {
			wait, backoff = 0, initial // the next batches may well pass
		}
		select {
		case <-c.stop:
			return
		case <-time.After(wait):
		}
	}
}

// session runs one stream until it breaks (returning why) or the client
// stops (returning nil). Every batch not acked is (re)sent first.
func (c *Client) session() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	md := metadata.New(c.opts.Metadata)
	st, err := c.client.Stream(metadata.NewOutgoingContext(ctx, md))
	if err != nil {
		return err
	}
	var refs *seriesRefs
	if !c.opts.FullNames {
		refs = newSeriesRefs()
	}
	recvErr := make(chan error, 1)
	go func() { recvErr <- c.receive(st, refs) }()
	sent := uint64(0) // highest sequence sent on this stream
	for {
		c.mu.Lock()
		var toSend []*entry
		for _, e := range c.pending {
			if e.seq > sent {
				toSend = append(toSend, e)
			}
		}
		c.mu.Unlock()
		for _, e := range toSend {
			b := e.batch
			if refs != nil {
				b = refs.encode(b)
			}
			if err := st.Send(&aggdv1.StreamRequest{Sequence: e.seq, Batch: b}); err != nil {
				cancel()
				if rerr := <-recvErr; rerr != nil {
					return rerr
				}
				return err
			}
			sent = e.seq
		}
		select {
		case <-c.wake:
		case err := <-recvErr:
			return err
		case <-c.stop:
			st.CloseSend()
			cancel()
			<-recvErr
			return nil
		}
	}
}

// receive reads acks in order, retiring the batches they ack. A refused
// sample's series is declared again with its next sample (refs, when
// set, are the stream's series references).
func (c *Client) receive(st aggdv1.AggregatorService_StreamClient, refs *seriesRefs) error {
	for {
		resp, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return status.Error(codes.Unavailable, "stream closed by the server")
			}
			return err
		}
		a := resp.GetAck()
		c.ackCount.Add(1)
		c.mu.Lock()
		var done *entry
		if len(c.pending) > 0 && c.pending[0].seq == a.GetSequence() {
			done = c.pending[0]
			c.pending[0] = nil
			c.pending = c.pending[1:]
		}
		c.acked.Broadcast()
		c.mu.Unlock()
		if done == nil {
			continue // an ack of a batch resent after its first ack: ignore
		}
		if done.token {
			c.space <- struct{}{}
		}
		if refs != nil {
			for _, r := range a.Rejections {
				if r.Kind == aggdv1.ItemKind_ITEM_KIND_SAMPLE && int(r.Index) < len(done.batch.Samples) {
					refs.forget(done.batch.Samples[r.Index])
				}
			}
		}
		if c.opts.OnReject != nil {
			for _, r := range a.Rejections {
				c.opts.OnReject(done.batch, r)
			}
		}
	}
}

// retryDelay returns the delay a status's RetryInfo asks for.
func retryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return max(ri.GetRetryDelay().AsDuration(), 0), true
		}
	}
	return 0, false
}

// tooLarge matches grpc's refusal of a message over the server's limit.
var tooLarge = regexp.MustCompile(`larger than max \((\d+) vs\. (\d+)\)`)

// refuseHead handles a ResourceExhausted without RetryInfo, which the
// batch at the head of the stream drew: one over the server's message
// limit is split to fit it, and otherwise (tenant_limit, or one item over
// the limit) the batch is refused for good. It reports whether the head
// changed, so that the next stream may make progress.
func (c *Client) refuseHead(err error) bool {
	c.mu.Lock()
	if len(c.pending) == 0 {
		c.mu.Unlock()
		return false
	}
	head := c.pending[0]
	reason := "resource_exhausted"
	msg := status.Convert(err).Message()
	if m := tooLarge.FindStringSubmatch(msg); m != nil {
		reason = "too_large"
		if limit, perr := strconv.Atoi(m[2]); perr == nil && limit > 0 {
			c.maxBytes = min(c.maxBytes, limit)
		}
		if pieces := split(head.batch, c.maxBytes); len(pieces) > 1 {
			es := make([]*entry, len(pieces))
			for i, p := range pieces {
				es[i] = &entry{batch: p, token: head.token && i == 0}
			}
			c.pending = append(es, c.pending[1:]...)
			c.renumberLocked()
			c.mu.Unlock()
			return true
		}
	} else if r, _, ok := strings.Cut(msg, ":"); ok && r == "tenant_limit" {
		reason = r
	}
	c.pending[0] = nil
	c.pending = c.pending[1:]
	refused := fmt.Errorf("aggd client: a batch of %d items was refused: %w", items(head.batch), err)
	if c.opts.OnReject == nil {
		c.refused = refused
	}
	c.acked.Broadcast()
	c.mu.Unlock()
	if head.token {
		c.space <- struct{}{}
	}
	if c.opts.OnReject != nil {
		forEachItem(head.batch, func(kind aggdv1.ItemKind, i int) {
			c.opts.OnReject(head.batch, &aggdv1.Rejection{Kind: kind, Index: uint32(i), Reason: reason, Detail: msg})
		})
	}
	return true
}

// renumberLocked gives the pending batches rising sequences again, after
// a split put new ones among them; a new stream starts from any number.
func (c *Client) renumberLocked() {
	for _, e := range c.pending {
		e.seq = c.nextSeq
		c.nextSeq++
	}
}

// forEachItem calls fn with the kind and index of every item of b.
func forEachItem(b *aggdv1.Batch, fn func(kind aggdv1.ItemKind, i int)) {
	for i := range b.Samples {
		fn(aggdv1.ItemKind_ITEM_KIND_SAMPLE, i)
	}
	for i := range b.Events {
		fn(aggdv1.ItemKind_ITEM_KIND_EVENT, i)
	}
	for i := range b.ServiceChecks {
		fn(aggdv1.ItemKind_ITEM_KIND_SERVICE_CHECK, i)
	}
	for i := range b.Spans {
		fn(aggdv1.ItemKind_ITEM_KIND_SPAN, i)
	}
}

// requestOverhead bounds what a StreamRequest adds to its batch: the
// sequence and the batch's tag and length.
const requestOverhead = 32

// split cuts b into batches whose requests fit in maxBytes, halving it
// until they do; a single item over the limit stays alone (the server
// refuses it for good).
func split(b *aggdv1.Batch, maxBytes int) []*aggdv1.Batch {
	if items(b) <= 1 || proto.Size(b)+requestOverhead <= maxBytes {
		return []*aggdv1.Batch{b}
	}
	x, y := halve(b)
	return append(split(x, maxBytes), split(y, maxBytes)...)
}

// halve returns the first half of b's items, in order, and the rest.
func halve(b *aggdv1.Batch) (x, y *aggdv1.Batch) {
	n := items(b) / 2
	x, y = &aggdv1.Batch{}, &aggdv1.Batch{}
	take := func(k int) int { // how many of a list of k go to x
		t := min(k, n)
		n -= t
		return t
	}
	t := take(len(b.Samples))
	x.Samples, y.Samples = b.Samples[:t:t], b.Samples[t:]
	t = take(len(b.Events))
	x.Events, y.Events = b.Events[:t:t], b.Events[t:]
	t = take(len(b.ServiceChecks))
	x.ServiceChecks, y.ServiceChecks = b.ServiceChecks[:t:t], b.ServiceChecks[t:]
	t = take(len(b.Spans))
	x.Spans, y.Spans = b.Spans[:t:t], b.Spans[t:]
	return x, y
}

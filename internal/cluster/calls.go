package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/service"
)

// DefaultMaxCalls bounds how many forwarded calls Calls remembers: at
// about 160 bytes each, 20 MB.
const DefaultMaxCalls = 1 << 17

// MaxCallBytes bounds the bytes of the calls Calls remembers, their acks
// counted at their encoded size: an ack listing many refusals, each with
// its detail, weighs far more than the 160 bytes of one that lists none.
const MaxCallBytes = 32 << 20

// callOverhead is what a remembered call holds beside its ack's encoding
// (map entry, memo, order slot, the ack's structs).
const callOverhead = 160

// Calls remembers the forwarded calls this replica applied as their
// owner, by the name the forwarding replica gave them, with the ack each
// got: a call sent again (a retry after a lost answer or a deadline) is
// answered with that ack instead of being applied twice. A call still
// being applied makes a second attempt wait for it. It implements
// service.PeerCalls and prometheus.Collector, and is safe for concurrent
// use.
type Calls struct {
	keep     int64
	max      int
	maxBytes int

	mu    sync.Mutex
	calls map[codec.CallID]*memo
	order []codec.CallID // in the order begun, to forget the oldest
	head  int
	bytes int // of the applied calls remembered

	repeated, forgotten atomic.Uint64
	desc                struct{ repeated, remembered, forgotten *prometheus.Desc }
}

// memo is what Calls holds of one call.
type memo struct {
	ack     *aggdv1.Ack // nil while the call is applied
	size    int         // bytes counted for it once applied
	expires int64
	wait    chan struct{} // closed when the call ends; made by a waiter
}

// NewCalls returns a memory that keeps each call for keep after it was
// applied, and at most max calls (DefaultMaxCalls when max ≤ 0) of at
// most MaxCallBytes together: past that the oldest are forgotten early.
func NewCalls(keep time.Duration, max int) *Calls {
	if max <= 0 {
		max = DefaultMaxCalls
	}
	c := &Calls{keep: int64(keep), max: max, maxBytes: MaxCallBytes, calls: map[codec.CallID]*memo{}}
	c.desc.repeated = prometheus.NewDesc("aggd_cluster_forwards_repeated_total",
		"Forwarded calls received again after this replica applied them (a retry): answered with their first ack, not applied twice.", nil, nil)
	c.desc.remembered = prometheus.NewDesc("aggd_cluster_forwards_remembered",
		"Forwarded calls this replica remembers having applied.", nil, nil)
	c.desc.forgotten = prometheus.NewDesc("aggd_cluster_forwards_forgotten_total",
		"Forwarded calls forgotten before their time because the memory was full: a retry of one would be applied again.", nil, nil)
	return c
}

var _ service.PeerCalls = (*Calls)(nil)

// Begin implements service.PeerCalls.
func (c *Calls) Begin(ctx context.Context, id codec.CallID) (*aggdv1.Ack, error) {
	for {
		c.mu.Lock()
		c.forgetLocked(time.Now().UnixNano())
		m := c.calls[id]
		if m == nil {
			c.calls[id] = &memo{}
			c.order = append(c.order, id)
			c.mu.Unlock()
			return nil, nil
		}
		if m.ack != nil {
			c.mu.Unlock()
			c.repeated.Add(1)
			return m.ack, nil
		}
		if m.wait == nil {
			m.wait = make(chan struct{})
		}
		w := m.wait
		c.mu.Unlock()
		select {
		case <-w: // applied, or failed: look again
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// End implements service.PeerCalls.
func (c *Calls) End(id codec.CallID, ack *aggdv1.Ack) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.calls[id]
	if m == nil || m.ack != nil {
		return
	}
	if ack == nil {
		delete(c.calls, id)
	} else {
		m.ack, m.expires = ack, time.Now().UnixNano()+c.keep
		c.count(m)
	}
	if m.wait != nil {
		close(m.wait)
		m.wait = nil
	}
}

// Applied implements service.PeerCalls: it remembers a call applied
// before a restart, as the write-ahead log's replay finds it.
func (c *Calls) Applied(id codec.CallID, ack *aggdv1.Ack, at int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.calls[id]; !ok {
		m := &memo{ack: ack, expires: at + c.keep}
		c.calls[id] = m
		c.order = append(c.order, id)
		c.count(m)
	}
}

// count adds the applied call m's bytes.
func (c *Calls) count(m *memo) {
	m.size = callOverhead + proto.Size(m.ack)
	c.bytes += m.size
}

// dropLocked forgets the applied call id.
func (c *Calls) dropLocked(id codec.CallID, m *memo) {
	delete(c.calls, id)
	c.bytes -= m.size
}

// forgetLocked drops the calls kept past their time, oldest first, and
// the oldest applied ones while more than max, or more than maxBytes,
// are kept. Calls still being applied are passed over, not waited for.
func (c *Calls) forgetLocked(now int64) {
	moved := 0 // calls being applied moved to the end of order
	for c.head < len(c.order) && moved < len(c.order)-c.head {
		id := c.order[c.head]
		m := c.calls[id]
		switch {
		case m == nil: // failed, or already forgotten
		case m.ack == nil:
			// Being applied: it ends within its call. Look at it again
			// after the others, so that it holds none of them back.
			c.order = append(c.order, id)
			moved++
		case m.expires <= now:
			c.dropLocked(id, m)
		case len(c.calls) >= c.max || c.bytes > c.maxBytes:
			c.dropLocked(id, m)
			c.forgotten.Add(1)
		default:
			return
		}
		c.order[c.head] = codec.CallID{}
		c.head++
		if c.head > 1024 && c.head*2 > len(c.order) {
			c.order = c.order[:copy(c.order, c.order[c.head:])]
			c.head = 0
		}
	}
}

// Describe implements prometheus.Collector.
func (c *Calls) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc.repeated
	ch <- c.desc.remembered
	ch <- c.desc.forgotten
}

// Collect implements prometheus.Collector.
func (c *Calls) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	n := len(c.calls)
	c.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.desc.repeated, prometheus.CounterValue, float64(c.repeated.Load()))
	ch <- prometheus.MustNewConstMetric(c.desc.remembered, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.desc.forgotten, prometheus.CounterValue, float64(c.forgotten.Load()))
}

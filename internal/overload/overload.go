// Package overload watches aggd's memory against a budget, so that client
// traffic slows down and then is refused before the process could run out
// of memory.
package overload

import (
	"context"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// Level is how close memory is to the budget.
type Level int32

// The levels.
const (
	OK   Level = iota
	Soft       // over 80 %: slow down (stop reading, acks wait)
	Hard       // over 95 %: refuse new batches
)

// Leveler reports a load level: the Guard's memory pressure, or anything
// else that must push back on ingest the same way.
type Leveler interface {
	Level() Level
}

var (
	_ Leveler = (*Guard)(nil)
	_ Leveler = Pushback{}
)

// Pushback is the load level of ingest when a full send queue on disk must
// push back as memory does: Hard while Full reports true, else the level
// of Memory (OK without one).
type Pushback struct {
	Memory *Guard
	Full   func() bool
}

// Level implements Leveler.
func (p Pushback) Level() Level {
	if p.Full() {
		return Hard
	}
	if p.Memory != nil {
		return p.Memory.Level()
	}
	return OK
}

// Cause says why the level is up, as the message clients are refused
// with, and whether it is the send queue rather than memory.
func (p Pushback) Cause() (msg string, queue bool) {
	if p.Full() {
		return "aggd's send queue on disk is full or its disk refuses writes (see aggd_send_queue_full and aggd's log); retry later", true
	}
	return "aggd is over its memory budget; retry later", false
}

// Guard samples memory every interval. Level is safe for concurrent use.
type Guard struct {
	soft, hard uint64
	interval   time.Duration
	read       func() uint64
	level      atomic.Int32
	used       atomic.Uint64
	stop, done chan struct{}
	started    bool
}

// ReadRuntime returns the memory the Go runtime holds from the OS and has
// not released: what an OOM killer counts, less what is outside Go.
func ReadRuntime() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}

// New returns a guard of budget bytes, reading memory with read (nil:
// ReadRuntime).
func New(budget uint64, interval time.Duration, read func() uint64) *Guard {
	if read == nil {
		read = ReadRuntime
	}
	return &Guard{soft: budget / 10 * 8, hard: budget / 100 * 95, interval: interval, read: read,
		stop: make(chan struct{}), done: make(chan struct{})}
}

// Level returns the level of the last sample.
func (g *Guard) Level() Level { return Level(g.level.Load()) }

// Room returns how far the memory of the last sample is below the hard
// limit, bytes (negative past it).
func (g *Guard) Room() int64 { return int64(g.hard) - int64(g.used.Load()) }

// Capacity returns the hard limit, bytes.
func (g *Guard) Capacity() int64 { return int64(g.hard) }

// Used returns the memory of the last sample, bytes.
func (g *Guard) Used() uint64 { return g.used.Load() }

// Sample reads memory now and updates the level.
func (g *Guard) Sample() Level {
	u := g.read()
	g.used.Store(u)
	l := OK
	switch {
	case u >= g.hard:
		l = Hard
	case u >= g.soft:
		l = Soft
	}
	g.level.Store(int32(l))
	return l
}

// Start samples every interval until Shutdown.
func (g *Guard) Start(context.Context) error {
	g.started = true
	g.Sample()
	go func() {
		defer close(g.done)
		t := time.NewTicker(g.interval)
		defer t.Stop()
		for {
			select {
			case <-g.stop:
				return
			case <-t.C:
				g.Sample()
			}
		}
	}()
	return nil
}

// Shutdown stops sampling.
func (g *Guard) Shutdown(ctx context.Context) error {
	close(g.stop)
	if !g.started {
		return nil
	}
	select {
	case <-g.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

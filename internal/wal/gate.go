package wal

import "sync"

// gate orders batches (readers, between Enter and Leave) and Rotate (the
// writer). It is a readers-writer lock whose waiting writer holds back new
// readers, so that a steady flow of batches does not keep a rotation
// waiting, with one exception that keeps a cluster from deadlocking:
//
// A batch may wait inside the gate for other replicas (a trace's owner
// forwards the stats of its spans to their owners and waits for their
// acks), and those replicas' batches may wait likewise for this one's.
// Replicas rotate at the same aligned ticks. If each replica's rotation
// held back every new batch, a batch inside A waiting for a batch held
// back at B, while one inside B waits for one held back at A, would wait
// for each other until the forwards time out. So a leaf batch, one that
// waits for no other replica while inside (a batch without spans), may
// enter past a waiting rotation while batches that entered before the
// rotation began to wait are still inside: they may be waiting for it.
// Once those have left, leaves wait too, so that the rotation waits only
// for leaves already inside, which end without waiting on anything.
type gate struct {
	mu      sync.Mutex
	cond    sync.Cond
	readers int    // batches inside
	older   int    // of them, those that entered before the waiting writer
	epoch   uint64 // counts writers that began to wait
	waiting bool   // a writer waits for the readers inside to leave
	writing bool   // a writer holds the gate
}

func newGate() *gate {
	g := &gate{}
	g.cond.L = &g.mu
	return g
}

// enter waits until a batch may enter, and returns its ticket for leave.
func (g *gate) enter(leaf bool) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.writing || g.waiting && (!leaf || g.older == 0) {
		g.cond.Wait()
	}
	g.readers++
	return g.epoch
}

// leave ends what enter began.
func (g *gate) leave(ticket uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.readers--
	if g.waiting && ticket < g.epoch {
		g.older--
	}
	if g.readers == 0 || g.waiting && g.older == 0 {
		g.cond.Broadcast()
	}
}

// lock waits for every batch inside to leave and holds new ones back.
func (g *gate) lock() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.writing || g.waiting {
		g.cond.Wait()
	}
	g.waiting = true
	g.epoch++
	g.older = g.readers
	for g.readers > 0 {
		g.cond.Wait()
	}
	g.waiting, g.writing = false, true
}

// unlock lets batches in again.
func (g *gate) unlock() {
	g.mu.Lock()
	g.writing = false
	g.cond.Broadcast()
	g.mu.Unlock()
}

// held reports whether the gate holds every batch out (a writer holds it
// or waits with no earlier batch inside).
func (g *gate) held() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.writing || g.waiting && g.older == 0
}

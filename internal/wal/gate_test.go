package wal

import (
	"sync"
	"testing"
	"time"
)

// TestGateLetsLeavesPastAWaitingRotation plays two replicas' logs at one
// aligned tick: on each, a batch that entered before the rotation waits,
// inside, for a leaf batch (the stats of its spans) to enter the other
// log, whose rotation waits too. With a lock whose waiting writer holds
// back every reader, each waits for the other until the forwards time
// out; leaves enter past a waiting rotation while an earlier batch is
// inside, so both batches end and both rotations follow.
func TestGateLetsLeavesPastAWaitingRotation(t *testing.T) {
	gates := [2]*gate{newGate(), newGate()}
	var inside [2]uint64
	for i, g := range gates {
		inside[i] = g.enter(false) // a trace owner's batch
	}
	var rotated sync.WaitGroup
	for _, g := range gates {
		rotated.Add(1)
		go func() {
			defer rotated.Done()
			g.lock()
			g.unlock()
		}()
	}
	for _, g := range gates { // both rotations wait
		for !waiting(g) {
			time.Sleep(time.Millisecond)
		}
	}
	if tk, ok := tryEnter(gates[0], false); ok {
		gates[0].leave(tk)
		t.Fatal("a batch that may wait on others entered past a waiting rotation")
	}
	var done sync.WaitGroup
	for i, g := range gates {
		done.Add(1)
		go func() { // the batch inside i forwards a leaf to the other
			defer done.Done()
			other := gates[1-i]
			other.leave(other.enter(true))
			g.leave(inside[i])
		}()
	}
	finished := make(chan struct{})
	go func() { done.Wait(); rotated.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(time.Minute): // only a deadlock reaches it
		t.Fatal("the batches and the rotations wait for each other")
	}
}

// TestGateHoldsLeavesOnceEarlierBatchesLeft: a leaf enters past a waiting
// rotation only while a batch that entered before it waits inside; once
// those have left, leaves wait for the rotation as other batches do, so
// that a steady flow of leaves does not keep it waiting.
func TestGateHoldsLeavesOnceEarlierBatchesLeft(t *testing.T) {
	g := newGate()
	early := g.enter(true)
	go func() { g.lock(); g.unlock() }()
	for !waiting(g) {
		time.Sleep(time.Millisecond)
	}
	tk, ok := tryEnter(g, true)
	if !ok {
		t.Fatal("a leaf did not enter while an earlier batch was inside")
	}
	g.leave(early)
	if tk2, ok := tryEnter(g, true); ok {
		g.leave(tk2)
		t.Fatal("a leaf entered past the waiting rotation after the earlier batches left")
	}
	g.leave(tk)
	for held := true; held; held = g.held() {
		time.Sleep(time.Millisecond)
	}
}

// waiting reports whether a rotation waits at g.
func waiting(g *gate) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting
}

// tryEnter enters g if a batch may enter now.
func tryEnter(g *gate, leaf bool) (uint64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.writing || g.waiting && (!leaf || g.older == 0) {
		return 0, false
	}
	g.readers++
	return g.epoch, true
}

package wal

import (
	"errors"
	"os"
	"testing"
)

// TestSyncFullWaitsForConcurrentSync checks that syncFull returns only
// once every segment full before it was called is fsynced, even when a
// concurrent syncFull (Rotate's close beside a Wait under always) took
// those segments: otherwise Wait notes records durable, and acks them,
// while their segment's fsync is still under way.
func TestSyncFullWaitsForConcurrentSync(t *testing.T) {
	const segments = 50
	w, err := openSegWriter(t.TempDir(), 1, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	for range segments + 1 {
		if err := w.append([]byte{1, 0}); err != nil {
			t.Fatal(err)
		}
	}
	w.mu.Lock()
	full := append([]*os.File(nil), w.full...)
	w.mu.Unlock()
	if len(full) != segments {
		t.Fatalf("%d full segments, want %d", len(full), segments)
	}
	done := make(chan error, 1)
	go func() { done <- w.syncFull() }()
	// Once the first segment is closed, the other syncFull holds them all.
	for {
		if _, err := full[0].Stat(); errors.Is(err, os.ErrClosed) {
			break
		}
	}
	if err := w.syncFull(); err != nil {
		t.Fatal(err)
	}
	for i, f := range full {
		if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
			t.Fatalf("syncFull returned with segment %d of %d not yet fsynced and closed", i, segments)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

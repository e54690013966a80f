package wal

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
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

// TestWaitSyncsSegmentAnAppendMovesPast checks that a Wait under always
// fsyncs the segment that held its record when the sync began, even when
// an append moves to a new segment while the sync runs: syncing only the
// newest segment then found, which holds none of the records waited for,
// acked a record whose segment was never fsynced.
func TestWaitSyncsSegmentAnAppendMovesPast(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, Options{Sync: SyncAlways, SegmentSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	appendRec := func(rec string) uint64 {
		t.Helper()
		tk := l.Enter(true)
		defer l.Leave(tk)
		seq, err := l.Append([]byte(rec), 0)
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	// A generation Rotate ended is synced first; an append lands while it is.
	appendRec("in generation 1")
	gen, err := l.Rotate(nil)
	if err != nil {
		t.Fatal(err)
	}
	seq := appendRec("waited for")
	waited := l.cur.w.f.Name()

	var synced []string
	moved := false
	fsync = func(f *os.File) error {
		synced = append(synced, f.Name())
		if !moved && filepath.Dir(f.Name()) == filepath.Join(dir, genName(gen)) {
			moved = true
			appendRec("starts the next segment")
		}
		return f.Sync()
	}
	defer func() { fsync = (*os.File).Sync }()
	if err := l.Wait(seq); err != nil {
		t.Fatal(err)
	}
	if !moved {
		t.Fatal("the append during the sync did not happen")
	}
	if !slices.Contains(synced, waited) {
		t.Fatalf("Wait(%d) returned without fsyncing %s, which holds the record; fsynced %q", seq, waited, synced)
	}
}

// TestFailedCycleLeavesAppendsWorking checks, under never (segments
// fsynced and closed inline as they fill), that a next segment that
// cannot be created fails that append alone: once the directory is back,
// appends go on, where closing the full segment first left the writer on
// a closed file for good.
func TestFailedCycleLeavesAppendsWorking(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gen")
	w, err := openSegWriter(dir, 1, true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if err := w.append([]byte{1, 0}); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := w.append([]byte{1, 0}); err == nil {
		t.Fatal("append into a segment that cannot be created: no error")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := w.append([]byte{1, 0}); err != nil {
			t.Fatalf("append %d after the directory came back: %v", i, err)
		}
	}
	if names, _ := os.ReadDir(dir); len(names) != 3 {
		t.Errorf("%d segments after the directory came back, want 3", len(names))
	}
}

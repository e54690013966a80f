package wal_test

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/aggd/aggd/internal/wal"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T, dir string, sync wal.Sync) *wal.Log {
	t.Helper()
	l, err := wal.Open(dir, wal.Options{Sync: sync, SegmentSize: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func rec(i int) []byte {
	return fmt.Appendf(nil, "record %d %s", i, bytes.Repeat([]byte("tag:value,"), i%50))
}

func appendN(t *testing.T, l *wal.Log, from, n int, due int64) {
	t.Helper()
	for i := from; i < from+n; i++ {
		l.Enter()
		idx, err := l.Append(rec(i), due)
		l.Leave()
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Wait(idx); err != nil {
			t.Fatal(err)
		}
	}
}

// replayAll returns the records replay hands out, how many it said a
// flush had carried, and how many it dropped.
func replayAll(t *testing.T, l *wal.Log) (got []string, flushed, dropped int) {
	t.Helper()
	dropped, err := l.Replay(func(r []byte, f bool, _ int64) (int64, error) {
		got = append(got, string(r))
		if f {
			flushed++
		}
		return 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, flushed, dropped
}

func rotate(t *testing.T, l *wal.Log) uint64 {
	t.Helper()
	g, err := l.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func want(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, string(rec(i)))
	}
	return out
}

// TestCheckpointRemovesCoveredGenerations walks generations through
// flushes: one goes once a flush drained after it ended is at or past its
// due time, and one still waiting keeps every later one.
func TestCheckpointRemovesCoveredGenerations(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, wal.SyncAlways)
	appendN(t, l, 0, 10, 100) // generation 1: due 100
	b1 := rotate(t, l)
	appendN(t, l, 10, 10, 300) // generation 2: due 300 (a sample ahead)
	b2 := rotate(t, l)
	appendN(t, l, 20, 10, 200) // generation 3: due 200
	b3 := rotate(t, l)
	appendN(t, l, 30, 5, 400) // the current one
	if b1 != 1 || b2 != 2 || b3 != 3 {
		t.Fatalf("generations %d %d %d", b1, b2, b3)
	}
	if g := rotate(t, l); g != 4 {
		t.Fatalf("rotation ended generation %d, want 4", g)
	}
	if g := rotate(t, l); g != 4 {
		t.Fatalf("rotating an empty generation ended %d, want 4 again", g)
	}

	steps := []struct {
		gen     uint64
		tick    int64
		records uint64
	}{
		{b1, 90, 35},  // generation 1 not due yet
		{b1, 100, 25}, // generation 1 goes
		{b3, 200, 25}, // generation 3 is due, but 2 before it is not
		{b3, 300, 5},  // generations 2 and 3 go
		{b3, 400, 5},  // generation 4 is not covered by the checkpoint
	}
	for _, s := range steps {
		if err := l.Record(s.gen, s.tick); err != nil {
			t.Fatal(err)
		}
		if got := l.Stats().Records; got != s.records {
			t.Fatalf("after Record(%d, %d): %d records, want %d", s.gen, s.tick, got, s.records)
		}
	}
	if err := l.Record(b2, 400); err == nil {
		t.Fatal("a checkpoint going back was taken")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, dir, wal.SyncAlways)
	defer l.Close()
	got, flushed, _ := replayAll(t, l)
	if !slices.Equal(got, want(30, 35)) || flushed != 0 || l.Checkpoint() != (wal.Checkpoint{Generation: b3, Tick: 400}) {
		t.Fatalf("replayed %d records, %d flushed, with %+v; want records 30-34, none flushed", len(got), flushed, l.Checkpoint())
	}
	// The replayed generation waits for a flush; a final one removes it.
	if err := l.Record(rotate(t, l), math.MaxInt64); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Records != 0 || st.Generations != 1 {
		t.Fatalf("%+v after the final flush", st)
	}
	// A new run's first tick may be below the final one.
	appendN(t, l, 0, 1, 10)
	if err := l.Record(rotate(t, l), 10); err != nil {
		t.Fatal(err)
	}
}

// TestReplayAfterCrash reopens a log that was never closed, as after
// kill -9: every record written comes back, in order.
func TestReplayAfterCrash(t *testing.T) {
	for _, sync := range []wal.Sync{wal.SyncAlways, wal.SyncInterval, wal.SyncNever} {
		t.Run(fmt.Sprint(sync), func(t *testing.T) {
			dir := t.TempDir()
			l := open(t, dir, sync)
			appendN(t, l, 0, 200, 1)
			// No Close: the next Open sees what a killed process left.
			l2 := open(t, dir, sync)
			got, _, dropped := replayAll(t, l2)
			if !slices.Equal(got, want(0, 200)) || dropped != 0 {
				t.Fatalf("replayed %d records (%d dropped), want 200", len(got), dropped)
			}
			l2.Close()
			l.Close()
		})
	}
}

// lastSegment returns the newest segment file of the first generation.
func lastSegment(t *testing.T, dir string) string {
	t.Helper()
	gen := filepath.Join(dir, "00000000000000000001")
	ents, err := os.ReadDir(gen)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(gen, ents[len(ents)-1].Name())
}

// TestTornTailIsCut opens a log whose last record was cut short, as a
// power loss can leave it: the whole records come back and appends go on.
func TestTornTailIsCut(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, wal.SyncAlways)
	appendN(t, l, 0, 20, 1)
	l.Close()
	f, err := os.OpenFile(lastSegment(t, dir), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0xff, 0x01, 0x02}) // a length of 255 and two bytes
	f.Close()

	l = open(t, dir, wal.SyncAlways)
	got, _, _ := replayAll(t, l)
	if !slices.Equal(got, want(0, 20)) {
		t.Fatalf("replayed %d records, want 20", len(got))
	}
	appendN(t, l, 20, 1, 1)
	l.Close()
	l = open(t, dir, wal.SyncAlways)
	defer l.Close()
	if got, _, _ := replayAll(t, l); !slices.Equal(got, want(0, 21)) {
		t.Fatalf("after an append, replayed %d records, want 21", len(got))
	}
}

// TestCorruptRecordEndsReplay flips a byte of the last record: its
// checksum fails, replay stops there and removes it, and the log goes on.
func TestCorruptRecordEndsReplay(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, wal.SyncAlways)
	appendN(t, l, 0, 5, 1)
	l.Close()
	path := lastSegment(t, dir)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	os.WriteFile(path, b, 0o640)

	l = open(t, dir, wal.SyncAlways)
	got, _, dropped := replayAll(t, l)
	if !slices.Equal(got, want(0, 4)) || dropped != 1 {
		t.Fatalf("replayed %d records, dropped %d; want 4 and 1", len(got), dropped)
	}
	appendN(t, l, 4, 1, 1)
	l.Close()
	l = open(t, dir, wal.SyncAlways)
	defer l.Close()
	if got, _, _ := replayAll(t, l); !slices.Equal(got, want(0, 5)) {
		t.Fatalf("after an append, replayed %v", got)
	}
}

// TestConcurrentAppendsShareSyncs appends from many goroutines with
// fsync on every ack, rotating and recording as a flusher would.
func TestConcurrentAppendsShareSyncs(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, wal.SyncAlways)
	const writers, each = 8, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() { appendN(t, l, w*each, each, 1) })
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			g, err := l.Rotate()
			if err == nil {
				err = l.Record(g, 0)
			}
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-done
	l.Close()
	l = open(t, dir, wal.SyncAlways)
	defer l.Close()
	got, _, _ := replayAll(t, l)
	slices.Sort(got)
	all := want(0, writers*each)
	slices.Sort(all)
	if !slices.Equal(got, all) {
		t.Fatalf("replayed %d records, want %d", len(got), len(all))
	}
}

func TestParseSync(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want wal.Sync
		ok   bool
	}{{"always", wal.SyncAlways, true}, {"interval", wal.SyncInterval, true}, {"never", wal.SyncNever, true}, {"sometimes", 0, false}} {
		got, err := wal.ParseSync(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSync(%q) = %v, %v", tc.in, got, err)
		}
	}
}

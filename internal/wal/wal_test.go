package wal_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/klauspost/compress/s2"
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
		tk := l.Enter(true)
		idx, err := l.Append(rec(i), due)
		l.Leave(tk)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Wait(idx); err != nil {
			t.Fatal(err)
		}
	}
}

// replayAll returns the records replay hands out, how many it said a
// flush had carried, and how many it skipped as damaged.
func replayAll(t *testing.T, l *wal.Log) (got []string, flushed, skipped int) {
	t.Helper()
	damage, err := l.Replay(func(r []byte, f bool, _ int64) (int64, error) {
		got = append(got, string(r))
		if f {
			flushed++
		}
		return 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range damage {
		skipped += d.Records
	}
	return got, flushed, skipped
}

func rotate(t *testing.T, l *wal.Log) uint64 {
	t.Helper()
	g, err := l.Rotate(nil)
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
	prev := l.Stats()
	for _, s := range steps {
		if err := l.Record(s.gen, s.tick, false); err != nil {
			t.Fatal(err)
		}
		st := l.Stats()
		if st.Records != s.records {
			t.Fatalf("after Record(%d, %d): %d records, want %d", s.gen, s.tick, st.Records, s.records)
		}
		// The bytes go with the records.
		if st.Bytes <= 0 || (st.Records == prev.Records) != (st.Bytes == prev.Bytes) || (st.Records < prev.Records) != (st.Bytes < prev.Bytes) {
			t.Fatalf("after Record(%d, %d): %d bytes for %d records, had %d for %d", s.gen, s.tick, st.Bytes, st.Records, prev.Bytes, prev.Records)
		}
		prev = st
	}
	if err := l.Record(b2, 400, false); err == nil {
		t.Fatal("a checkpoint going back was taken")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, dir, wal.SyncAlways)
	got, flushed, _ := replayAll(t, l)
	// Replay counts the generations' bytes as read: the records plus the
	// segments' framing.
	if b := l.Stats().Bytes; b < prev.Bytes || b > prev.Bytes+64*int64(prev.Records) {
		t.Errorf("after replay %d bytes, %d before the restart", b, prev.Bytes)
	}
	if !slices.Equal(got, want(30, 35)) || flushed != 0 || l.Checkpoint() != (wal.Checkpoint{Generation: b3, Tick: 400}) {
		t.Fatalf("replayed %d records, %d flushed, with %+v; want records 30-34, none flushed", len(got), flushed, l.Checkpoint())
	}
	// The replayed generation waits for a flush; a final one removes it,
	// and keeps, as any flush, a generation due after its tick (a
	// bucket's late window).
	appendN(t, l, 35, 5, 600)
	fin := rotate(t, l)
	if err := l.Record(fin, 500, true); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Records != 5 || st.Generations != 2 {
		t.Fatalf("%+v after the final flush, want the 5 records due at 600 kept", st)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open(t, dir, wal.SyncAlways)
	defer l.Close()
	cp := l.Checkpoint()
	if !cp.Final() || cp.Flushed() != 500 || cp.Generation != fin {
		t.Fatalf("checkpoint %+v after the final flush: want final, flushed at 500, generation %d", cp, fin)
	}
	// The final flush drained everything: every record it kept comes back
	// flushed, past every due time.
	var ticks []int64
	if _, err := l.Replay(func(r []byte, f bool, tick int64) (int64, error) {
		if !f {
			t.Errorf("record %q not flushed after a final flush", r)
		}
		ticks = append(ticks, tick)
		return 600, nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(ticks) != 5 || ticks[0] != math.MaxInt64 {
		t.Fatalf("replay after the final flush gave ticks %v, want 5 of math.MaxInt64", ticks)
	}
	// A new run's first tick may be below the final one.
	appendN(t, l, 0, 1, 10)
	if err := l.Record(rotate(t, l), 10, false); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Records != 6 {
		t.Fatalf("%+v: the records due at 600 and 10 must wait", st)
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

// segments returns the segment files of the first generation, oldest
// first, with the index of each one's first record.
func segments(t *testing.T, dir string) (paths []string, first []uint64) {
	t.Helper()
	gen := filepath.Join(dir, "00000000000000000001")
	ents, err := os.ReadDir(gen)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		idx, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, filepath.Join(gen, e.Name()))
		first = append(first, idx)
	}
	return paths, first
}

// frameLen is the size of record i on disk: tidwall's uvarint length,
// then a CRC-32C and the s2-compressed record.
func frameLen(i int) int {
	body := 4 + 1 + len(rec(i)) // checksum, marker, record stored as it is
	return len(binary.AppendUvarint(nil, uint64(body))) + body
}

// TestDamageLosesOnlyItself overwrites bytes of a segment, as a bad
// sector or a stray write can: replay skips exactly the records the
// damage touches, reports them, and gives back every intact later record,
// in the damaged segment and after it. A record cut short at the end
// is reported as torn.
func TestDamageLosesOnlyItself(t *testing.T) {
	const n = 400
	for _, tc := range []struct {
		name string
		seg  int // -1: the last segment; else this one
		at   func(size int) int
		len  int
		torn bool
	}{
		{"64 bytes mid-segment", 1, func(size int) int { return size / 2 }, 64, false},
		{"64 bytes at the start of a segment", 1, func(int) int { return 0 }, 64, false},
		{"64 bytes mid-way through the last segment", -1, func(size int) int { return size / 2 }, 64, false},
		{"one byte of the last record", -1, func(size int) int { return size - 1 }, 1, false},
		{"a torn last record", -1, func(size int) int { return size }, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := open(t, dir, wal.SyncAlways)
			appendN(t, l, 0, n, 1)
			l.Close()
			paths, first := segments(t, dir)
			if len(paths) < 3 {
				t.Fatalf("%d segments, want at least 3", len(paths))
			}
			seg := tc.seg
			if seg < 0 {
				seg = len(paths) - 1
			}
			b, err := os.ReadFile(paths[seg])
			if err != nil {
				t.Fatal(err)
			}
			at := tc.at(len(b))
			lost := map[int]bool{}
			if tc.torn {
				// Half a record, as a write interrupted by a power loss
				// leaves it.
				whole := append(binary.AppendUvarint(nil, 200), bytes.Repeat([]byte{7}, 100)...)
				b = append(b, whole...)
			} else {
				for i := range tc.len {
					b[at+i] ^= 0x5a
				}
				// The records whose frames the damage overlaps.
				off := 0
				for i := int(first[seg]) - 1; off < len(b); i++ {
					end := off + frameLen(i)
					if end > at && off < at+tc.len {
						lost[i] = true
					}
					off = end
				}
			}
			if err := os.WriteFile(paths[seg], b, 0o640); err != nil {
				t.Fatal(err)
			}

			l = open(t, dir, wal.SyncAlways)
			var got []string
			damage, err := l.Replay(func(r []byte, _ bool, _ int64) (int64, error) {
				got = append(got, string(r))
				return 0, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var wantRecs []string
			for i := range n {
				if !lost[i] {
					wantRecs = append(wantRecs, string(rec(i)))
				}
			}
			if !slices.Equal(got, wantRecs) {
				t.Fatalf("replayed %d records, want %d (all but %d damaged)", len(got), len(wantRecs), len(lost))
			}
			t.Logf("replayed %d of %d records; %v", len(got), n, damage)
			skipped, torn := 0, false
			for _, d := range damage {
				skipped += d.Records
				torn = torn || d.Torn
				if d.Error() == "" {
					t.Error("damage without a message")
				}
			}
			wantSkipped := max(len(lost), 1)
			if seg == len(paths)-1 && !tc.torn {
				// In the newest segment the count of records a damaged
				// stretch held is not known: each stretch counts one.
				wantSkipped = 1
			}
			if skipped != wantSkipped || torn != tc.torn || l.Stats().Damaged != uint64(skipped) {
				t.Fatalf("damage %v: %d records skipped (stats %d), torn %v; want %d, torn %v",
					damage, skipped, l.Stats().Damaged, torn, wantSkipped, tc.torn)
			}
			// The log goes on: an append after replay comes back with the
			// intact records at the next start.
			appendN(t, l, n, 1, 1)
			l.Close()
			l = open(t, dir, wal.SyncAlways)
			defer l.Close()
			if got, _, _ := replayAll(t, l); !slices.Equal(got, append(wantRecs, string(rec(n)))) {
				t.Fatalf("after an append, replayed %d records, want %d", len(got), len(wantRecs)+1)
			}
		})
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
			g, err := l.Rotate(nil)
			if err == nil {
				err = l.Record(g, 0, false)
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

func TestParseCompression(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want wal.Compression
		ok   bool
	}{{"none", wal.CompressNone, true}, {"s2", wal.CompressS2, true}, {"zstd", 0, false}, {"", 0, false}} {
		got, err := wal.ParseCompression(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseCompression(%q) = %v, %v", tc.in, got, err)
		}
	}
}

// TestReplaysEveryFormat: a log holding a generation of the earlier
// format (an s2 block right after each frame's checksum, no marker), one
// written compressed and one written as it is, under every policy,
// replays all of them in order; the compressed generation takes less
// disk than the one stored as it is.
func TestReplaysEveryFormat(t *testing.T) {
	for _, sync := range []wal.Sync{wal.SyncAlways, wal.SyncInterval, wal.SyncNever} {
		t.Run(fmt.Sprint(sync), func(t *testing.T) {
			dir := t.TempDir()
			gen := filepath.Join(dir, fmt.Sprintf("%020d", 1))
			if err := os.Mkdir(gen, 0o750); err != nil {
				t.Fatal(err)
			}
			var old []byte
			table := crc32.MakeTable(crc32.Castagnoli)
			for i := range 10 {
				enc := s2.Encode(nil, rec(i))
				body := append(binary.LittleEndian.AppendUint32(nil, crc32.Checksum(enc, table)), enc...)
				old = append(binary.AppendUvarint(old, uint64(len(body))), body...)
			}
			if err := os.WriteFile(filepath.Join(gen, fmt.Sprintf("%020d", 1)), old, 0o640); err != nil {
				t.Fatal(err)
			}
			var sizes []int64
			for i, c := range []wal.Compression{wal.CompressS2, wal.CompressNone} {
				l, err := wal.Open(dir, wal.Options{Sync: sync, Compression: c, SegmentSize: 4 << 10})
				if err != nil {
					t.Fatal(err)
				}
				if got, _, skipped := replayAll(t, l); !slices.Equal(got, want(0, 10+10*i)) || skipped != 0 {
					t.Fatalf("compression %d: replayed %d records (%d skipped), want %d", c, len(got), skipped, 10+10*i)
				}
				before := l.Stats().Bytes
				appendN(t, l, 10+10*i, 10, 1)
				sizes = append(sizes, l.Stats().Bytes-before)
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if sizes[0] >= sizes[1] {
				t.Errorf("s2 records took %d bytes, stored as they are %d", sizes[0], sizes[1])
			}
			l := open(t, dir, sync)
			defer l.Close()
			if got, _, skipped := replayAll(t, l); !slices.Equal(got, want(0, 30)) || skipped != 0 {
				t.Fatalf("replayed %d records (%d skipped), want 30", len(got), skipped)
			}
		})
	}
}

// TestAppendDenseStoresAsIs: with CompressS2, Append compresses a record
// that shrinks and AppendDense stores it as it is; replay gives both back.
func TestAppendDenseStoresAsIs(t *testing.T) {
	dir := t.TempDir()
	l, err := wal.Open(dir, wal.Options{Compression: wal.CompressS2})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { l.Close() }() // the log reopened below
	size := func() (n int64) {
		filepath.WalkDir(dir, func(_ string, d fs.DirEntry, _ error) error {
			if d != nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					n += fi.Size()
				}
			}
			return nil
		})
		return n
	}
	r := bytes.Repeat([]byte("tag:value,"), 1000)
	var grew []int64
	for _, add := range []func([]byte, int64) (uint64, error){l.Append, l.AppendDense} {
		before := size()
		tk := l.Enter(true)
		_, err := add(r, 1)
		l.Leave(tk)
		if err != nil {
			t.Fatal(err)
		}
		grew = append(grew, size()-before)
	}
	if grew[0] >= int64(len(r))/4 || grew[1] < int64(len(r)) {
		t.Fatalf("a record of %d bytes took %d appended, %d appended dense", len(r), grew[0], grew[1])
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = wal.Open(dir, wal.Options{Compression: wal.CompressS2})
	if err != nil {
		t.Fatal(err)
	}
	got, _, skipped := replayAll(t, l)
	if len(got) != 2 || got[0] != string(r) || got[1] != string(r) || skipped != 0 {
		t.Fatalf("replayed %d records (%d skipped), want the two as written", len(got), skipped)
	}
}

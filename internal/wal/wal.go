// Package wal is aggd's write-ahead log: the batches it acknowledged and
// has not yet safely flushed, kept on disk so that a restart after a crash
// can take them into the windows again.
//
// Records live in segment files of github.com/tidwall/wal, each prefixed
// here with a CRC-32C so that a torn or zero-filled tail is detected. The
// log is cut into epochs at every flush: Rotate ends one, and Checkpoint,
// called once that flush's payloads are in the persistent send queue,
// records how far flushing has got and removes the epochs it covers. The
// package knows nothing of what a record holds; its caller tells Append
// each record's due time, the latest flush tick its contents wait for.
package wal

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/klauspost/compress/s2"
	tw "github.com/tidwall/wal"
)

// Sync is the fsync policy.
type Sync int

const (
	// SyncAlways makes every record durable on disk before Wait returns:
	// a power loss loses nothing acknowledged. Concurrent appends share
	// one fsync (group commit).
	SyncAlways Sync = iota
	// SyncInterval writes every record before Wait returns and fsyncs the
	// log every second in the background: a crash of aggd loses nothing,
	// a power loss or kernel crash up to the last second of records.
	SyncInterval
	// SyncNever leaves writing back to the operating system: a crash of
	// aggd loses nothing, a power loss or kernel crash what the kernel had
	// not yet written (Linux: up to about 30 s). Segments are fsynced when
	// full.
	SyncNever
)

// ParseSync parses "always", "interval" or "never".
func ParseSync(s string) (Sync, error) {
	switch s {
	case "always":
		return SyncAlways, nil
	case "interval":
		return SyncInterval, nil
	case "never":
		return SyncNever, nil
	}
	return 0, fmt.Errorf("wal: fsync policy %q is not always, interval or never", s)
}

// Options configures a Log.
type Options struct {
	Sync Sync
	// SegmentSize is the target size of a segment file; zero means 16 MiB.
	SegmentSize int
}

// Checkpoint is how far flushing had got: every record at or below Index
// was in the windows when the flush of tick Tick drained them, and that
// flush's payloads were safely queued. Replay skips what such a flush
// already carried.
type Checkpoint struct {
	Index uint64 `json:"index"`
	Tick  int64  `json:"tick"`
}

// epoch is the records between two rotations.
type epoch struct {
	end    uint64 // last index; 0 while empty
	maxDue int64
}

// Log is the write-ahead log. It is safe for concurrent use.
type Log struct {
	dir  string
	opts Options
	w    *tw.Log

	// gate is held for reading from before a batch is ingested until its
	// record is appended, and for writing by Rotate, so that an epoch,
	// once ended, holds only records of batches already ingested.
	gate sync.RWMutex

	mu     sync.Mutex // guards the fields below and orders appends
	last   uint64     // index of the last record written
	cur    epoch
	closed []epoch // ended epochs not yet removed, oldest first
	cp     Checkpoint
	dec    []byte // replay's decompressed record

	smu     sync.Mutex // guards the group commit
	scond   *sync.Cond
	synced  uint64 // every record at or below is on disk
	syncing bool
	syncErr error

	stop, stopped chan struct{} // of the interval syncer
}

const checkpointFile = "checkpoint.json"

// Open opens or creates the log in dir. A tail that a crash left torn is
// cut at its last whole record.
func Open(dir string, opts Options) (*Log, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = 16 << 20
	}
	segs := filepath.Join(dir, "segments")
	two := &tw.Options{NoSync: true, SegmentSize: opts.SegmentSize, LogFormat: tw.Binary,
		SegmentCacheSize: 2, NoCopy: true, AllowEmpty: true, DirPerms: 0o750, FilePerms: 0o640}
	w, err := tw.Open(segs, two)
	if errors.Is(err, tw.ErrCorrupt) {
		if rerr := repairTail(segs); rerr != nil {
			return nil, fmt.Errorf("wal: %s is corrupt and could not be repaired: %w", segs, rerr)
		}
		w, err = tw.Open(segs, two)
	}
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", segs, err)
	}
	l := &Log{dir: dir, opts: opts, w: w, stop: make(chan struct{}), stopped: make(chan struct{})}
	l.scond = sync.NewCond(&l.smu)
	if l.last, err = w.LastIndex(); err != nil {
		return nil, err
	}
	l.synced = l.last
	b, err := os.ReadFile(filepath.Join(dir, checkpointFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(b, &l.cp); err != nil {
			return nil, fmt.Errorf("wal: %s: %w", checkpointFile, err)
		}
	}
	if opts.Sync == SyncInterval {
		go l.syncEverySecond()
	} else {
		close(l.stopped)
	}
	return l, nil
}

// syncEverySecond fsyncs what was written in the last second, until Close.
func (l *Log) syncEverySecond() {
	defer close(l.stopped)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		l.mu.Lock()
		target := l.last
		l.mu.Unlock()
		if err := l.syncTail(); err != nil {
			l.smu.Lock()
			l.syncErr = fmt.Errorf("wal: fsync: %w", err)
			l.smu.Unlock()
		}
		l.smu.Lock()
		l.synced = max(l.synced, target)
		l.smu.Unlock()
	}
}

// repairTail cuts the last segment of dir after its last whole record.
// Records are a uvarint length and that many bytes; a crash can leave a
// partial one at the end.
func repairTail(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var last string
	for _, e := range ents {
		if n := e.Name(); len(n) == 20 && !e.IsDir() {
			last = n // names are zero-padded indexes: sorted order is log order
		}
	}
	if last == "" {
		return errors.New("no segment to repair")
	}
	path := filepath.Join(dir, last)
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	good := 0
	for good < len(data) {
		size, n := binary.Uvarint(data[good:])
		if n <= 0 || uint64(len(data)-good-n) < size {
			break
		}
		good += n + int(size)
	}
	return os.Truncate(path, int64(good))
}

// Close closes the log. Records not yet synced are synced first.
func (l *Log) Close() error {
	close(l.stop)
	<-l.stopped
	err := l.w.Sync()
	return errors.Join(err, l.w.Close())
}

// Checkpoint returns the checkpoint the log opened with or last recorded.
func (l *Log) Checkpoint() Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cp
}

// Enter must be called before a batch is ingested, and Leave after its
// record is appended (or it turned out to need none).
func (l *Log) Enter() { l.gate.RLock() }

// Leave ends what Enter began.
func (l *Log) Leave() { l.gate.RUnlock() }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Append writes rec, whose contents wait for flush ticks up to due, and
// returns its index. The record is in the operating system's hands; call
// Wait for it to be on disk as the fsync policy says. Call it between
// Enter and Leave.
func (l *Log) Append(rec []byte, due int64) (uint64, error) {
	// Batches of metric names and tags compress several times over: less
	// to write, and less for fsync to wait for. Compression happens before
	// the lock, so that streams compress in parallel.
	bp := encBufs.Get().(*[]byte)
	defer encBufs.Put(bp)
	n := s2.MaxEncodedLen(len(rec)) + 4
	if cap(*bp) < n {
		*bp = make([]byte, n)
	}
	buf := (*bp)[:n]
	enc := s2.Encode(buf[4:], rec)
	binary.LittleEndian.PutUint32(buf, crc32.Checksum(enc, castagnoli))
	buf = buf[:4+len(enc)]
	if cap(*bp) > 1<<20 {
		*bp = nil // do not pin one huge record's buffer
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.w.Write(l.last+1, buf); err != nil {
		return 0, fmt.Errorf("wal: append: %w", err)
	}
	l.last++
	l.cur.end = l.last
	l.cur.maxDue = max(l.cur.maxDue, due)
	return l.last, nil
}

var encBufs = sync.Pool{New: func() any { return new([]byte) }}

// Wait returns once record idx is as durable as the fsync policy makes it.
// Concurrent waiters share one fsync.
func (l *Log) Wait(idx uint64) error {
	if l.opts.Sync != SyncAlways {
		l.smu.Lock()
		defer l.smu.Unlock()
		return l.syncErr
	}
	l.smu.Lock()
	defer l.smu.Unlock()
	for l.synced < idx {
		if l.syncErr != nil {
			return l.syncErr
		}
		if l.syncing {
			l.scond.Wait()
			continue
		}
		l.syncing = true
		l.mu.Lock()
		target := l.last
		l.mu.Unlock()
		l.smu.Unlock()
		err := l.syncTail()
		l.smu.Lock()
		l.syncing = false
		if err != nil {
			// A failed fsync leaves the page cache in an unknown state:
			// nothing after it can be called durable.
			l.syncErr = fmt.Errorf("wal: fsync: %w", err)
		} else {
			l.synced = max(l.synced, target)
		}
		l.scond.Broadcast()
	}
	return nil
}

// syncTail makes every record written so far durable without holding the
// log's lock, so that appends go on during the fsync: a segment is synced
// when the log moves past it, so only the newest needs it, through a file
// descriptor of its own (fsync acts on the file, not the descriptor).
func (l *Log) syncTail() error {
	segs := filepath.Join(l.dir, "segments")
	ents, err := os.ReadDir(segs)
	if err != nil {
		return err
	}
	newest := ""
	for _, e := range ents {
		if n := e.Name(); len(n) == 20 && !e.IsDir() {
			newest = n
		}
	}
	if newest == "" {
		return l.w.Sync()
	}
	f, err := os.Open(filepath.Join(segs, newest))
	if errors.Is(err, os.ErrNotExist) {
		return l.w.Sync() // removed or renamed by a truncation just now
	}
	if err != nil {
		return err
	}
	err = f.Sync()
	return errors.Join(err, f.Close())
}

// Rotate ends the current epoch, once every batch between Enter and Leave
// has left, and returns the index of its last record: every record at or
// below it is in the windows. The flusher calls it before it drains them.
func (l *Log) Rotate() uint64 {
	l.gate.Lock()
	defer l.gate.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur.end != 0 {
		l.closed = append(l.closed, l.cur)
		l.cur = epoch{}
	}
	return l.last
}

// Record notes that the flush of tick, which drained the windows after
// Rotate returned index, has its payloads safely queued: the checkpoint
// is written, and the epochs it covers removed. The final flush, which
// drains everything, passes math.MaxInt64 as tick.
func (l *Log) Record(index uint64, tick int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	cp := Checkpoint{Index: index, Tick: tick}
	// After a final flush the next run starts its ticks again.
	if cp.Index < l.cp.Index || (cp.Tick < l.cp.Tick && l.cp.Tick != Final) {
		return fmt.Errorf("wal: checkpoint %+v goes back from %+v", cp, l.cp)
	}
	if err := l.writeCheckpoint(cp); err != nil {
		return err
	}
	l.cp = cp
	var upTo uint64
	n := 0
	for _, e := range l.closed {
		if e.end > index || e.maxDue > tick {
			break
		}
		upTo, n = e.end, n+1
	}
	if n == 0 {
		return nil
	}
	l.closed = append(l.closed[:0], l.closed[n:]...)
	first, err := l.w.FirstIndex()
	if err != nil {
		return err
	}
	if upTo+1 <= first {
		return nil
	}
	if err := l.w.TruncateFront(upTo + 1); err != nil {
		return fmt.Errorf("wal: remove records up to %d: %w", upTo, err)
	}
	return nil
}

// writeCheckpoint replaces the checkpoint file atomically and durably.
func (l *Log) writeCheckpoint(cp Checkpoint) error {
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	tmp := filepath.Join(l.dir, checkpointFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(l.dir, checkpointFile))
	}
	if err == nil {
		err = syncDir(l.dir)
	}
	if err != nil {
		return fmt.Errorf("wal: write checkpoint: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ErrCorruptRecord reports a record whose checksum does not match.
var ErrCorruptRecord = errors.New("wal: record checksum mismatch")

// Replay calls fn with every record in the log, oldest first, and the
// checkpoint it opened with; fn returns the record's due time. rec is only
// valid during the call. A record that fails its checksum, as a power loss
// can leave at the tail, ends the replay and the records after it are
// removed; Replay reports how many. Call it once, before any Append.
func (l *Log) Replay(fn func(idx uint64, rec []byte, cp Checkpoint) (due int64, err error)) (dropped int, err error) {
	first, err := l.w.FirstIndex()
	if err != nil {
		return 0, err
	}
	cp := l.Checkpoint()
	var e epoch
	for idx := first; idx <= l.last; idx++ {
		data, err := l.w.Read(idx)
		if err != nil {
			return 0, fmt.Errorf("wal: read record %d: %w", idx, err)
		}
		var rec []byte
		if len(data) >= 4 && binary.LittleEndian.Uint32(data) == crc32.Checksum(data[4:], castagnoli) {
			rec, err = s2.Decode(l.dec[:cap(l.dec)], data[4:])
		}
		if rec == nil || err != nil {
			dropped = int(l.last - idx + 1)
			if err := l.truncateBack(idx); err != nil {
				return 0, err
			}
			break
		}
		l.dec = rec
		due, err := fn(idx, rec, cp)
		if err != nil {
			return 0, err
		}
		e.end, e.maxDue = idx, max(e.maxDue, due)
	}
	l.mu.Lock()
	if e.end != 0 {
		// Replayed records wait together for the flushes after restart.
		l.closed = append(l.closed, e)
	}
	l.mu.Unlock()
	return dropped, nil
}

// truncateBack removes the records from idx on.
func (l *Log) truncateBack(idx uint64) error {
	if err := l.w.TruncateBack(idx - 1); err != nil {
		return fmt.Errorf("wal: remove corrupt records from %d: %w", idx, err)
	}
	l.mu.Lock()
	l.last = idx - 1
	l.mu.Unlock()
	l.smu.Lock()
	l.synced = min(l.synced, l.last)
	l.smu.Unlock()
	return nil
}

// Stats is the log's size.
type Stats struct {
	Records uint64 // records kept
	Pending int    // epochs ended and waiting for their flushes
}

// Stats returns the log's size now.
func (l *Log) Stats() Stats {
	first, _ := l.w.FirstIndex()
	l.mu.Lock()
	defer l.mu.Unlock()
	n := uint64(0)
	if l.last >= first {
		n = l.last - first + 1
	}
	return Stats{Records: n, Pending: len(l.closed)}
}

// Final is the tick the final flush records: it drains everything.
const Final = math.MaxInt64

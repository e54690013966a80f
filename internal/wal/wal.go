// Package wal is aggd's write-ahead log: the batches it acknowledged and
// has not yet safely flushed, kept on disk so that a restart after a crash
// can take them into the windows again.
//
// The log is cut into generations at every flush: Rotate ends one, and
// Record, called once that flush's payloads are in the persistent send
// queue, writes a checkpoint of how far flushing has got and removes the
// generations it covers. A generation is a directory holding one
// github.com/tidwall/wal log, whose records are stored as they are or
// s2-compressed (Options.Compression), marked with which, and prefixed
// here with a CRC-32C so that a torn or zero-filled tail is detected; removing a generation is removing its directory, with no
// copying while batches are appended. The package knows nothing of what a
// record holds; its caller tells Append each record's due time, the
// latest flush tick its contents wait for.
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
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/s2"
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

// Compression is how records are stored.
type Compression int

const (
	// CompressNone stores records as they are: the least CPU on the ack
	// path, the most disk (a full-name sample about 86 bytes).
	CompressNone Compression = iota
	// CompressS2 stores records s2-compressed where that pays (see
	// encodeIfPays): about a quarter of the disk of CompressNone for
	// full-name samples, at the CPU of compressing them before the ack.
	// Records that would not shrink to under about half, such as samples
	// by series reference, are stored as they are.
	CompressS2
)

// ParseCompression parses "none" or "s2".
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "none":
		return CompressNone, nil
	case "s2":
		return CompressS2, nil
	}
	return 0, fmt.Errorf("wal: compression %q is not none or s2", s)
}

// Options configures a Log.
type Options struct {
	Sync        Sync
	Compression Compression
	// SegmentSize is the target size of a segment file; zero means 16 MiB.
	SegmentSize int
}

// Checkpoint is how far flushing had got: every record of generations up
// to Generation was in the windows when the flush of tick Tick drained
// them, and that flush's payloads were safely queued. Replay skips what
// such a flush already carried.
type Checkpoint struct {
	Generation uint64 `json:"generation"`
	Tick       int64  `json:"tick"`
	// Stop marks the checkpoint of a final flush (a clean stop), which
	// drained everything, open buckets included, at Tick.
	Stop bool `json:"final,omitempty"`
}

// generation is the records between two rotations.
type generation struct {
	id     uint64
	dir    string
	w      *segWriter // nil once closed
	n      uint64     // records
	bytes  int64      // of its records, as written
	maxDue int64
	// replay marks a generation found by Open: it waits for Replay, which
	// opens one at a time, so that many of them do not crowd memory.
	replay bool
}

// Log is the write-ahead log. It is safe for concurrent use.
type Log struct {
	dir  string
	opts Options

	// gate is held for reading from before a batch is ingested until its
	// record is appended, and for writing by Rotate, so that a generation,
	// once ended, holds only records of batches already ingested.
	gate *gate

	mu      sync.Mutex // guards the fields below and orders appends
	cur     *generation
	closed  []*generation // ended and not yet removed, oldest first
	dirty   []*generation // ended but maybe not yet synced
	seq     uint64        // records appended since Open
	cp      Checkpoint
	dec     []byte // replay's decompressed record
	damaged uint64 // records replay skipped

	smu     sync.Mutex // guards the group commit
	scond   *sync.Cond
	synced  uint64 // every record up to this seq is on disk
	syncing bool
	syncErr error

	stop, stopped chan struct{} // of the interval syncer
}

const checkpointFile = "checkpoint.json"

func genName(id uint64) string { return fmt.Sprintf("%020d", id) }

// Open opens or creates the log in dir. The generations found there wait
// for Replay, which skips what a crash or a damaged disk left unreadable;
// appends go to a new generation.
func Open(dir string, opts Options) (*Log, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = 16 << 20
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	l := &Log{dir: dir, opts: opts, gate: newGate(), stop: make(chan struct{}), stopped: make(chan struct{})}
	l.scond = sync.NewCond(&l.smu)
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
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	next := uint64(1)
	for _, e := range ents { // sorted by name: zero-padded ids in order
		id, err := strconv.ParseUint(e.Name(), 10, 64)
		if !e.IsDir() || err != nil || len(e.Name()) != 20 {
			continue
		}
		l.closed = append(l.closed, &generation{id: id, dir: filepath.Join(dir, e.Name()), replay: true})
		next = id + 1
	}
	if err := l.startGeneration(next); err != nil {
		return nil, err
	}
	if opts.Sync == SyncInterval {
		go l.syncEverySecond()
	} else {
		close(l.stopped)
	}
	return l, nil
}

// startGeneration makes generation id the one appended to. l.mu is held,
// or the log not yet shared.
func (l *Log) startGeneration(id uint64) error {
	g := &generation{id: id, dir: filepath.Join(l.dir, genName(id))}
	var err error
	// Without a syncer (never), a full segment is fsynced as it ends, as
	// the policy promises; the others hand it to their next fsync.
	if g.w, err = openSegWriter(g.dir, int64(l.opts.SegmentSize), l.opts.Sync == SyncNever); err != nil {
		return err
	}
	if err := syncDir(l.dir); err != nil {
		g.w.close()
		return err
	}
	l.cur = g
	return nil
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
		if err := l.syncNow(); err != nil {
			l.smu.Lock()
			l.syncErr = err
			l.smu.Unlock()
		}
	}
}

// syncNow makes every record appended so far durable and notes it.
func (l *Log) syncNow() error {
	l.mu.Lock()
	target := l.seq
	dirs := make([]string, 0, len(l.dirty))
	ws := make([]*segWriter, 0, len(l.dirty)+1)
	// The segment each writer appends to now, named under l.mu: a record
	// up to target is in it or in a segment its writer holds as full.
	// Finding the newest afterwards could find one a later append started,
	// and leave the one holding those records unsynced.
	files := make([]string, 0, len(l.dirty)+1)
	for _, g := range l.dirty {
		if g.w != nil {
			ws = append(ws, g.w)
			files = append(files, g.w.f.Name())
		} else {
			dirs = append(dirs, g.dir)
		}
	}
	l.dirty = l.dirty[:0]
	ws = append(ws, l.cur.w)
	files = append(files, l.cur.w.f.Name())
	l.mu.Unlock()
	// The segments appends moved past wait here for their fsync; the
	// current one of each generation is synced through a file descriptor
	// of its own (fsync acts on the file, not the descriptor): appends go
	// on meanwhile. A generation Rotate ended is synced by its close.
	for _, w := range ws {
		if err := w.syncFull(); err != nil {
			return fmt.Errorf("wal: fsync: %w", err)
		}
	}
	for _, d := range dirs {
		if err := syncNewest(d); err != nil {
			return fmt.Errorf("wal: fsync: %w", err)
		}
	}
	for _, name := range files {
		if err := syncPath(name); err != nil {
			return fmt.Errorf("wal: fsync: %w", err)
		}
	}
	l.smu.Lock()
	l.synced = max(l.synced, target)
	l.smu.Unlock()
	return nil
}

// syncNewest fsyncs the newest segment file in dir.
func syncNewest(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // removed: its records were flushed
	}
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
		return nil
	}
	return syncPath(filepath.Join(dir, newest))
}

// syncPath fsyncs the file at path, if it was not removed.
func syncPath(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // removed: its records were flushed
	}
	if err != nil {
		return err
	}
	err = fsync(f)
	return errors.Join(err, f.Close())
}

// fsync is (*os.File).Sync; tests watch it.
var fsync = (*os.File).Sync

// Close closes the log, syncing what it holds.
func (l *Log) Close() error {
	close(l.stop)
	<-l.stopped
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for _, g := range l.closed {
		if g.w != nil {
			errs = append(errs, g.w.close())
			g.w = nil
		}
	}
	errs = append(errs, l.cur.w.close())
	return errors.Join(errs...)
}

// Checkpoint returns the checkpoint the log opened with or last recorded.
func (l *Log) Checkpoint() Checkpoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cp
}

// Enter must be called before a batch is ingested, and Leave, with the
// ticket Enter returns, after its record is appended (or it turned out to
// need none). leaf says the batch waits for no other replica meanwhile
// (see gate): it may then enter past a waiting Rotate while batches that
// may be waiting for it are inside.
func (l *Log) Enter(leaf bool) uint64 { return l.gate.enter(leaf) }

// Leave ends what Enter began.
func (l *Log) Leave(ticket uint64) { l.gate.leave(ticket) }

// Generation returns the id of the generation records are appended to.
// Between Enter and Leave it does not change.
func (l *Log) Generation() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur.id
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Append writes rec, whose contents wait for flush ticks up to due, and
// returns its sequence number. The record is in the operating system's
// hands; call Wait for it to be on disk as the fsync policy says. Call it
// between Enter and Leave.
func (l *Log) Append(rec []byte, due int64) (uint64, error) {
	return l.append(rec, due, l.opts.Compression)
}

// AppendDense is Append for a record the caller knows compressing would
// not shrink (one already packed): it is stored as it is, without the
// CPU of finding that out.
func (l *Log) AppendDense(rec []byte, due int64) (uint64, error) {
	return l.append(rec, due, CompressNone)
}

func (l *Log) append(rec []byte, due int64, c Compression) (uint64, error) {
	// Framing (and compressing) happens before the lock, so that streams
	// do it in parallel.
	bp := encBufs.Get().(*[]byte)
	defer encBufs.Put(bp)
	buf, off := appendFrame((*bp)[:0], rec, c)
	frame := buf[off:]
	*bp = buf[:0]
	if cap(*bp) > 1<<20 {
		*bp = nil // do not pin one huge record's buffer
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	g := l.cur
	if err := g.w.append(frame); err != nil {
		return 0, err
	}
	g.n++
	g.bytes += int64(len(frame))
	g.maxDue = max(g.maxDue, due)
	l.seq++
	return l.seq, nil
}

var encBufs = sync.Pool{New: func() any { return new([]byte) }}

// The first byte of a frame's body (after its CRC-32C) says how the
// record is stored. Frames written before the marker existed hold an s2
// block directly, which starts with the uvarint length of the record:
// every record is longer than 1 byte, so that byte is never 0 or 1.
const (
	bodyRaw byte = 0 // the record as it is
	bodyS2  byte = 1 // the record s2-compressed
)

// appendFrame appends to b the frame of rec as Append writes it: the
// uvarint length of its body, and the body: a CRC-32C of the rest, the
// marker of how the record is stored, and the record, compressed with c
// where that pays (encodeIfPays). It returns b and where the frame starts
// in it.
func appendFrame(b, rec []byte, c Compression) ([]byte, int) {
	// The body is built first, after room for the longest length.
	start := len(b) + binary.MaxVarintLen64
	room := len(rec)
	if c == CompressS2 {
		room = max(room, s2Room(len(rec)))
	}
	b = slices.Grow(b, binary.MaxVarintLen64+5+room)[:start]
	b = append(b, 0, 0, 0, 0)
	n := 0
	if c == CompressS2 {
		n = encodeIfPays(b[len(b)+1:len(b)+1+s2Room(len(rec))], rec)
	}
	if n > 0 {
		b = append(b, bodyS2)
		b = b[:len(b)+n]
	} else {
		b = append(b, bodyRaw)
		b = append(b, rec...)
	}
	binary.LittleEndian.PutUint32(b[start:], crc32.Checksum(b[start+4:], castagnoli))
	var lb [binary.MaxVarintLen64]byte
	m := binary.PutUvarint(lb[:], uint64(len(b)-start))
	copy(b[start-m:], lb[:m])
	return b, start - m
}

// probeSize is how much of a record's end tells whether compressing it
// pays.
const probeSize = 2 << 10

// s2Room is the room encodeIfPays needs for a record of n bytes.
func s2Room(n int) int {
	p := min(n, probeSize)
	return s2.MaxEncodedLen(n-p) + s2.MaxEncodedLen(p)
}

// encodeIfPays writes rec s2-compressed to the start of dst, of
// s2Room(len(rec)) bytes, and returns the length of the block, or 0 when
// compressing does not pay: when s2 does not shrink the record's last
// probeSize bytes (all of it, if shorter) to under 45 %. s2 costs about a
// nanosecond of CPU for every byte it reads, before the ack, and what it
// saves is bytes written: full-name samples shrink to about a third, and
// are compressed; samples by series reference (a varint and a value each)
// only to about half, and are stored as they are, which is still fewer
// bytes a sample than a full-name one compressed. The probe is not
// compressed twice: the block is the rest's block followed by the
// probe's, which s2's block format allows (s2.ConcatBlocks), each copy
// reaching back only within its own part.
func encodeIfPays(dst, rec []byte) int {
	split := max(len(rec)-probeSize, 0)
	head, probe := rec[:split], rec[split:]
	if len(probe) == 0 {
		return 0
	}
	mh := 0
	if len(head) > 0 {
		mh = s2.MaxEncodedLen(len(head))
	}
	tail := s2.Encode(dst[mh:], probe)
	if len(tail)*20 >= len(probe)*9 {
		return 0
	}
	if len(head) == 0 {
		return len(tail)
	}
	hb := s2.Encode(dst[:mh], head)
	_, hh := binary.Uvarint(hb)
	_, th := binary.Uvarint(tail)
	// The block's header is the whole record's length, which may take a
	// byte more than the head's.
	var lb [binary.MaxVarintLen64]byte
	ht := binary.PutUvarint(lb[:], uint64(len(rec)))
	copy(dst[ht:], hb[hh:])
	copy(dst, lb[:ht])
	n := ht + len(hb) - hh
	return n + copy(dst[n:], tail[th:])
}

// decodeBody returns the record a frame body (its checksum held) stores,
// decompressing into dst if it must; the record may be a view into body.
func decodeBody(dst, body []byte) ([]byte, error) {
	if len(body) == 0 {
		return nil, errUndecodable
	}
	switch body[0] {
	case bodyRaw:
		return body[1:], nil
	case bodyS2:
		body = body[1:]
	}
	// bodyS2, or a frame of the earlier format: an s2 block.
	rec, err := s2.Decode(dst, body)
	if err != nil {
		return nil, errUndecodable
	}
	return rec, nil
}

// Wait returns once record seq is as durable as the fsync policy makes
// it. Concurrent waiters share one fsync.
func (l *Log) Wait(seq uint64) error {
	if l.opts.Sync != SyncAlways {
		l.smu.Lock()
		defer l.smu.Unlock()
		return l.syncErr
	}
	l.smu.Lock()
	defer l.smu.Unlock()
	for l.synced < seq {
		if l.syncErr != nil {
			return l.syncErr
		}
		if l.syncing {
			l.scond.Wait()
			continue
		}
		l.syncing = true
		l.smu.Unlock()
		err := l.syncNow()
		l.smu.Lock()
		l.syncing = false
		if err != nil {
			// A failed fsync leaves the page cache in an unknown state:
			// nothing after it can be called durable.
			l.syncErr = err
		}
		l.scond.Broadcast()
	}
	return nil
}

// Rotate ends the current generation, once every batch between Enter and
// Leave has left, and returns its id: every record of generations up to
// it is in the windows. The flusher calls it with drain, which drains the
// windows (nil: nothing to drain): no batch enters until drain returns,
// so a record of a later generation was taken into the windows after the
// drain, never between the rotation and the drain, where the flush would
// carry it while its checkpoint does not cover it.
func (l *Log) Rotate(drain func()) (uint64, error) {
	l.gate.lock()
	l.mu.Lock()
	old := l.cur
	rotated := old.n != 0
	var err error
	if rotated {
		if err = l.startGeneration(old.id + 1); err == nil {
			l.closed = append(l.closed, old)
			l.dirty = append(l.dirty, old)
		}
	}
	l.mu.Unlock()
	if drain != nil {
		drain()
	}
	l.gate.unlock()
	if !rotated || err != nil {
		return old.id - 1, err
	}
	// Closing syncs the generation: the flusher waits for it, not ingest.
	cerr := old.w.close()
	l.mu.Lock()
	old.w = nil
	l.mu.Unlock()
	return old.id, cerr
}

// Record notes that the flush of tick, which drained the windows after
// Rotate returned generation gen, has its payloads safely queued: the
// checkpoint is written, and the generations it covers removed. final says
// it was the final flush, which drained everything: its checkpoint covers
// every record, and keeps, as any other, the generations whose due times
// (the late window of their buckets included) are after tick, so that the
// next start restores the buckets still kept for late samples.
func (l *Log) Record(gen uint64, tick int64, final bool) error {
	l.mu.Lock()
	cp := Checkpoint{Generation: gen, Tick: tick, Stop: final}
	// After a final flush the next run starts its ticks again.
	if cp.Generation < l.cp.Generation || (cp.Tick < l.cp.Tick && !l.cp.Final()) {
		l.mu.Unlock()
		return fmt.Errorf("wal: checkpoint %+v goes back from %+v", cp, l.cp)
	}
	if err := l.writeCheckpoint(cp); err != nil {
		l.mu.Unlock()
		return err
	}
	l.cp = cp
	n := 0
	for _, g := range l.closed {
		if g.id > gen || g.maxDue > tick || g.w != nil || g.replay {
			break
		}
		n++
	}
	gone := slices.Clone(l.closed[:n])
	l.closed = append(l.closed[:0], l.closed[n:]...)
	l.mu.Unlock()
	for _, g := range gone {
		if err := os.RemoveAll(g.dir); err != nil {
			return fmt.Errorf("wal: remove generation %d: %w", g.id, err)
		}
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

// Replay calls fn with every intact record the log opened with, oldest
// first; flushed says that the checkpoint's flush, of tick, drained the
// windows after the record's batch was in them (after a final flush, which
// drained everything, tick is math.MaxInt64). fn returns the record's
// due time. rec is only valid during the call. Records that fail their
// checks (a torn tail after a power loss, a damaged sector) are skipped
// and returned as Damage, one per damaged stretch; intact records after
// them, in the same segment or later ones, are replayed. Call it once,
// before any Append.
func (l *Log) Replay(fn func(rec []byte, flushed bool, tick int64) (due int64, err error)) ([]Damage, error) {
	l.mu.Lock()
	gens := slices.Clone(l.closed)
	cp := l.cp
	l.mu.Unlock()
	if cp.Final() {
		cp.Tick = finalTick
	}
	var damage []Damage
	for _, g := range gens {
		if !g.replay {
			continue
		}
		segs, err := listSegments(g.dir)
		if err != nil {
			return damage, err
		}
		for i, seg := range segs {
			data, err := os.ReadFile(filepath.Join(g.dir, seg.name))
			if err != nil {
				return damage, fmt.Errorf("wal: read generation %d: %w", g.id, err)
			}
			l.mu.Lock()
			g.bytes += int64(len(data))
			l.mu.Unlock()
			intact := 0
			var dmg []Damage
			err = scanSegment(data, func(body []byte) error {
				// The checksum held, so the writer wrote this: a record
				// the decoder cannot read is damage too.
				rec, err := decodeBody(l.dec[:cap(l.dec)], body)
				if err != nil {
					return err
				}
				if body[0] != bodyRaw {
					l.dec = rec // keep the decompression buffer
				}
				due, err := fn(rec, g.id <= cp.Generation, cp.Tick)
				if err != nil {
					return err
				}
				intact++
				l.mu.Lock()
				g.n++
				g.maxDue = max(g.maxDue, due)
				l.mu.Unlock()
				return nil
			}, func(off, n int, torn bool) {
				dmg = append(dmg, Damage{Generation: g.id, Segment: seg.name, Offset: int64(off), Bytes: n, Records: 1, Torn: torn})
			})
			if err != nil {
				return damage, err
			}
			if i+1 < len(segs) && len(dmg) > 0 {
				// A segment's records are numbered from its name to the
				// next one's: what is missing is exactly what was lost.
				// Only a generation's end can be torn.
				missing := int(segs[i+1].first-seg.first) - intact
				for j := range dmg {
					dmg[j].Records, dmg[j].Torn = 1, false
				}
				dmg[0].Records = max(missing-len(dmg)+1, 1)
			}
			l.mu.Lock()
			for _, d := range dmg {
				l.damaged += uint64(d.Records)
			}
			l.mu.Unlock()
			damage = append(damage, dmg...)
		}
		// Replayed generations wait for the flushes after the restart.
		l.mu.Lock()
		g.replay = false
		l.mu.Unlock()
	}
	return damage, nil
}

var errUndecodable = errors.New("wal: record does not decompress")

// Damage is a stretch of a generation's segment that failed its checks
// at replay: the records in it were skipped.
type Damage struct {
	Generation uint64
	Segment    string // the segment file's name
	Offset     int64
	Bytes      int
	// Records is how many records the stretch held. In a generation's
	// newest segment that is not known, and each stretch counts one.
	Records int
	// Torn says the stretch ends the generation: the last record was cut
	// short, as a power loss or a full disk leaves it.
	Torn bool
}

func (d Damage) Error() string {
	if d.Torn {
		return fmt.Sprintf("wal: generation %d segment %s ends in a record cut short (%d bytes at offset %d), as a power loss or a full disk leaves it; it was skipped",
			d.Generation, d.Segment, d.Bytes, d.Offset)
	}
	return fmt.Sprintf("wal: generation %d segment %s: %d bytes at offset %d fail their checksum; %d records skipped",
		d.Generation, d.Segment, d.Bytes, d.Offset, d.Records)
}

// segment is a segment file of a generation and the index of its first
// record.
type segment struct {
	name  string
	first uint64
}

// listSegments returns the segment files of a generation, oldest first.
func listSegments(dir string) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	var segs []segment
	for _, e := range ents { // zero-padded indexes: sorted order is log order
		first, err := strconv.ParseUint(e.Name(), 10, 64)
		if e.IsDir() || len(e.Name()) != 20 || err != nil {
			continue
		}
		segs = append(segs, segment{e.Name(), first})
	}
	return segs, nil
}

// scanSegment calls record with the compressed body of every frame of
// data whose checksum holds, and damaged with every stretch between them
// that holds none. A frame is tidwall's uvarint length and that many
// bytes: a CRC-32C of the rest, then the body (see appendFrame). Past a
// damaged stretch, scanning resynchronises at the next offset where a
// whole frame's checksum holds; a false match is a one in 2^32 chance
// per offset tried, and its record, if it even decompresses, is refused
// by the caller's decoder.
func scanSegment(data []byte, record func(body []byte) error, damaged func(off, n int, torn bool)) error {
	bad := -1 // start of the damaged stretch being crossed
	for pos := 0; pos < len(data); {
		if body, n := frameAt(data[pos:]); n > 0 {
			err := record(body)
			if errors.Is(err, errUndecodable) {
				if bad < 0 {
					bad = pos
				}
				pos += n
				continue
			}
			if err != nil {
				return err
			}
			if bad >= 0 {
				damaged(bad, pos-bad, false)
				bad = -1
			}
			pos += n
			continue
		}
		if bad < 0 {
			bad = pos
		}
		pos++
	}
	if bad >= 0 {
		// Torn: the stretch's first frame claims more than is left.
		size, m := binary.Uvarint(data[bad:])
		damaged(bad, len(data)-bad, m <= 0 || uint64(len(data)-bad-m) < size)
	}
	return nil
}

// frameAt returns the body of the frame at the start of data and the
// frame's length, or 0 if no whole frame with a matching checksum is
// there.
func frameAt(data []byte) (body []byte, n int) {
	size, m := binary.Uvarint(data)
	if m <= 0 || size < 5 || uint64(len(data)-m) < size {
		return nil, 0
	}
	frame := data[m : m+int(size)]
	if binary.LittleEndian.Uint32(frame) != crc32.Checksum(frame[4:], castagnoli) {
		return nil, 0
	}
	return frame[4:], m + int(size)
}

// Stats is the log's size.
type Stats struct {
	Records     uint64 // records kept
	Bytes       int64  // of the records kept, as written
	Generations int    // generations kept, the current one included
	// Damaged is how many records replay skipped because they failed
	// their checks.
	Damaged uint64
}

// Stats returns the log's size now.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := Stats{Records: l.cur.n, Bytes: l.cur.bytes, Generations: len(l.closed) + 1, Damaged: l.damaged}
	for _, g := range l.closed {
		st.Records += g.n
		st.Bytes += g.bytes
	}
	return st
}

// Final reports whether c is the checkpoint of a final flush, which drained
// everything, open buckets included.
func (c Checkpoint) Final() bool { return c.Stop || c.Tick == finalTick }

// Flushed returns the tick by which the checkpoint's flush had flushed
// every bucket due, or 0 when it does not say: no checkpoint, or one of a
// final flush written before final checkpoints kept their tick.
func (c Checkpoint) Flushed() int64 {
	if c.Tick == finalTick {
		return 0
	}
	return c.Tick
}

// finalTick is the checkpoint tick of the final flush as earlier releases
// wrote it, and the tick Replay reports for a final flush's checkpoint:
// every due time is at or before it.
const finalTick = math.MaxInt64

package wal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// segWriter appends the frames of one generation to its segment files.
// The files keep github.com/tidwall/wal's binary format, which logs
// written before this writer hold: every segment is named by the 20-digit
// index of its first record (from 1) and holds frames, each a uvarint
// length and that many bytes. Unlike tidwall's writer it keeps nothing of
// a segment in memory and copies no record: a frame goes to the kernel in
// one write(2). A full segment, and the directory entry of the next one,
// are handed to the next sync (syncFull) instead of being fsynced while
// appends wait, unless inline says so.
//
// append and close are called under the Log's lock, or by one goroutine
// once the generation has ended; syncFull may run at the same time.
type segWriter struct {
	dir    string
	size   int64 // target size of a segment
	inline bool  // fsync a full segment before appending goes on
	f      *os.File
	n      int64  // bytes in f
	next   uint64 // index of the next record

	// syncMu is held through a whole syncFull, so that one returns only
	// once the segments another took are fsynced too.
	syncMu sync.Mutex
	mu     sync.Mutex // guards full and newFile
	full   []*os.File // full segments not yet fsynced and closed
	// newFile says a segment was created since the directory was last
	// fsynced: its name is durable only once the directory is.
	newFile bool
}

// openSegWriter creates the directory of a new generation and its first
// segment.
func openSegWriter(dir string, size int64, inline bool) (*segWriter, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	// newFile: the first segment's name is durable once the next sync
	// fsyncs the generation's directory (its parent is fsynced by Log).
	w := &segWriter{dir: dir, size: size, inline: inline, next: 1, newFile: true}
	if err := w.create(); err != nil {
		return nil, err
	}
	return w, nil
}

// create starts the segment whose first record is w.next.
func (w *segWriter) create() error {
	f, err := os.OpenFile(filepath.Join(w.dir, genName(w.next)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	w.f, w.n = f, 0
	return nil
}

// append writes frame, a whole frame (length and body), as record w.next.
// A write the file refuses leaves nothing of the frame behind when the
// file can be cut back, so that a later record follows the last whole one.
func (w *segWriter) append(frame []byte) error {
	if w.n >= w.size {
		if err := w.cycle(); err != nil {
			return err
		}
	}
	n, err := w.f.Write(frame)
	if err != nil {
		if n > 0 && w.f.Truncate(w.n) != nil {
			w.n += int64(n) // a torn frame stays: replay skips it
		}
		return fmt.Errorf("wal: append: %w", err)
	}
	w.n += int64(n)
	w.next++
	return nil
}

// cycle ends the current segment and starts the next one.
func (w *segWriter) cycle() error {
	old := w.f
	if w.inline {
		if err := old.Sync(); err != nil {
			return fmt.Errorf("wal: fsync: %w", err)
		}
	}
	// The full segment stays open until its successor exists: a create
	// that fails leaves the writer as it was, and the next append tries
	// again, instead of every later append failing on a closed file.
	if err := w.create(); err != nil {
		return err
	}
	if w.inline {
		if err := old.Close(); err != nil {
			return fmt.Errorf("wal: %w", err)
		}
		return syncDir(w.dir)
	}
	w.mu.Lock()
	w.full = append(w.full, old)
	w.newFile = true
	w.mu.Unlock()
	return nil
}

// syncFull fsyncs and closes the full segments appends have moved past,
// and the directory when a segment was created in it since the last time.
func (w *segWriter) syncFull() error {
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	w.mu.Lock()
	full, newFile := w.full, w.newFile
	w.full, w.newFile = nil, false
	w.mu.Unlock()
	var errs []error
	for _, f := range full {
		errs = append(errs, fsync(f), f.Close())
	}
	if newFile {
		if err := syncDir(w.dir); !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// close fsyncs and closes every segment of the generation.
func (w *segWriter) close() error {
	err := w.syncFull()
	return errors.Join(err, w.f.Sync(), w.f.Close())
}

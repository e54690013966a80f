package upstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Spool keeps a pipeline's payloads on disk, in a bbolt file, from the
// moment they are queued until the intake accepts them or refuses them for
// good. Payloads are handed out oldest first; after a restart those still
// in the file are handed out again. It bounds the bytes it holds: Put
// waits for room. It is safe for concurrent use.
type Spool struct {
	db       *bolt.DB
	maxBytes int64

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every Put and Delete
	bytes   int64
	count   int
	next    uint64 // key of the next Put
	unread  uint64 // lowest key not yet handed out by Next
}

var spoolBucket = []byte("payloads")

// storedPayload is a Payload as the spool writes it.
type storedPayload struct {
	Tenant, Kind, Encoding string
	Body                   []byte
	Header                 http.Header
	Points                 int
	Replaces               bool
}

// OpenSpool opens or creates the spool file path, holding at most maxBytes
// of payloads. The file holds request headers, per-tenant API keys among
// them: it is created readable by its owner only.
func OpenSpool(path string, maxBytes int64) (*Spool, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("send queue %s: %w", path, err)
	}
	s := &Spool{db: db, maxBytes: maxBytes, changed: make(chan struct{}), next: 1, unread: 1}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(spoolBucket)
		if err != nil {
			return err
		}
		first := true
		return b.ForEach(func(k, v []byte) error {
			key := binary.BigEndian.Uint64(k)
			if first {
				s.unread, first = key, false
			}
			s.next = key + 1
			s.bytes += int64(len(v))
			s.count++
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("send queue %s: %w", path, err)
	}
	return s, nil
}

// OpenSpoolIn opens or creates the spool of upstream name in dir,
// dir/<name>.queue, creating dir if need be.
func OpenSpoolIn(dir, name string, maxBytes int64) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("send queue: %w", err)
	}
	return OpenSpool(filepath.Join(dir, url.PathEscape(name)+".queue"), maxBytes)
}

// Close closes the file; what it holds stays for the next Open.
func (s *Spool) Close() error { return s.db.Close() }

// Len returns the payloads held and their bytes.
func (s *Spool) Len() (count int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count, s.bytes
}

// Full reports whether the spool holds its maximum.
func (s *Spool) Full() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes >= s.maxBytes
}

func (s *Spool) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Put writes pl durably and returns its key. While the spool is full it
// waits for room until ctx ends; onFull is called once if it has to wait.
// A payload larger than the whole bound is taken when the spool is empty.
func (s *Spool) Put(ctx context.Context, pl *Payload, onFull func()) (uint64, error) {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(storedPayload{Tenant: pl.Tenant, Kind: pl.Kind, Encoding: pl.Encoding,
		Body: pl.Body, Header: pl.Header, Points: pl.Points, Replaces: pl.Replaces}); err != nil {
		return 0, err
	}
	size := int64(buf.Len())
	s.mu.Lock()
	for s.count > 0 && s.bytes+size > s.maxBytes {
		if onFull != nil {
			onFull()
			onFull = nil
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		s.mu.Lock()
	}
	key := s.next
	s.next++
	s.bytes += size // reserved before the write, so that Puts cannot overrun
	s.count++
	s.mu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(spoolBucket).Put(binary.BigEndian.AppendUint64(nil, key), buf.Bytes())
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.bytes -= size
		s.count--
		return 0, fmt.Errorf("send queue write: %w", err)
	}
	s.notifyLocked()
	return key, nil
}

// Next returns the oldest payload not yet handed out, waiting for one
// until ctx ends.
func (s *Spool) Next(ctx context.Context) (uint64, *Payload, error) {
	for {
		s.mu.Lock()
		ch, from := s.changed, s.unread
		s.mu.Unlock()
		var key uint64
		var sp storedPayload
		err := s.db.View(func(tx *bolt.Tx) error {
			k, v := tx.Bucket(spoolBucket).Cursor().Seek(binary.BigEndian.AppendUint64(nil, from))
			if k == nil {
				return nil
			}
			key = binary.BigEndian.Uint64(k)
			return gob.NewDecoder(bytes.NewReader(v)).Decode(&sp)
		})
		if err != nil {
			return 0, nil, fmt.Errorf("send queue read: %w", err)
		}
		if key != 0 {
			s.mu.Lock()
			s.unread = max(s.unread, key+1)
			s.mu.Unlock()
			return key, &Payload{Tenant: sp.Tenant, Kind: sp.Kind, Body: sp.Body, Encoding: sp.Encoding,
				Header: sp.Header, Points: sp.Points, Replaces: sp.Replaces, spoolKey: key}, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
}

// Delete removes payload key: the intake took it or refused it for good.
func (s *Spool) Delete(key uint64) error {
	var size int
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(spoolBucket)
		k := binary.BigEndian.AppendUint64(nil, key)
		v := b.Get(k)
		if v == nil {
			return errors.New("no such payload")
		}
		size = len(v)
		return b.Delete(k)
	})
	if err != nil {
		return fmt.Errorf("send queue delete %d: %w", key, err)
	}
	s.mu.Lock()
	s.bytes -= int64(size)
	s.count--
	s.notifyLocked()
	s.mu.Unlock()
	return nil
}

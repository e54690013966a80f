package upstream

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Compression names a Content-Encoding: "zstd", "gzip" or "none".
type Compression string

// The compressions intakes accept.
const (
	CompressZstd Compression = "zstd"
	CompressGzip Compression = "gzip"
	CompressNone Compression = "none"
)

// Validate reports an unknown compression.
func (c Compression) Validate() error {
	switch c {
	case CompressZstd, CompressGzip, CompressNone:
		return nil
	}
	return fmt.Errorf("compression %q is not zstd, gzip or none", c)
}

// encoding returns the Content-Encoding header value.
func (c Compression) encoding() string {
	if c == CompressNone {
		return ""
	}
	return string(c)
}

var zstdEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))

var gzipWriters = sync.Pool{New: func() any { w, _ := gzip.NewWriterLevel(nil, gzip.DefaultCompression); return w }}

// compress returns raw compressed with c, in a new slice.
func (c Compression) compress(raw []byte) []byte {
	switch c {
	case CompressZstd:
		return zstdEncoder.EncodeAll(raw, make([]byte, 0, len(raw)/4+64))
	case CompressGzip:
		var buf bytes.Buffer
		buf.Grow(len(raw)/4 + 64)
		w := gzipWriters.Get().(*gzip.Writer)
		w.Reset(&buf)
		w.Write(raw)
		w.Close()
		gzipWriters.Put(w)
		return buf.Bytes()
	}
	return bytes.Clone(raw)
}

package codec

import (
	"math/bits"
	"slices"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Frame receives a request's bytes undecoded, for the protowire decoder.
//
// By default the bytes are copied into the frame's own buffer, which the
// next request received into the frame reuses. With Borrow set, a request
// that gRPC holds in one buffer is not copied: Buf is gRPC's buffer, held
// until the next request is received into the frame or Release is called,
// whichever comes first. Either way Buf is valid until then, and must not
// be written.
type Frame struct {
	Buf    []byte
	Borrow bool
	held   mem.Buffer // gRPC's buffer Buf is, when borrowed
	own    []byte     // the frame's own buffer
}

// Release gives back the buffer Buf borrowed, if any, and empties Buf.
func (f *Frame) Release() {
	if f.held != nil {
		f.held.Free()
		f.held, f.Buf = nil, nil
	}
}

// Trim drops the frame's own buffer if it grew past limit bytes, so that
// a frame kept for reuse does not pin one huge request's memory.
func (f *Frame) Trim(limit int) {
	if cap(f.own) > limit {
		f.own = nil
		if f.held == nil {
			f.Buf = nil
		}
	}
}

// grpcCodec is the proto codec, except that a *Frame receives the raw bytes.
// It keeps the name "proto", so clients see the ordinary content type.
type grpcCodec struct{ encoding.CodecV2 }

// GRPC returns the codec a gRPC server of aggd.v1 uses: the proto codec,
// except that a *Frame receives the raw bytes.
func GRPC() encoding.CodecV2 { return grpcCodec{encoding.GetCodecV2(proto.Name)} }

// Unmarshal implements encoding.CodecV2.
func (c grpcCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*Frame)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	f.Release()
	if f.Borrow && len(data) == 1 {
		// gRPC frees data after Unmarshal: a reference of the frame's
		// own keeps the buffer until Release.
		f.held = data[0]
		f.held.Ref()
		f.Buf = f.held.ReadOnlyData()
		return nil
	}
	f.own = slices.Grow(f.own[:0], data.Len()) // one allocation, at its size
	for _, b := range data {
		f.own = append(f.own, b.ReadOnlyData()...)
	}
	f.Buf = f.own
	return nil
}

// Raw is a request already encoded, which the Client codec sends as is.
type Raw []byte

// clientCodec is the proto codec, except that it sends a Raw as is.
type clientCodec struct{ encoding.CodecV2 }

// Client returns the codec of a gRPC client that sends requests it
// encoded itself (Raw) and decodes responses with proto.
func Client() encoding.CodecV2 { return clientCodec{encoding.GetCodecV2(proto.Name)} }

// Marshal implements encoding.CodecV2.
func (c clientCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(Raw); ok {
		return mem.BufferSlice{mem.SliceBuffer(r)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// Buffer tiers of the pool BufferPool returns: powers of two from 256
// bytes to 1 MiB. Larger buffers are not pooled.
const (
	minTierShift = 8
	maxTierShift = 20
)

// bufferPool is a mem.BufferPool of power-of-two tiers that hands a buffer
// out again without zeroing it, unlike grpc's default pool, which clears
// every buffer it reuses (a 16 KiB one for each HTTP/2 data frame read):
// gRPC fills what it asks for before reading it.
type bufferPool struct {
	tiers [maxTierShift - minTierShift + 1]sync.Pool
}

var sharedBufferPool bufferPool

// BufferPool returns the buffer pool of aggd's gRPC server: buffers it
// hands out again are not zeroed. It is safe for concurrent use.
func BufferPool() mem.BufferPool { return &sharedBufferPool }

// Get implements mem.BufferPool.
func (p *bufferPool) Get(size int) *[]byte {
	if size > 1<<maxTierShift {
		b := make([]byte, size)
		return &b
	}
	shift := minTierShift // the smallest tier that holds size
	if size > 1<<minTierShift {
		shift = bits.Len(uint(size - 1))
	}
	if bp, ok := p.tiers[shift-minTierShift].Get().(*[]byte); ok {
		*bp = (*bp)[:size]
		return bp
	}
	b := make([]byte, size, 1<<shift)
	return &b
}

// Put implements mem.BufferPool. A buffer whose capacity is not one of
// the tiers is left to the garbage collector.
func (p *bufferPool) Put(bp *[]byte) {
	c := cap(*bp)
	if c < 1<<minTierShift || c > 1<<maxTierShift || c&(c-1) != 0 {
		return
	}
	p.tiers[bits.Len(uint(c))-1-minTierShift].Put(bp)
}

package codec

import (
	"slices"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Frame receives a request's bytes undecoded, for the protowire decoder.
type Frame struct{ Buf []byte }

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
	f.Buf = slices.Grow(f.Buf[:0], data.Len()) // one allocation, at its size
	for _, b := range data {
		f.Buf = append(f.Buf, b.ReadOnlyData()...)
	}
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

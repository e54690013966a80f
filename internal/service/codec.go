package service

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// frame receives a request's bytes undecoded, for the protowire decoder.
type frame struct{ buf []byte }

// codec is the proto codec, except that a *frame receives the raw bytes.
// It keeps the name "proto", so clients see the ordinary content type.
type codec struct{ encoding.CodecV2 }

func newCodec() codec { return codec{encoding.GetCodecV2(proto.Name)} }

// Unmarshal implements encoding.CodecV2.
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	f.buf = f.buf[:0]
	for _, b := range data {
		f.buf = append(f.buf, b.ReadOnlyData()...)
	}
	return nil
}

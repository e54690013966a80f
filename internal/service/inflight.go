package service

import (
	"context"
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/aggd/aggd/internal/codec"
)

// MemoryRoom reports the memory left for requests in flight
// (overload.Guard).
type MemoryRoom interface {
	// Room returns the bytes below the hard limit at the last sample.
	Room() int64
	// Capacity returns the hard limit, bytes.
	Capacity() int64
}

// A server with Config.Memory reserves the memory each request takes to
// decode, ingest and log against it before it decodes it. Requests in
// flight may hold half of the hard limit together, and no more than the room left
// below it unless none is in flight; a request waits for its reservation
// up to reserveWait, and is then refused with ResourceExhausted and
// RetryInfo. One that could never fit (more than half of the hard limit
// by itself) is refused with ResourceExhausted alone, with a message that
// names the largest request that would.
//
// defaultReserveWait bounds how long a request waits for room.
const defaultReserveWait = 10 * time.Second

// requestCost is the memory the request in st takes from here on: its
// decoded items and keys, and, with a journal, its record and the record
// compressed; c is what the request holds, which sizes the decoder's slices
// once the memory is reserved.
func (s *Server) requestCost(st *callState, stream bool) (n int64, c codec.Counts) {
	c = codec.Count(st.frame.Buf, stream)
	n = codec.DecodeCost(len(st.frame.Buf), c)
	if s.journal != nil {
		n += 2 * int64(len(st.frame.Buf))
	}
	return n, c
}

// reserve reserves the memory the request read into st takes, or returns
// the status that refuses it; release gives it back. Call it after the
// decoder's Reset. The decoder's slices are grown to the request's size
// only once its memory is reserved: a request refused allocates nothing.
func (s *Server) reserve(ctx context.Context, st *callState, stream bool, tenant string) (release func(), err error) {
	if s.room == nil {
		return func() {}, nil
	}
	n, c := s.requestCost(st, stream)
	release, err = s.reserveBytes(ctx, n, len(st.frame.Buf), tenant)
	if err == nil {
		st.dec.Grow(&st.batch, c)
	}
	return release, err
}

// errTooLargeForBudget marks the refusal of a request that could never
// fit the budget, which OTLP/HTTP answers with 413 rather than 429.
var errTooLargeForBudget = errors.New("request too large for the memory budget")

// reserveBytes reserves n bytes for a request of size bytes (see
// SetMemoryRoom), or returns the status that refuses it; release gives
// them back.
func (s *Server) reserveBytes(ctx context.Context, n int64, size int, tenant string) (release func(), err error) {
	if s.room == nil {
		return func() {}, nil
	}
	limit := s.room.Capacity() / 2
	if n > limit {
		largest := int64(size) * limit / n
		return nil, tooLarge{s.refuse(RefusedMemory, tenant, status.Errorf(codes.ResourceExhausted,
			"request larger than max (%d vs. %d) that aggd's memory budget can decode at once: it needs %d bytes, half the budget is %d; send it in smaller requests",
			size, largest, n, limit))}
	}
	var deadline time.Time
	for wait := time.Millisecond; ; wait = min(2*wait, 20*time.Millisecond) {
		cur := s.inflight.Load()
		if cur+n <= limit && (cur == 0 || cur+n <= s.room.Room()) {
			if s.inflight.CompareAndSwap(cur, cur+n) {
				return func() { s.inflight.Add(-n) }, nil
			}
			continue
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(s.reserveWait)
		} else if time.Now().After(deadline) {
			st, _ := status.New(codes.ResourceExhausted, "aggd's memory budget has had no room for this request; retry later").
				WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(overloadRetry)})
			return nil, s.refuse(RefusedMemory, tenant, st.Err())
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
}

// tooLarge is the status of a request that could never fit the budget;
// it unwraps to errTooLargeForBudget.
type tooLarge struct{ error }

func (e tooLarge) GRPCStatus() *status.Status { return status.Convert(e.error) }
func (e tooLarge) Unwrap() error              { return errTooLargeForBudget }

// otlpCost is the memory converting an OTLP request of size bytes holding
// n points or spans takes: the items, the keys and tags built from the
// request's bytes (at most as many again), and with a journal the record
// and the record compressed; a JSON body (json) also takes the generated
// message protojson fills and the protobuf it is encoded to, taken here as
// four times its size.
func (s *Server) otlpCost(size, n int, spans, json bool) int64 {
	c := codec.Counts{Samples: n}
	if spans {
		c = codec.Counts{Spans: n}
	}
	cost := codec.DecodeCost(size, c) + int64(size)
	if s.journal != nil {
		cost += 2 * int64(size)
	}
	if json {
		cost += 4 * int64(size)
	}
	return cost
}

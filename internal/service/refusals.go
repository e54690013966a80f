package service

import (
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Refusal is why a request was refused whole with ResourceExhausted.
type Refusal int

const (
	// RefusedTenantLimit: the server holds --max-tenants tenants and the
	// call named a new one.
	RefusedTenantLimit Refusal = iota
	// RefusedTooLarge: the request was over --max-recv-msg-size.
	RefusedTooLarge
	// RefusedMemory: aggd was over its memory budget (with RetryInfo).
	RefusedMemory
	// RefusedQueue: the send queue on disk was full or could not be
	// written (with RetryInfo).
	RefusedQueue
	// NumRefusals is the number of kinds.
	NumRefusals
)

var refusalNames = [NumRefusals]string{"tenant_limit", "too_large", "memory", "queue"}

// String returns the snake_case code of r.
func (r Refusal) String() string {
	if r >= 0 && r < NumRefusals {
		return refusalNames[r]
	}
	return "unknown"
}

// refusals counts requests refused whole, by kind, and logs them at most
// once a second per kind, with the count so far.
type refusals struct {
	n      [NumRefusals]atomic.Uint64
	logged [NumRefusals]atomic.Int64 // unix nanoseconds of the last log line
}

// Refusals calls fn with every kind of refusal and how many requests were
// refused for it.
func (s *Server) Refusals(fn func(reason string, n uint64)) {
	for r := range NumRefusals {
		fn(r.String(), s.refusals.n[r].Load())
	}
}

// refuse counts err, a call's status error, as a refusal of kind r if it
// is ResourceExhausted, and returns it.
func (s *Server) refuse(r Refusal, tenant string, err error) error {
	st, _ := status.FromError(err)
	if st.Code() != codes.ResourceExhausted {
		return err
	}
	n := s.refusals.n[r].Add(1)
	now := time.Now().UnixNano()
	last := s.refusals.logged[r].Load()
	if now-last >= int64(time.Second) && s.refusals.logged[r].CompareAndSwap(last, now) {
		s.log.Warn("request refused", "reason", r.String(), "tenant", tenant, "refused", n, "err", st.Message())
	}
	return err
}

// Package service is aggd's gRPC edge: tenancy, decoding and validation of
// batches into window types, acks and status codes.
//
// Batches are decoded straight from the wire with protowire: names, hosts
// and tags stay views into the received buffer until a new context copies
// them, so a sample costs no allocation. The generated aggd.v1 types stay the
// public API; events and service checks, which are not on the hot path, are
// decoded with them. Handlers start no goroutine.
package service

// Package codec reads and writes aggd.v1 messages with protowire.
//
// Batches are decoded straight from the wire: names, hosts and tags stay
// views into the received buffer until a new context copies them, so a
// sample costs no allocation. The generated aggd.v1 types stay the public
// API; events and service checks, which are not on the hot path, are
// decoded with them. The gRPC edge decodes requests with it, and the
// write-ahead log's records are aggd.v1 frames that replay decodes the same
// way.
package codec

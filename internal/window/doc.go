// Package window holds aggd's aggregation state: contexts, time buckets and
// the per-type metric state inside them.
//
// It is pure data. It starts no goroutine, reads no clock (callers pass the
// arrival time) and knows nothing of transports. A Shard is not safe for
// concurrent use; its owner serialises access to it. A Bucket handed out by
// Shard.Drain belongs to the caller until it calls Release.
package window

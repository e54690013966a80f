// Package flush owns aggd's aggregation shards, the aligned ticker and the
// drain of closed buckets to an Exporter.
//
// Contexts are spread over shards by hash, so one large tenant uses every
// core. A shard is guarded by its own mutex, taken once per batch for the
// samples of that shard; the flusher takes it only to swap closed buckets
// out, and encodes and sends with no shard locked.
package flush

// Package otlpwire decodes OTLP export requests straight from their
// protobuf encoding, as views into the request buffer: strings point into
// it and the decoder's slices are reused from request to request, so
// decoding allocates nothing in steady state. It follows proto.Unmarshal's
// reading of the messages it decodes (last value wins for scalars,
// repeated occurrences of a message merge, packed or not) and is fuzzed
// against it.
package otlpwire

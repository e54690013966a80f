// Package service is aggd's gRPC edge: tenancy, decoding (with package
// codec) and validation of batches into window types, acks and status
// codes. Handlers start no goroutine.
package service

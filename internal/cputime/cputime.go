// Package cputime reads the CPU time the process has used, so that
// benchmarks can report CPU per item beside wall-clock time: on a busy
// machine the wall clock measures the other processes too.
package cputime

import (
	"syscall"
	"time"
)

// Process returns the user and system CPU time of the whole process so
// far, every thread included (garbage collection, gRPC's goroutines).
func Process() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

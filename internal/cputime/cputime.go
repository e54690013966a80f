// Package cputime reads the CPU time the process has used, so that
// benchmarks can report CPU per item beside wall-clock time: on a busy
// machine the wall clock measures the other processes too.
package cputime

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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

// userHZ is the unit of the CPU times in /proc/PID/stat: Linux reports
// them in clock ticks of 1/100 s (USER_HZ) whatever the kernel's own
// tick rate.
const userHZ = 100

// Of returns the user and system CPU time process pid has used so far,
// every thread included, from /proc/PID/stat (Linux only), to a tick of
// 10 ms: over a run of seconds it measures another process on this
// machine, such as the server a load generator drives.
func Of(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStat(b)
}

// parseStat reads utime and stime, the 14th and 15th fields, from a
// /proc/PID/stat line. The command name, the 2nd, is in parentheses and
// may hold spaces and parentheses itself: the fields are counted from the
// last ')'.
func parseStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("cputime: /proc stat line without a command name")
	}
	f := strings.Fields(string(b[i+1:])) // from the 3rd field, state
	if len(f) < 13 {
		return 0, fmt.Errorf("cputime: /proc stat line has %d fields after the command name, want at least 13", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cputime: /proc stat CPU time %q: %w", s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

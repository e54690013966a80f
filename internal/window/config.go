package window

import (
	"errors"
	"fmt"
	"time"
)

// Config sets the time rules and bounds of aggregation state.
type Config struct {
	// Interval is the width of the buckets of samples without a timestamp,
	// and the flush period.
	Interval time.Duration
	// Rollup is the width of the buckets of timestamped samples. It is a
	// multiple of Interval; zero means Interval.
	Rollup time.Duration
	// Grace is how long after its end a bucket stays open.
	Grace time.Duration
	// MaxLateness bounds how old a timestamped sample may be.
	MaxLateness time.Duration
	// MaxFuture bounds how far ahead a timestamped sample may be.
	MaxFuture time.Duration
	// ContextTTL is how long an idle context is kept. It must outlast every
	// bucket a sample can open, so it is at least MaxFuture + Rollup + Grace
	// + Interval.
	ContextTTL time.Duration
	// MaxSetSize bounds the distinct members of one SET context in one
	// bucket; new members past it are rejected (set_limit).
	MaxSetSize int
	// LateWindow is how long after its due tick a flushed bucket that held
	// timestamped samples is kept, so that late samples correct it exactly;
	// later samples for it are refused (too_old). At most MaxLateness;
	// zero keeps none.
	LateWindow time.Duration
	// CounterExpiry is how long after its last sample a COUNT context is
	// flushed with 0 every interval it has no sample, as the Datadog
	// Agent does for DogStatsD counters (dogstatsd_expiry_seconds); zero
	// turns it off.
	CounterExpiry time.Duration
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Interval:      10 * time.Second,
		Grace:         2 * time.Second,
		MaxLateness:   time.Hour,
		MaxFuture:     10 * time.Minute,
		ContextTTL:    15 * time.Minute,
		MaxSetSize:    100_000,
		LateWindow:    2 * time.Minute,
		CounterExpiry: 300 * time.Second,
	}
}

// Validate reports the first setting that is out of range.
func (c Config) Validate() error {
	switch {
	case c.Interval < time.Second:
		return errors.New("window: interval must be at least 1s")
	case c.Interval%time.Second != 0:
		return errors.New("window: interval must be a whole number of seconds")
	case c.Rollup != 0 && (c.Rollup < c.Interval || c.Rollup%c.Interval != 0):
		return fmt.Errorf("window: rollup %v must be a multiple of interval %v", c.Rollup, c.Interval)
	case c.Grace < 0:
		return errors.New("window: grace must not be negative")
	case c.MaxLateness < 0 || c.MaxFuture < 0:
		return errors.New("window: max lateness and max future must not be negative")
	case c.ContextTTL < c.minTTL():
		return fmt.Errorf("window: context ttl %v must be at least max_future + rollup + grace + interval = %v", c.ContextTTL, c.minTTL())
	case c.MaxSetSize < 1:
		return errors.New("window: max set size must be positive")
	case c.LateWindow < 0 || c.LateWindow > c.MaxLateness:
		return fmt.Errorf("window: late window %v must be between 0 and max lateness %v", c.LateWindow, c.MaxLateness)
	case c.CounterExpiry < 0:
		return errors.New("window: counter expiry must not be negative")
	}
	return nil
}

func (c Config) rollup() time.Duration {
	if c.Rollup == 0 {
		return c.Interval
	}
	return c.Rollup
}

func (c Config) minTTL() time.Duration {
	return c.MaxFuture + c.rollup() + c.Grace + c.Interval
}

// Package upstreamtest provides fakes for testing code that uses package
// upstream.
package upstreamtest

import (
	"sync"
	"time"
)

// Metrics records pipeline metrics in memory. It implements
// upstream.PipelineMetrics and is safe for concurrent use.
type Metrics struct {
	mu     sync.Mutex
	sent   int
	points int
	failed map[string]int
	lost   map[string]int
}

// Sent implements upstream.PipelineMetrics.
func (m *Metrics) Sent(_ string, points int, _ time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent++
	m.points += points
}

// Failed implements upstream.PipelineMetrics.
func (m *Metrics) Failed(_, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failed == nil {
		m.failed = map[string]int{}
	}
	m.failed[reason]++
}

// Lost implements upstream.PipelineMetrics.
func (m *Metrics) Lost(_, reason string, points int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lost == nil {
		m.lost = map[string]int{}
	}
	m.lost[reason] += points
}

// Queue implements upstream.PipelineMetrics.
func (m *Metrics) Queue(string, int, int) {}

// Started implements upstream.PipelineMetrics.
func (m *Metrics) Started(string, int, int64) {}

// Snapshot returns payloads sent, points sent, failures and lost points by
// reason.
func (m *Metrics) Snapshot() (sent, points int, failed, lost map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	failed, lost = map[string]int{}, map[string]int{}
	for k, v := range m.failed {
		failed[k] = v
	}
	for k, v := range m.lost {
		lost[k] = v
	}
	return m.sent, m.points, failed, lost
}

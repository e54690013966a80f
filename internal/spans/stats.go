package spans

import (
	"github.com/aggd/aggd/internal/window"
)

// Stats appends the RED samples of spans to a batch. Its memory is reused
// from batch to batch; it is not safe for concurrent use.
type Stats struct {
	arena []byte
	tags  []string
}

// Reset forgets the previous batch's strings.
func (st *Stats) Reset() {
	st.arena = st.arena[:0]
	clear(st.tags)
	st.tags = st.tags[:0]
}

func (st *Stats) str(parts ...string) string {
	start := len(st.arena)
	for _, p := range parts {
		st.arena = append(st.arena, p...)
	}
	return unsafeString(st.arena[start:len(st.arena):len(st.arena)])
}

// Add appends s's samples to b, each timestamped with the span's end and
// prepared for ingestion, and returns how many it appended. The tag strings
// stay valid until Reset.
func (st *Stats) Add(b *window.Batch, s *Span) int {
	base := [6]string{
		st.str("service:", s.Service), st.str("operation:", s.Name), st.str("resource:", s.Resource),
		kindTags[min(int(s.Kind), len(kindTags)-1)], statusTags[b2i(s.Error)],
	}
	n := 5
	if s.HTTPStatus != 0 {
		base[5] = statusTag(s.HTTPStatus)
		n = 6
	}
	end := s.End()
	add := func(name string, typ window.MetricType, v float64) {
		start := len(st.tags)
		st.tags = append(st.tags, base[:n]...)
		b.Samples = append(b.Samples, window.Sample{
			Name: name, Type: typ, Value: v, SampleRate: 1, Timestamp: end,
			Tags: st.tags[start:len(st.tags):len(st.tags)],
		})
		b.Results = append(b.Results, window.Accepted)
	}
	secs := float64(s.Duration) / 1e9
	count := 0
	add(MetricHits, window.TypeCount, 1)
	add(MetricDurationSum, window.TypeCount, secs)
	add(MetricDuration, window.TypeDistribution, secs)
	count += 3
	if s.Error {
		add(MetricErrors, window.TypeCount, 1)
		count++
	}
	if s.TopLevel() {
		add(MetricTopLevelHits, window.TypeCount, 1)
		count++
	}
	return count
}

var kindTags = func() []string {
	t := make([]string, len(kindNames))
	for i, n := range kindNames {
		t[i] = "span.kind:" + n
	}
	return t
}()

var statusTags = [2]string{"status:ok", "status:error"}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

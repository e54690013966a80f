package upstream

import (
	"context"
	"io"
	"math"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/aggd/aggd/internal/window"
)

// JSONLinesConfig configures JSONLines.
type JSONLinesConfig struct {
	Histogram HistogramConfig
	// SketchPercentiles are written with each distribution's summary.
	SketchPercentiles []float64
}

// JSONLines writes every aggregate, event and service check as one JSON
// object per line. It is safe for concurrent use; each Export writes whole
// lines.
//
// Metric lines: {"kind":"metric","tenant","name","type","ts","interval",
// "host","tags","value"} with type gauge, count or rate and "late":true on
// late partials. Histograms and timings become one metric line per
// configured aggregate. Distributions are {"kind":"sketch",…,"count","sum",
// "min","max","avg","p50",…}. Events are {"kind":"event",…} and service
// checks {"kind":"service_check",…}. Timestamps are Unix seconds.
type JSONLines struct {
	name   string
	cfg    JSONLinesConfig
	series []histogramSeries
	pnames []string

	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewJSONLines returns an upstream named name writing to w.
func NewJSONLines(name string, w io.Writer, cfg JSONLinesConfig) *JSONLines {
	j := &JSONLines{name: name, cfg: cfg, series: cfg.Histogram.series(), w: w}
	for _, p := range cfg.SketchPercentiles {
		j.pnames = append(j.pnames, "p"+strconv.FormatFloat(p*100, 'f', -1, 64))
	}
	return j
}

const jsonFlushAt = 64 << 10

// Name returns the upstream's name.
func (j *JSONLines) Name() string { return j.name }

// Start does nothing: JSONLines writes synchronously.
func (j *JSONLines) Start(context.Context) error { return nil }

// Shutdown does nothing: every Export has written its lines.
func (j *JSONLines) Shutdown(context.Context) error { return nil }

// Export writes the part of f routed here.
func (j *JSONLines) Export(_ context.Context, f *window.Flush, routes Routes) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.buf = j.buf[:0]
	routed := map[*window.Tenant]bool{}
	here := func(t *window.Tenant) bool {
		ok, seen := routed[t]
		if !seen {
			_, ok = routes(t)
			routed[t] = ok
		}
		return ok
	}
	for m := range f.Metrics() {
		if !here(m.Tenant) {
			continue
		}
		switch m.Type {
		case window.TypeHistogram, window.TypeTiming:
			for _, s := range j.series {
				v, isCount := s.value(m)
				typ := "gauge"
				if isCount {
					typ = "count"
				}
				j.metric(m, s.suffix, typ, v)
			}
		case window.TypeDistribution:
			j.sketch(m)
		case window.TypeCount, window.TypeMonotonicCount:
			j.metric(m, "", "count", m.Value)
		case window.TypeRate:
			j.metric(m, "", "rate", m.Value)
		default: // gauge, set
			j.metric(m, "", "gauge", m.Value)
		}
		if len(j.buf) >= jsonFlushAt {
			if err := j.write(); err != nil {
				return err
			}
		}
	}
	for i := range f.Events {
		if here(f.Events[i].Tenant) {
			j.event(&f.Events[i])
		}
	}
	for i := range f.Checks {
		if here(f.Checks[i].Tenant) {
			j.check(&f.Checks[i])
		}
	}
	return j.write()
}

func (j *JSONLines) write() error {
	if len(j.buf) == 0 {
		return nil
	}
	_, err := j.w.Write(j.buf)
	j.buf = j.buf[:0]
	return err
}

func (j *JSONLines) head(kind string, m *window.Metric, suffix, typ string) {
	b := append(j.buf, `{"kind":"`...)
	b = append(b, kind...)
	b = append(b, `","tenant":`...)
	b = appendString(b, m.Tenant.ID)
	b = append(b, `,"name":`...)
	b = appendString(b, m.Name)
	if suffix != "" { // suffixes are plain ASCII: splice before the quote
		b = append(b[:len(b)-1], suffix...)
		b = append(b, '"')
	}
	b = append(b, `,"type":"`...)
	b = append(b, typ...)
	b = append(b, `","ts":`...)
	b = strconv.AppendInt(b, m.Timestamp/1e9, 10)
	b = append(b, `,"interval":`...)
	b = strconv.AppendInt(b, m.Interval/1e9, 10)
	b = append(b, `,"host":`...)
	b = appendString(b, m.Host)
	b = append(b, `,"tags":`...)
	b = appendStrings(b, m.Tags)
	if m.Late {
		b = append(b, `,"late":true`...)
	}
	j.buf = b
}

func (j *JSONLines) metric(m *window.Metric, suffix, typ string, v float64) {
	j.head("metric", m, suffix, typ)
	b := append(j.buf, `,"value":`...)
	b = appendFloat(b, v)
	j.buf = append(b, "}\n"...)
}

func (j *JSONLines) sketch(m *window.Metric) {
	j.head("sketch", m, "", "distribution")
	b := j.buf
	for _, kv := range [...]struct {
		k string
		v float64
	}{{"count", m.Count}, {"sum", m.Sum}, {"min", m.Min}, {"max", m.Max}, {"avg", m.Sum / m.Count}} {
		b = append(b, `,"`...)
		b = append(b, kv.k...)
		b = append(b, `":`...)
		b = appendFloat(b, kv.v)
	}
	for i, p := range j.cfg.SketchPercentiles {
		b = append(b, `,"`...)
		b = append(b, j.pnames[i]...)
		b = append(b, `":`...)
		b = appendFloat(b, m.Quantile(p))
	}
	j.buf = append(b, "}\n"...)
}

func (j *JSONLines) event(e *window.Event) {
	b := append(j.buf, `{"kind":"event","tenant":`...)
	b = appendString(b, e.Tenant.ID)
	b = append(b, `,"title":`...)
	b = appendString(b, e.Title)
	b = append(b, `,"text":`...)
	b = appendString(b, e.Text)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, e.Timestamp/1e9, 10)
	b = append(b, `,"priority":"`...)
	b = append(b, e.Priority.String()...)
	b = append(b, `","alert_type":"`...)
	b = append(b, e.AlertType.String()...)
	b = append(b, `","aggregation_key":`...)
	b = appendString(b, e.AggregationKey)
	b = append(b, `,"source_type":`...)
	b = appendString(b, e.SourceType)
	b = append(b, `,"host":`...)
	b = appendString(b, e.Host)
	b = append(b, `,"tags":`...)
	b = appendStrings(b, e.Tags)
	j.buf = append(b, "}\n"...)
}

func (j *JSONLines) check(c *window.ServiceCheck) {
	b := append(j.buf, `{"kind":"service_check","tenant":`...)
	b = appendString(b, c.Tenant.ID)
	b = append(b, `,"name":`...)
	b = appendString(b, c.Name)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(c.Status), 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, c.Timestamp/1e9, 10)
	b = append(b, `,"host":`...)
	b = appendString(b, c.Host)
	b = append(b, `,"tags":`...)
	b = appendStrings(b, c.Tags)
	b = append(b, `,"message":`...)
	b = appendString(b, c.Message)
	j.buf = append(b, "}\n"...)
}

// appendFloat appends v as a JSON number; non-finite values, which only an
// empty aggregate can produce, become null.
func appendFloat(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Input is valid UTF-8 (validated
// at ingest); invalid bytes would become U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

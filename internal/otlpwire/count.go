package otlpwire

import "google.golang.org/protobuf/encoding/protowire"

// CountPoints counts the data points of an ExportMetricsServiceRequest
// without decoding them: a walk over its framing that allocates nothing.
// Framing it cannot follow ends the count there; decoding reports it.
func CountPoints(buf []byte) int {
	n := 0
	eachBytes(buf, 1, func(rm []byte) error { // ResourceMetrics
		return eachBytes(rm, 2, func(sm []byte) error { // ScopeMetrics
			return eachBytes(sm, 2, func(m []byte) error { // Metric
				var f field
				for len(m) > 0 {
					if next(&m, &f) != nil {
						return nil
					}
					if f.typ != protowire.BytesType {
						continue
					}
					switch f.num {
					case 5, 7, 9, 10, 11: // gauge, sum, histogram, exponential histogram, summary
						eachBytes(f.b, 1, func([]byte) error { n++; return nil })
					}
				}
				return nil
			})
		})
	})
	return n
}

// CountSpans counts the spans of an ExportTraceServiceRequest as
// CountPoints counts points.
func CountSpans(buf []byte) int {
	n := 0
	eachBytes(buf, 1, func(rs []byte) error { // ResourceSpans
		return eachBytes(rs, 2, func(ss []byte) error { // ScopeSpans
			return eachBytes(ss, 2, func([]byte) error { n++; return nil })
		})
	})
	return n
}

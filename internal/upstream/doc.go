// Package upstream encodes flushed aggregates for intakes and sends them.
//
// JSONLines, the embedded default, writes one JSON object per line to any
// io.Writer (stdout or a file). Every upstream implements flush.Exporter.
package upstream

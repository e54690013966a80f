package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/aggd/aggd/internal/window"
)

func all(*window.Tenant) (Credentials, bool) { return Credentials{}, true }

// TestPercentileName checks names against the Agent's parsePercentiles
// (int(p·100 + 0.5)) and Histogram.flush (".%dpercentile").
func TestPercentileName(t *testing.T) {
	for p, want := range map[float64]string{0.95: "95percentile", 0.99: "99percentile", 0.999: "100percentile", 0.5: "50percentile", 0.125: "13percentile", 0.29: "29percentile"} {
		if got := PercentileName(p); got != want {
			t.Errorf("%v: got %q, want %q", p, got, want)
		}
	}
}

// checkAppendString checks that appendString writes a JSON string that
// decodes as encoding/json's encoding of s does: invalid bytes each become
// U+FFFD.
func checkAppendString(t *testing.T, s string) {
	var got, want string
	if err := json.Unmarshal(appendString(nil, s), &got); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	ref, _ := json.Marshal(s)
	json.Unmarshal(ref, &want)
	if got != want {
		t.Fatalf("%q: got %q, want %q", s, got, want)
	}
}

func TestAppendStringIsJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\`, "ctl\x00\x01\x1f\n\t\r", "ünï©ødé ✓", "bad\xffutf8", "\xed\xa0\x80"} {
		checkAppendString(t, s)
	}
}

func FuzzAppendString(f *testing.F) {
	f.Add("a\"b\\c\x00é")
	f.Fuzz(checkAppendString)
}

// flushOf aggregates samples of one tenant into a Flush.
func flushOf(t testing.TB, n int, samples ...window.Sample) *window.Flush {
	sh := window.NewShard(window.DefaultConfig())
	tn := window.NewTenant("acme")
	now := int64(1_700_000_000) * 1e9
	for i := range samples {
		s := samples[i]
		s.SampleRate = 1
		s.Prepare(tn, nil)
		if r := sh.Add(tn, &s, now); r != window.Accepted {
			t.Fatalf("add: %v", r)
		}
	}
	return &window.Flush{Time: now, Buckets: sh.Drain(now, true, nil),
		Events: []window.Event{{Tenant: tn, Title: "t\"1", Timestamp: now, AlertType: window.AlertError, Tags: []string{"a"}}},
		Checks: []window.ServiceCheck{{Tenant: tn, Name: "up", Status: window.StatusWarning, Timestamp: now}},
	}
}

func TestJSONLinesLines(t *testing.T) {
	var buf bytes.Buffer
	j := NewJSONLines("json", &buf, JSONLinesConfig{Histogram: HistogramConfig{Aggregates: []string{"max", "count"}, Percentiles: []float64{0.99}}, SketchPercentiles: []float64{0.5}})
	f := flushOf(t, 0,
		window.Sample{Name: "h", Type: window.TypeHistogram, Values: []float64{1, 2, 3}, Tags: []string{"k:v"}, Host: "web\n1"},
		window.Sample{Name: "d", Type: window.TypeDistribution, Values: []float64{4, 8}},
		window.Sample{Name: "r", Type: window.TypeMonotonicCount, Values: []float64{1, 5}},
	)
	if err := j.Export(context.Background(), f, all); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`{"kind":"metric","tenant":"acme","name":"h.max","type":"gauge","ts":1700000000,"interval":10,"host":"web\n1","tags":["k:v"],"value":3}`,
		`{"kind":"metric","tenant":"acme","name":"h.count","type":"count","ts":1700000000,"interval":10,"host":"web\n1","tags":["k:v"],"value":3}`,
		`{"kind":"metric","tenant":"acme","name":"h.99percentile","type":"gauge","ts":1700000000,"interval":10,"host":"web\n1","tags":["k:v"],"value":3}`,
		`{"kind":"sketch","tenant":"acme","name":"d","type":"distribution","ts":1700000000,"interval":10,"host":"","tags":[],"count":2,"sum":12,"min":4,"max":8,"avg":6,"p50":4}`,
		`{"kind":"metric","tenant":"acme","name":"r","type":"count","ts":1700000000,"interval":10,"host":"","tags":[],"value":4}`,
		`{"kind":"event","tenant":"acme","title":"t\"1","text":"","ts":1700000000,"priority":"normal","alert_type":"error","aggregation_key":"","source_type":"","host":"","tags":["a"]}`,
		`{"kind":"service_check","tenant":"acme","name":"up","status":1,"ts":1700000000,"host":"","tags":[],"message":""}`,
	}
	got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("got %d lines:\n%s", len(got), buf.String())
	}
	for i := range want {
		w := strings.ReplaceAll(want[i], "\n", `\n`)
		if got[i] != w {
			t.Errorf("line %d:\n got %s\nwant %s", i, got[i], w)
		}
		if !json.Valid([]byte(got[i])) {
			t.Errorf("line %d is not JSON", i)
		}
	}
}

// BenchmarkJSONLines1M encodes one flush of 1M counter contexts.
func BenchmarkJSONLines1M(b *testing.B) {
	const n = 1_000_000
	samples := make([]window.Sample, n)
	for i := range samples {
		samples[i] = window.Sample{Name: "svc.requests", Type: window.TypeCount, Value: 1, Tags: []string{fmt.Sprintf("id:%d", i), "env:prod"}}
	}
	j := NewJSONLines("json", io.Discard, JSONLinesConfig{Histogram: DefaultHistogramConfig()})
	f := flushOf(b, 0, samples...)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := j.Export(context.Background(), f, all); err != nil {
			b.Fatal(err)
		}
	}
}

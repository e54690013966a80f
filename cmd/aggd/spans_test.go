package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// samplingFile holds traces far longer than the test sends: every trace is
// judged at the stop's final flush with all its spans, however slowly a busy
// machine sends the three rounds.
const samplingFile = `
version = 2

[trace]
data_ttl = "10m"
group_key = "trace_id"

[[trace.sampling_pipeline]]
name = "keep-error-trace"
type = "condition"
condition = '{ status = "error" }'
action = "keep"

[[trace.sampling_pipeline]]
name = "keep-slow-trace"
type = "condition"
condition = '{ duration > 1000000 }'
action = "keep"

[[trace.sampling_pipeline]]
name = "drop-health-check"
type = "condition"
condition = '{ resource IN ["/health", "/ready"] }'
action = "drop"

[[trace.sampling_pipeline]]
name = "sample-rest"
type = "probabilistic"
condition = '{ 1 = 1 }'
rate = 0.25
`

type traceKind int

const (
	kindError traceKind = iota
	kindSlow
	kindHealth
	kindRest
)

// workload builds n traces of 3 spans each: every 10th has an error deep in
// it, every 10th+1 is slow, every 10th+2 is a health check, the rest plain.
func workload(n int) (map[string]traceKind, [][]*aggdv1.Span) {
	kinds := map[string]traceKind{}
	var traces [][]*aggdv1.Span
	base := time.Now().Add(-3 * time.Second).UnixNano()
	for i := range n {
		var tid [16]byte
		binary.BigEndian.PutUint64(tid[:8], uint64(i)*0x9e3779b97f4a7c15+7)
		binary.BigEndian.PutUint64(tid[8:], uint64(i))
		kind := kindRest
		switch i % 10 {
		case 0:
			kind = kindError
		case 1:
			kind = kindSlow
		case 2:
			kind = kindHealth
		}
		kinds[hex.EncodeToString(tid[:])] = kind
		var ts []*aggdv1.Span
		for j := range 3 {
			s := &aggdv1.Span{TraceId: tid[:], SpanId: []byte{byte(i >> 8), byte(i), 0, 0, 0, 0, 0, byte(j + 1)}, Service: "api",
				Name: "http.request", Resource: "/items", Kind: aggdv1.SpanKind_SPAN_KIND_SERVER,
				StartUnixNano: base + int64(j), DurationNano: 10_000_000, HttpStatusCode: 200}
			if j > 0 {
				s.ParentSpanId = []byte{byte(i >> 8), byte(i), 0, 0, 0, 0, 0, 1}
				s.Kind, s.Service = aggdv1.SpanKind_SPAN_KIND_CLIENT, "db"
			}
			switch {
			case kind == kindError && j == 2:
				s.Error, s.HttpStatusCode = true, 500
			case kind == kindSlow && j == 0:
				s.DurationNano = 2_000_000_000
			case kind == kindHealth:
				s.Resource = "/health"
			}
			ts = append(ts, s)
		}
		traces = append(traces, ts)
	}
	return kinds, traces
}

// sendInterleaved streams the spans of all traces over two streams, span j
// of every trace in its own batches, so that no batch holds a whole trace.
func sendInterleaved(t *testing.T, client aggdv1.AggregatorServiceClient, traces [][]*aggdv1.Span) {
	t.Helper()
	var streams []aggdv1.AggregatorService_StreamClient
	for range 2 {
		st, err := client.Stream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	seq := uint64(0)
	for j := range 3 {
		for from := 0; from < len(traces); from += 50 {
			b := &aggdv1.Batch{}
			for _, tr := range traces[from:min(from+50, len(traces))] {
				b.Spans = append(b.Spans, tr[j])
			}
			st := streams[int(seq)%2]
			if err := st.Send(&aggdv1.StreamRequest{Sequence: seq, Batch: b}); err != nil {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			if err != nil || resp.Ack.Rejected != 0 {
				t.Fatalf("ack %v %v", resp, err)
			}
			seq++
		}
	}
	for _, st := range streams {
		st.CloseSend()
	}
}

// keptTraces runs aggd with the sampling file and an OTLP upstream, sends
// the workload and returns the spans the receiver got, by trace id, and
// aggd's JSON lines of span stats.
func keptTraces(t *testing.T, n int) (map[string][]string, map[string]traceKind, []map[string]any) {
	otel := upstreamtest.NewOTLPReceiver(t)
	dir := t.TempDir()
	sampling, cfgFile, local := filepath.Join(dir, "tail-sampling.toml"), filepath.Join(dir, "aggd.toml"), filepath.Join(dir, "out.jsonl")
	os.WriteFile(sampling, []byte(samplingFile), 0o600)
	os.WriteFile(cfgFile, []byte(fmt.Sprintf("[[upstream]]\nname = \"otel\"\ntype = \"otlp\"\nendpoint = %q\ninsecure = true\n\n[[upstream]]\nname = \"local\"\ntype = \"jsonlines\"\npath = %q\n", otel.Addr, local)), 0o600)
	in := startAggd(t, "--config", cfgFile, "--sampling-file", sampling, "--interval", "1h", "--context-ttl", "3h")
	kinds, traces := workload(n)
	sendInterleaved(t, aggdv1.NewAggregatorServiceClient(in.conn), traces)
	in.stop(t)
	got := map[string][]string{}
	for _, r := range otel.TraceRequests() {
		for _, rs := range r.Req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					id := hex.EncodeToString(s.TraceId)
					got[id] = append(got[id], hex.EncodeToString(s.SpanId))
				}
			}
		}
	}
	return got, kinds, readLines(t, local)
}

func TestTailSamplingEndToEnd(t *testing.T) {
	const n = 2000
	got, kinds, lines := keptTraces(t, n)
	counts := map[traceKind]int{}
	for id, spanIDs := range got {
		counts[kinds[id]]++
		if len(spanIDs) != 3 {
			t.Errorf("trace %s arrived with %d of 3 spans", id, len(spanIDs))
		}
	}
	if counts[kindError] != n/10 || counts[kindSlow] != n/10 || counts[kindHealth] != 0 {
		t.Errorf("kept %d error, %d slow, %d health traces; want %d, %d, 0", counts[kindError], counts[kindSlow], counts[kindHealth], n/10, n/10)
	}
	rest := 7 * n / 10
	if sd := math.Sqrt(float64(rest) * 0.25 * 0.75); math.Abs(float64(counts[kindRest])-float64(rest)*0.25) > 4*sd {
		t.Errorf("kept %d of %d plain traces at rate 0.25", counts[kindRest], rest)
	}
	// Every plain trace's fate is the fixed hash of its id.
	for id, k := range kinds {
		if k != kindRest {
			continue
		}
		b, _ := hex.DecodeString(id)
		var tid [16]byte
		copy(tid[:], b)
		if _, kept := got[id]; kept != spans.KeepByRate(tid, 0.25) {
			t.Fatalf("trace %s: kept %v, hash says %v", id, kept, !kept)
		}
	}

	// Span stats are exact: every span counted, whatever the sampling.
	stats := map[string]float64{}
	for _, l := range lines {
		if l["kind"] != "metric" {
			continue
		}
		var tags []string
		for _, x := range l["tags"].([]any) {
			tags = append(tags, x.(string))
		}
		sort.Strings(tags)
		stats[fmt.Sprintf("%s %v", l["name"], tags)] += l["value"].(float64)
	}
	want := map[string]float64{
		"aggd.span.hits [http.status_code:200 operation:http.request resource:/items service:api span.kind:server status:ok]":           float64(n - n/10),
		"aggd.span.hits [http.status_code:200 operation:http.request resource:/health service:api span.kind:server status:ok]":          float64(n / 10),
		"aggd.span.hits [http.status_code:500 operation:http.request resource:/items service:db span.kind:client status:error]":         float64(n / 10),
		"aggd.span.errors [http.status_code:500 operation:http.request resource:/items service:db span.kind:client status:error]":       float64(n / 10),
		"aggd.span.top_level_hits [http.status_code:200 operation:http.request resource:/items service:api span.kind:server status:ok]": float64(n - n/10),
	}
	for k, w := range want {
		if stats[k] != w {
			t.Errorf("%s = %v, want %v", k, stats[k], w)
		}
	}
	wantSecs := float64(n)*3*0.01 + float64(n/10)*(2-0.01)
	var secs float64
	for k, v := range stats {
		if len(k) > len("aggd.span.duration.sum") && k[:len("aggd.span.duration.sum")] == "aggd.span.duration.sum" {
			secs += v
		}
	}
	if math.Abs(secs-wantSecs) > 1e-6 {
		t.Errorf("duration sum %v s, want %v", secs, wantSecs)
	}
}

func TestTailSamplingIsIdenticalAcrossInstances(t *testing.T) {
	a, _, _ := keptTraces(t, 600)
	b, _, _ := keptTraces(t, 600)
	if len(a) != len(b) {
		t.Fatalf("instance A kept %d traces, B %d", len(a), len(b))
	}
	for id := range a {
		if _, ok := b[id]; !ok {
			t.Fatalf("trace %s kept by A only", id)
		}
	}
}

func TestSamplingFileReload(t *testing.T) {
	dir := t.TempDir()
	sampling, out := filepath.Join(dir, "tail-sampling.toml"), filepath.Join(dir, "out.jsonl")
	keep := "[trace]\ndata_ttl = \"200ms\"\n[[trace.sampling_pipeline]]\nname = \"all\"\ntype = \"condition\"\naction = \"keep\"\ncondition = \"{ 1 = 1 }\"\n"
	drop := "[trace]\ndata_ttl = \"200ms\"\n[[trace.sampling_pipeline]]\nname = \"none\"\ntype = \"condition\"\naction = \"drop\"\ncondition = \"{ 1 = 1 }\"\n"
	os.WriteFile(sampling, []byte(keep), 0o600)
	in := startAggd(t, "--output", out, "--sampling-file", sampling, "--sampling-reload-interval", "20ms", "--interval", "1h", "--context-ttl", "3h")
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	_, traces := workload(40)
	send := func(i int) {
		if _, err := client.Submit(context.Background(), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Spans: traces[i]}}); err != nil {
			t.Fatal(err)
		}
	}
	reloads := func(result string) float64 {
		return metric(scrape(t, in.admin), `aggd_config_reloads_total{file="sampling",result="`+result+`"}`)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second) // only a hang reaches it
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	replace := func(text string) { // as a ConfigMap update does
		os.WriteFile(sampling+".new", []byte(text), 0o600)
		os.Rename(sampling+".new", sampling)
	}
	send(3) // held under "keep all" when the file breaks
	replace("[trace\nbroken")
	waitFor("a failed reload", func() bool { return reloads("failure") >= 1 })
	send(4) // judged by the last good rules: kept
	id := func(i int) string { return hex.EncodeToString(traces[i][0].TraceId) }
	waitFor("trace 4 to be decided and written", func() bool {
		data, _ := os.ReadFile(out)
		return strings.Contains(string(data), id(4))
	})
	replace(drop)
	waitFor("a successful reload", func() bool { return reloads("success") >= 1 })
	send(5) // dropped
	in.stop(t)
	lines := readLines(t, out)
	kept := map[string]int{}
	for _, l := range lines {
		if l["kind"] == "span" {
			kept[l["trace_id"].(string)]++
		}
	}
	// Trace 3 was held across both reloads and judged by the rules in force
	// when it was decided; trace 4 came under the kept-good rules.
	if kept[id(4)] != 3 || kept[id(5)] != 0 {
		t.Fatalf("kept spans by trace: %v (4: %s, 5: %s)", kept, id(4), id(5))
	}
	if n := kept[id(3)]; n != 0 && n != 3 {
		t.Fatalf("trace 3 partly kept: %d spans", n)
	}
}

func TestEventGroupSamplingEndToEnd(t *testing.T) {
	dir := t.TempDir()
	sampling, out := filepath.Join(dir, "tail-sampling.toml"), filepath.Join(dir, "out.jsonl")
	os.WriteFile(sampling, []byte(`
[logging]
data_ttl = "1m"

[[logging.group_dimensions]]
group_key = "fields.user_id"

[[logging.group_dimensions.pipelines]]
name = "keep_error_logs"
type = "condition"
condition = "{ status = 'error' }"
action = "keep"

[[logging.group_dimensions.pipelines]]
name = "drop_the_rest"
type = "condition"
action = "drop"
`), 0o600)
	in := startAggd(t, "--output", out, "--sampling-file", sampling, "--interval", "1h", "--context-ttl", "3h")
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	ev := func(title, user string, alert aggdv1.EventAlertType) *aggdv1.Event {
		e := &aggdv1.Event{Title: title, AlertType: alert}
		if user != "" {
			e.Tags = []string{"user_id:" + user}
		}
		return e
	}
	_, err := client.Submit(context.Background(), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Events: []*aggdv1.Event{
		ev("a1", "alice", aggdv1.EventAlertType_EVENT_ALERT_TYPE_INFO),
		ev("b1", "bob", aggdv1.EventAlertType_EVENT_ALERT_TYPE_INFO),
		ev("a2", "alice", aggdv1.EventAlertType_EVENT_ALERT_TYPE_ERROR),
		ev("n1", "", aggdv1.EventAlertType_EVENT_ALERT_TYPE_INFO),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	in.stop(t)
	var titles []string
	for _, l := range readLines(t, out) {
		if l["kind"] == "event" {
			titles = append(titles, l["title"].(string))
		}
	}
	sort.Strings(titles)
	// alice's group holds an error: kept whole; bob's dropped; n1 carries
	// no user_id and passes through.
	if fmt.Sprint(titles) != "[a1 a2 n1]" {
		t.Fatalf("events flushed: %v", titles)
	}
}

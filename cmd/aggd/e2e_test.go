package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

const (
	acmeToken = "acme-0123456789abcdef"
	blueToken = "blue-0123456789abcdef"
)

// instance is an aggd started in-process by run, on loopback.
type instance struct {
	addr, admin string
	out         string
	conn        *grpc.ClientConn
	cancel      context.CancelFunc
	done        chan error
}

func startAggd(t *testing.T, extra ...string) *instance {
	t.Helper()
	return startAggdEnv(t, func(string) string { return "" }, extra...)
}

// startAggdEnv starts aggd with getenv as its environment.
func startAggdEnv(t *testing.T, getenv func(string) string, extra ...string) *instance {
	t.Helper()
	return startAggdLog(t, getenv, io.Discard, extra...)
}

// startAggdLog starts aggd with getenv as its environment, logging to
// stderr.
func startAggdLog(t *testing.T, getenv func(string) string, stderr io.Writer, extra ...string) *instance {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "out.jsonl")
	args := append([]string{"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--pprof-listen", "127.0.0.1:0", "--output", out, "--hostname", "aggd-test"}, extra...)
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{out: out, cancel: cancel, done: make(chan error, 1)}
	ready := make(chan struct{})
	go func() {
		in.done <- run(ctx, args, getenv, io.Discard, stderr, func(g, a string) {
			in.addr, in.admin = g, a
			close(ready)
		})
	}()
	select {
	case <-ready:
	case err := <-in.done:
		t.Fatalf("aggd exited: %v", err)
	}
	conn, err := grpc.NewClient(in.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	in.conn = conn
	t.Cleanup(func() { in.stop(t) })
	return in
}

// stop shuts aggd down (final flush) and returns its output lines.
func (in *instance) stop(t *testing.T) []map[string]any {
	t.Helper()
	if in.cancel != nil {
		in.cancel()
		in.conn.Close()
		if err := <-in.done; err != nil {
			t.Fatalf("aggd: %v", err)
		}
		in.cancel = nil
	}
	if _, err := os.Stat(in.out); errors.Is(err, os.ErrNotExist) {
		return nil // the upstreams are elsewhere (--config)
	}
	return readLines(t, in.out)
}

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("bad JSON line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	return lines
}

func withToken(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

func smp(name string, typ aggdv1.MetricType, v float64, tags ...string) *aggdv1.Sample {
	return &aggdv1.Sample{Name: name, Type: typ, Value: v, Tags: tags}
}

func seq(from, to int, scale float64) []float64 {
	var out []float64
	for i := from; i <= to; i++ {
		out = append(out, float64(i)*scale)
	}
	return out
}

// waitOffBoundary keeps the workload inside one bucket of width iv.
func waitOffBoundary(iv time.Duration, margin time.Duration) {
	now := time.Now()
	if left := now.Truncate(iv).Add(iv).Sub(now); left < margin {
		time.Sleep(left + 100*time.Millisecond)
	}
}

// key names an output line for the assertions: tenant/name{tags}.
func key(l map[string]any) string {
	var tags []string
	for _, t := range l["tags"].([]any) {
		tags = append(tags, t.(string))
	}
	return fmt.Sprintf("%s/%s{%s}", l["tenant"], l["name"], strings.Join(tags, ","))
}

func TestEndToEndEveryTypeTwoTenants(t *testing.T) {
	tenants := filepath.Join(t.TempDir(), "tenants.toml")
	os.WriteFile(tenants, []byte(fmt.Sprintf(`
[[tenant]]
id = "acme"
tokens = [%q]

[[tenant]]
id = "blue"
tokens = [%q]
`, acmeToken, blueToken)), 0o600)
	const iv = time.Hour // one bucket for the whole test
	waitOffBoundary(iv, 30*time.Second)
	in := startAggd(t, "--tenants-file", tenants, "--interval", iv.String(), "--context-ttl", "3h")
	client := aggdv1.NewAggregatorServiceClient(in.conn)

	bucket := time.Now().Truncate(iv)
	ts := func(d time.Duration) int64 { return bucket.Add(d).UnixNano() }
	const (
		G = aggdv1.MetricType_METRIC_TYPE_GAUGE
		C = aggdv1.MetricType_METRIC_TYPE_COUNT
		R = aggdv1.MetricType_METRIC_TYPE_RATE
		M = aggdv1.MetricType_METRIC_TYPE_MONOTONIC_COUNT
		H = aggdv1.MetricType_METRIC_TYPE_HISTOGRAM
		D = aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION
		S = aggdv1.MetricType_METRIC_TYPE_SET
		T = aggdv1.MetricType_METRIC_TYPE_TIMING
	)
	counted := smp("c", C, 2, "b:2", "a:1")
	counted.SampleRate = 0.5
	timing := &aggdv1.Sample{Name: "t", Type: T, Values: []float64{10, 20}, SampleRate: 0.5}
	batches := []*aggdv1.Batch{
		{Samples: []*aggdv1.Sample{
			smp("g", G, 1), smp("g", G, 5), smp("g", G, 3),
			counted, smp("c", C, 1, "a:1", "b:2", "a:1"),
			{Name: "r", Type: R, Value: 10, TimestampUnixNano: ts(time.Second)},
			smp("m", M, 100), smp("m", M, 110),
		}},
		{Samples: []*aggdv1.Sample{
			{Name: "r", Type: R, Value: 30, TimestampUnixNano: ts(5 * time.Second)},
			smp("m", M, 105), smp("m", M, 112),
			{Name: "h", Type: H, Values: seq(1, 100, 1)},
			timing,
			{Name: "d", Type: D, Values: seq(1, 1000, 0.5)},
			{Name: "s", Type: S, SetMember: "a"}, {Name: "s", Type: S, SetMember: "b"},
			{Name: "s", Type: S, SetMember: "a"}, {Name: "s", Type: S, SetMember: "c"},
		}},
		{ // Every bad item is refused by itself.
			Samples: []*aggdv1.Sample{
				smp("bad", G, math.NaN()),
				smp("", G, 1),
				smp("g", C, 1), // g is a gauge in this bucket
				{Name: "old", Type: C, Value: 1, TimestampUnixNano: time.Now().Add(-2 * time.Hour).UnixNano()},
				{Name: "new", Type: C, Value: 1, TimestampUnixNano: time.Now().Add(time.Hour).UnixNano()},
				{Name: "x", Type: 42},
				smp("x", C, 1, strings.Repeat("t", 201)),
				{Name: "x", Type: C, SampleRate: 2},
				{Name: "s", Type: S},
				smp("c", C, 0, "a:1", "b:2"), // valid: adds zero
			},
			Events:        []*aggdv1.Event{{Title: "deploy", Text: "v2", Tags: []string{"env:prod"}, AlertType: aggdv1.EventAlertType_EVENT_ALERT_TYPE_SUCCESS}},
			ServiceChecks: []*aggdv1.ServiceCheck{{Name: "db.can_connect", Status: aggdv1.ServiceCheckStatus_SERVICE_CHECK_STATUS_CRITICAL, Message: "timeout"}},
		},
	}
	st, err := client.Stream(withToken(acmeToken))
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range batches {
		if err := st.Send(&aggdv1.StreamRequest{Sequence: uint64(100 + i), Batch: b}); err != nil {
			t.Fatal(err)
		}
	}
	wantRejects := []string{"invalid_value", "invalid_name", "type_conflict", "too_old", "too_new", "invalid_type", "tag_too_long", "invalid_sample_rate", "invalid_value"}
	for i := range batches {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		a := resp.GetAck()
		if a.Sequence != uint64(100+i) {
			t.Fatalf("ack %d has sequence %d", i, a.Sequence)
		}
		if i < 2 && a.Rejected != 0 {
			t.Fatalf("batch %d: unexpected rejections %v", i, a.Rejections)
		}
		if i == 2 {
			var got []string
			for j, r := range a.Rejections {
				if r.Index != uint32(j) || r.Kind != aggdv1.ItemKind_ITEM_KIND_SAMPLE {
					t.Errorf("rejection %d: %v", j, r)
				}
				got = append(got, r.Reason)
			}
			if strings.Join(got, " ") != strings.Join(wantRejects, " ") || a.Accepted != 3 {
				t.Fatalf("batch 2: accepted %d, reasons %v; want 3, %v", a.Accepted, got, wantRejects)
			}
		}
	}
	st.CloseSend()

	// Tenant blue over Submit, with a context that equals one of acme's.
	resp, err := client.Submit(withToken(blueToken), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
		smp("c", C, 7, "a:1", "b:2"), smp("g", G, 9),
	}}})
	if err != nil || resp.Ack.Accepted != 2 {
		t.Fatalf("Submit: %v %v", resp, err)
	}
	if _, err := client.Submit(context.Background(), &aggdv1.SubmitRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: got %v, want Unauthenticated", err)
	}

	lines := in.stop(t)
	got := map[string]map[string]any{}
	var checks, events []map[string]any
	for _, l := range lines {
		switch l["kind"] {
		case "service_check":
			checks = append(checks, l)
			continue
		case "event":
			events = append(events, l)
			continue
		}
		k := key(l)
		if _, dup := got[k]; dup {
			t.Errorf("%s flushed twice", k)
		}
		got[k] = l
		if int64(l["ts"].(float64)) != bucket.Unix() || l["late"] != nil {
			t.Errorf("%s: ts %v late %v, want bucket %d", k, l["ts"], l["late"], bucket.Unix())
		}
	}
	exact := map[string]float64{
		"acme/g{}": 3, "acme/c{a:1,b:2}": 5, "acme/r{}": 5, "acme/m{}": 17, "acme/s{}": 3,
		// The Agent's default histogram series, percentiles exact.
		"acme/h.max{}": 100, "acme/h.avg{}": 50.5, "acme/h.count{}": 100, "acme/h.median{}": 50, "acme/h.95percentile{}": 95,
		"acme/t.max{}": 20, "acme/t.avg{}": 15, "acme/t.count{}": 4, "acme/t.median{}": 10, "acme/t.95percentile{}": 20,
		"blue/c{a:1,b:2}": 7, "blue/g{}": 9,
	}
	approx := map[string]float64{}
	types := map[string]string{"acme/c{a:1,b:2}": "count", "acme/r{}": "rate", "acme/m{}": "count", "acme/g{}": "gauge", "acme/h.count{}": "count", "acme/h.max{}": "gauge"}
	for k, want := range exact {
		l, ok := got[k]
		if !ok {
			t.Errorf("%s missing", k)
			continue
		}
		if v := l["value"].(float64); v != want {
			t.Errorf("%s = %v, want %v", k, v, want)
		}
		if typ, ok := types[k]; ok && l["type"] != typ {
			t.Errorf("%s type %v, want %v", k, l["type"], typ)
		}
	}
	for k, want := range approx {
		if v, _ := got[k]["value"].(float64); math.Abs(v-want) > 0.01*want {
			t.Errorf("%s = %v, want %v ±1%%", k, v, want)
		}
	}
	d := got["acme/d{}"]
	if d == nil || d["kind"] != "sketch" || d["count"] != 1000.0 || d["sum"] != 250250.0 || d["min"] != 0.5 || d["max"] != 500.0 {
		t.Fatalf("distribution: %v", d)
	}
	for p, want := range map[string]float64{"p50": 250, "p95": 475, "p99": 495} {
		if v := d[p].(float64); math.Abs(v-want) > 0.01*want {
			t.Errorf("distribution %s = %v, want %v ±1%%", p, v, want)
		}
	}
	if n := len(got); n != len(exact)+len(approx)+1 {
		var keys []string
		for k := range got {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Errorf("flushed %d series, want %d: %v", n, len(exact)+len(approx)+1, keys)
	}
	if len(events) != 1 || events[0]["tenant"] != "acme" || events[0]["title"] != "deploy" || events[0]["alert_type"] != "success" {
		t.Errorf("events: %v", events)
	}
	up := map[string]bool{}
	for _, c := range checks {
		if c["name"] == "aggd.up" {
			up[c["tenant"].(string)] = c["host"] == "aggd-test"
		} else if c["name"] != "db.can_connect" || c["tenant"] != "acme" || c["status"] != 2.0 || c["message"] != "timeout" {
			t.Errorf("check: %v", c)
		}
	}
	if !up["acme"] || !up["blue"] {
		t.Errorf("aggd.up per tenant: %v", up)
	}
}

func TestEndToEndLateSampleCorrectsItsBucket(t *testing.T) {
	in := startAggd(t, "--interval", "1s", "--grace", "0s")
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	old := time.Now().Add(-30 * time.Second).Truncate(time.Second)
	submit := func(v float64) {
		_, err := client.Submit(context.Background(), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{
			{Name: "late.c", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: v, TimestampUnixNano: old.UnixNano()},
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	submit(1)
	// Wait for a tick to flush the bucket, then add to it again.
	deadline := time.Now().Add(30 * time.Second) // only a hang reaches it
	for len(readLines(t, in.out)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no flush within 30s at a 1s interval")
		}
		time.Sleep(50 * time.Millisecond)
	}
	submit(2)
	// The late sample's line carries the bucket's corrected total and
	// replaces the first: a reader keeps the last line per series and ts.
	var first, last float64
	var lines, corrections int
	for _, l := range in.stop(t) {
		if l["name"] != "late.c" {
			continue
		}
		if int64(l["ts"].(float64)) != old.Unix() {
			if l["value"] != 0.0 {
				t.Errorf("line with ts %v value %v, want %d or a zero-filled interval", l["ts"], l["value"], old.Unix())
			}
			continue
		}
		// The first line is marked late too when a tick ran between
		// aggd's start and the first submit (its bucket was then already
		// due): only the lines after it are counted as corrections.
		if lines++; lines == 1 {
			first = l["value"].(float64)
		} else if l["late"] == true {
			corrections++
		}
		last = l["value"].(float64)
	}
	if lines != 2 || corrections != 1 || first != 1 || last != 3 {
		t.Fatalf("%d lines (%d corrections), first %v, last %v; want 2 lines, 1 correction, first 1, last 3", lines, corrections, first, last)
	}
}

func TestHealthAndReflection(t *testing.T) {
	in := startAggd(t)
	resp, err := healthpb.NewHealthClient(in.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "aggd.v1.AggregatorService"})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", resp, err)
	}
}

func TestConfigFromFlagsAndEnvironment(t *testing.T) {
	env := map[string]string{"AGGD_INTERVAL": "20s", "AGGD_MAX_TAGS": "7", "AGGD_HISTOGRAM_PERCENTILES": "0.5,0.99"}
	c, err := parseConfig([]string{"--max-tags", "9"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Window.Interval != 20*time.Second || c.Limits.MaxTags != 9 || fmt.Sprint(c.Histogram.Percentiles) != "[0.5 0.99]" {
		t.Fatalf("got interval %v, max tags %d, percentiles %v", c.Window.Interval, c.Limits.MaxTags, c.Histogram.Percentiles)
	}
	for _, bad := range [][]string{{"--interval", "1500ms"}, {"--histogram-aggregates", "p42"}, {"--log-level", "loud"}, {"--rollup", "15s"}, {"stray"}} {
		if _, err := parseConfig(bad, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
	if _, err := parseConfig(nil, func(k string) string { return map[string]string{"AGGD_GRACE": "soon"}[k] }, io.Discard); err == nil || !strings.Contains(err.Error(), "AGGD_GRACE") {
		t.Errorf("bad environment value: %v", err)
	}
}

func TestREADMEListsEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	fs := flagNames(t)
	for _, name := range fs {
		row := fmt.Sprintf("| `--%s` | `%s` |", name, envName(name))
		if !strings.Contains(string(readme), row) {
			t.Errorf("README config table lacks %s", row)
		}
	}
}

func flagNames(t *testing.T) []string {
	t.Helper()
	fs := flag.NewFlagSet("aggd", flag.ContinueOnError)
	var c config
	defineFlags(fs, &c)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	if len(names) < 20 {
		t.Fatalf("only %d flags", len(names))
	}
	return names
}

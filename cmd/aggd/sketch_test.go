package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/upstream/upstreamtest"
)

// TestDatadogSketchesAreTheAgents sends distributions to a running aggd
// over gRPC and checks that the Datadog intake receives, bin by bin, the
// sketch the Agent's pkg/quantile builds from the same samples in the same
// order (the vectors of internal/upstream/testdata): past the exact bound,
// through the 4096-bin collapse, and with sample rates whose counts pass
// 65535 a key.
func TestDatadogSketchesAreTheAgents(t *testing.T) {
	cases, err := upstreamtest.AgentSketchCases("../../internal/upstream/testdata/agent_sketches.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	dd := upstreamtest.NewDatadogIntake(t)
	cfgFile := filepath.Join(t.TempDir(), "aggd.toml")
	os.WriteFile(cfgFile, []byte(fmt.Sprintf("[[upstream]]\nname = \"dd\"\ntype = \"datadog\"\nurl = %q\napi_key = \"k\"\n", dd.URL)), 0o600)
	in := startAggd(t, "--config", cfgFile, "--interval", "1h", "--context-ttl", "3h")
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	want := map[string]upstreamtest.AgentSketchCase{}
	for i, c := range cases {
		if c.Late != nil {
			continue // late corrections: TestAgentGoldenSketches
		}
		name := fmt.Sprintf("agent.sketch.%d", i)
		want[name] = c
		// Runs of one sample rate go as one sample with its values.
		var batch []*aggdv1.Sample
		for _, s := range c.OnTime {
			if n := len(batch); n > 0 && batch[n-1].SampleRate == s.Rate && len(batch[n-1].Values) < 10_000 {
				batch[n-1].Values = append(batch[n-1].Values, s.Value)
				continue
			}
			batch = append(batch, &aggdv1.Sample{Name: name, Type: aggdv1.MetricType_METRIC_TYPE_DISTRIBUTION, SampleRate: s.Rate, Values: []float64{s.Value}})
		}
		for len(batch) > 0 {
			n := min(len(batch), 100)
			resp, err := client.Submit(context.Background(), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: batch[:n]}})
			if err != nil || resp.Ack.Rejected != 0 {
				t.Fatalf("%s: submit: %v %v", c.Name, resp, err)
			}
			batch = batch[n:]
		}
	}
	in.stop(t) // the final flush
	if err := dd.Err(); err != nil {
		t.Fatal(err)
	}
	got := dd.Sketches()
	if len(got) != len(want) {
		t.Fatalf("intake holds %d sketches, want %d", len(got), len(want))
	}
	for _, sk := range got {
		c, ok := want[sk.Metric]
		if !ok {
			t.Errorf("unexpected sketch %q", sk.Metric)
			continue
		}
		for _, d := range c.Diff(sk) {
			t.Errorf("%s: %s (%s)", c.Name, d, c.Agent)
		}
	}
}

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

func TestPerTenantLimits(t *testing.T) {
	tenants := filepath.Join(t.TempDir(), "tenants.toml")
	os.WriteFile(tenants, []byte(fmt.Sprintf(`
[[tenant]]
id = "acme"
tokens = [%q]
max_contexts = 3
samples_per_second = 20
events_per_window = 2
max_tags = 2
max_name_length = 10
max_tag_length = 8

[[tenant]]
id = "blue"
tokens = [%q]
`, acmeToken, blueToken)), 0o600)
	in := startAggd(t, "--tenants-file", tenants, "--interval", "1h", "--context-ttl", "3h")
	client := aggdv1.NewAggregatorServiceClient(in.conn)
	C := aggdv1.MetricType_METRIC_TYPE_COUNT
	var samples []*aggdv1.Sample
	for i := range 5 { // 5 contexts: 3 fit, 2 fold into aggd.overflow.count
		samples = append(samples, smp(fmt.Sprintf("c%d", i), C, 1))
	}
	samples = append(samples,
		smp("toolongname", C, 1),      // max_name_length 10
		smp("t", C, 1, "a", "b", "c"), // max_tags 2
		smp("t", C, 1, "abcdefghi"),   // max_tag_length 8
	)
	for range 20 { // the 20 samples/s budget: 5 above fit with 15 of these
		samples = append(samples, smp("c0", C, 1))
	}
	ev := func(n int) []*aggdv1.Event {
		var out []*aggdv1.Event
		for i := range n {
			out = append(out, &aggdv1.Event{Title: fmt.Sprint("e", i)})
		}
		return out
	}
	resp, err := client.Submit(withToken(acmeToken), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: samples, Events: ev(3)}})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, r := range resp.Ack.Rejections {
		reasons[r.Reason+"/"+strings.SplitN(r.Detail, " ", 2)[0]]++
		if r.Kind == aggdv1.ItemKind_ITEM_KIND_EVENT && r.Index != 2 {
			t.Errorf("event rejection at index %d, want 2", r.Index)
		}
	}
	want := map[string]int{"invalid_name/name": 1, "too_many_tags/3": 1, "tag_too_long/tag": 1, "tenant_limit/the": 5 + 1}
	if fmt.Sprint(reasons) != fmt.Sprint(want) {
		t.Fatalf("rejections %v, want %v", reasons, want)
	}
	// Tenant blue has no limits and is not slowed by acme's.
	resp, err = client.Submit(withToken(blueToken), &aggdv1.SubmitRequest{Batch: &aggdv1.Batch{Samples: samples, Events: ev(3)}})
	if err != nil || resp.Ack.Rejected != 0 {
		t.Fatalf("blue: %v %v", resp, err)
	}
	overflowed := metric(scrape(t, in.admin), `aggd_items_overflowed_total{tenant="acme"}`)
	got := map[string]float64{}
	for _, l := range in.stop(t) {
		if l["tenant"] == "acme" && l["kind"] == "metric" {
			got[l["name"].(string)] += l["value"].(float64)
		}
	}
	// Of c0..c4 the first three created (in shard order) have their own
	// series; the samples of the other two fold into the overflow series.
	// In all: 5 samples and the 15 repeats of c0 the rate allowed.
	own, total := 0, 0.0
	for name, v := range got {
		total += v
		if name != "aggd.overflow.count" {
			own++
		}
	}
	if own != 3 || total != 20 || got["aggd.overflow.count"] != overflowed || overflowed < 2 {
		t.Fatalf("acme flushed %v, %v overflowed", got, overflowed)
	}
}

package main

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/client"
)

// TestStreamsRebalanceAcrossReplicas runs two aggd replicas with a short
// stream age behind a round-robin client, as behind an L4 load balancer,
// and sends through the Go client for longer than that age: streams move
// between replicas, nothing is lost, and the merged totals equal what was
// sent (duplicates only where an ack was lost).
func TestStreamsRebalanceAcrossReplicas(t *testing.T) {
	a := startAggd(t, "--max-stream-age", "200ms", "--max-connection-age", "1s", "--max-connection-age-grace", "1s", "--interval", "1h", "--context-ttl", "3h")
	b := startAggd(t, "--max-stream-age", "200ms", "--max-connection-age", "1s", "--max-connection-age-grace", "1s", "--interval", "1h", "--context-ttl", "3h")
	r := manual.NewBuilderWithScheme("replicas")
	r.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: a.addr}, {Addr: b.addr}}})
	conn, err := grpc.NewClient("replicas:///aggd", grpc.WithResolvers(r), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin":{}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := client.New(conn, client.Options{BatchSize: 50, FlushInterval: 20 * time.Millisecond})
	ctx := context.Background()
	sent := 0.0
	// Send for longer than several stream ages, and on until the client has
	// moved streams three times: a slow machine moves them later, not
	// fewer times. Only a hang reaches the hard bound.
	least, bound := time.Now().Add(1500*time.Millisecond), time.Now().Add(60*time.Second)
	for i := 0; time.Now().Before(least) || c.Resumes.Load() < 3; i++ {
		if time.Now().After(bound) {
			t.Fatalf("the client moved streams %d times in 60s, want 3", c.Resumes.Load())
		}
		if err := c.Add(ctx, &aggdv1.Sample{Name: "lb.count", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1}); err != nil {
			t.Fatal(err)
		}
		sent++
		if i%50 == 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	totals := map[string]float64{}
	for name, in := range map[string]*instance{"a": a, "b": b} {
		for _, l := range in.stop(t) {
			if l["name"] == "lb.count" {
				totals[name] += l["value"].(float64)
			}
		}
	}
	if c.Resumes.Load() < 3 || totals["a"] == 0 || totals["b"] == 0 {
		t.Fatalf("resumes %d, totals %v: streams did not move between replicas", c.Resumes.Load(), totals)
	}
	if got := totals["a"] + totals["b"]; got < sent {
		t.Fatalf("replicas flushed %v of %v samples", got, sent)
	}
	t.Logf("sent %v samples over %d streams; replica a %v, b %v (a surplus is batches resent after a lost ack)", sent, c.Resumes.Load()+1, totals["a"], totals["b"])
}

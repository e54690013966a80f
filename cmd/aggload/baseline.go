package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"

	"google.golang.org/grpc"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

// baseline is the naive server every ingest figure is measured against: the
// generated service with grpc-go's standard proto codec, decoding each
// request into the generated types and acking every item, aggregating
// nothing. It serves on 127.0.0.1 only.
type baseline struct {
	aggdv1.UnimplementedAggregatorServiceServer
}

// Stream acks every request with all its items accepted.
func (baseline) Stream(st grpc.BidiStreamingServer[aggdv1.StreamRequest, aggdv1.StreamResponse]) error {
	for {
		req, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := st.Send(&aggdv1.StreamResponse{Ack: ackAll(req.GetSequence(), req.GetBatch())}); err != nil {
			return err
		}
	}
}

// Submit acks the batch with all its items accepted.
func (baseline) Submit(_ context.Context, req *aggdv1.SubmitRequest) (*aggdv1.SubmitResponse, error) {
	return &aggdv1.SubmitResponse{Ack: ackAll(0, req.GetBatch())}, nil
}

func ackAll(seq uint64, b *aggdv1.Batch) *aggdv1.Ack {
	n := len(b.GetSamples()) + len(b.GetEvents()) + len(b.GetServiceChecks()) + len(b.GetSpans())
	return &aggdv1.Ack{Sequence: seq, Accepted: uint32(n)}
}

// startBaseline serves the baseline on addr (a loopback host:port; port 0
// picks a free one) and returns its address and the function that stops
// it.
func startBaseline(addr string) (_ string, stop func(), err error) {
	if host, _, err := net.SplitHostPort(addr); err != nil || !net.ParseIP(host).IsLoopback() {
		return "", nil, fmt.Errorf("the baseline serves on a loopback address, not %q", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	g := grpc.NewServer()
	aggdv1.RegisterAggregatorServiceServer(g, baseline{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(ln)
	}()
	return ln.Addr().String(), func() { g.Stop(); <-done }, nil
}

// pairRun is one round of interleaved runs: aggd's, then the baseline's.
type pairRun struct{ aggd, base *result }

// runPairs runs o against aggd and against a baseline, alternating,
// pairs times, so that both see the same machine load; it prints each pair
// and the ratios of acked samples per second. The baseline is the one at
// o.baselineAddr (aggload -serve-baseline in a process of its own, as aggd
// is), or else one served by this process.
func runPairs(ctx context.Context, o options, pairs int, w io.Writer) ([]pairRun, error) {
	baseAddr, baselinePID := o.baselineAddr, o.baselinePID
	if baseAddr == "" {
		baselinePID = 0 // the baseline shares this process with the generator
		addr, stop, err := startBaseline("127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer stop()
		baseAddr = addr
	}
	var runs []pairRun
	var ratios []float64
	for i := range pairs {
		var p pairRun
		for _, target := range [...]struct {
			addr string
			pid  int
			res  **result
		}{{o.addr, o.pid, &p.aggd}, {baseAddr, baselinePID, &p.base}} {
			ob := o
			ob.addr, ob.serverPID = target.addr, target.pid
			r, err := run(ctx, ob)
			if err != nil {
				return runs, fmt.Errorf("pair %d, %s: %w", i+1, target.addr, err)
			}
			*target.res = r
		}
		runs = append(runs, p)
		a, b := p.aggd.ackedPerSecond(), p.base.ackedPerSecond()
		ratio := a / max(b, 1)
		ratios = append(ratios, ratio)
		fmt.Fprintf(w, "pair %d: aggd %.0f, baseline %.0f acked/s, ratio %.2f; ack p99 aggd %v, baseline %v; aggload CPU per item %.0f ns, %.0f ns",
			i+1, a, b, ratio, p.aggd.quantile(0.99), p.base.quantile(0.99), p.aggd.cpuPerItem(), p.base.cpuPerItem())
		if o.pid > 0 && baselinePID > 0 {
			fmt.Fprintf(w, "; server CPU per item aggd %.0f ns, baseline %.0f ns", p.aggd.serverCPUPerItem(), p.base.serverCPUPerItem())
		}
		fmt.Fprintln(w)
	}
	slices.Sort(ratios)
	fmt.Fprintf(w, "ratio aggd/baseline over %d interleaved pairs: min %.2f median %.2f max %.2f\n",
		len(ratios), ratios[0], ratios[len(ratios)/2], ratios[len(ratios)-1])
	return runs, nil
}

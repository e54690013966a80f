package upstreamtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
)

// AgentSample is one distribution sample of an AgentSketchCase.
type AgentSample struct{ Value, Rate float64 }

// AgentSketchCase is a distribution's input, in arrival order, and the
// sketch the Datadog Agent's pkg/quantile (default config: eps 1/128, min
// 1e-9, at most 4096 bins of at most 65535) builds from it, recorded by
// running that package's own code on the same input. Agent names the
// functions. Late, when set, arrives after the bucket of OnTime was
// flushed: the Agent's sketches of the two, merged, are the expected
// correction.
type AgentSketchCase struct {
	Name, Agent   string
	OnTime, Late  []AgentSample
	Cnt           int64
	Sum, Min, Max float64
	K             []int32
	N             []uint32
}

// AgentSketchCases returns the cases recorded in the JSON-lines file at
// path (internal/upstream/testdata/agent_sketches.jsonl), with their
// inputs.
func AgentSketchCases(path string) ([]AgentSketchCase, error) {
	inputs := map[string][2][]AgentSample{
		"linear 1.5·i, i = 1…1500": {linearSamples(1500, 1.5), nil},
		"decades 0…149999":         {DecadeSamples(0, 150_000), nil},
		"weighted":                 {weightedSamples(), nil},
		"heavy":                    {heavySamples(), nil},
		"rates 1, 0.5, 0.1, 0.01":  {rateSamples(), nil},
		"merge decades 0…59999 with 60000…109999":     {DecadeSamples(0, 60_000), DecadeSamples(60_000, 50_000)},
		"merge decades 0…59999 with 200000…200699":    {DecadeSamples(0, 60_000), DecadeSamples(200_000, 700)},
		"merge linear 1.5·i, i = 1…800 with 801…1600": {linearSamples(800, 1.5), linearSamples(1600, 1.5)[800:]},
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []AgentSketchCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var c AgentSketchCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return nil, err
		}
		in, ok := inputs[c.Name]
		if !ok {
			return nil, fmt.Errorf("no input for case %q", c.Name)
		}
		c.OnTime, c.Late = in[0], in[1]
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) != len(inputs) {
		return nil, fmt.Errorf("%d cases for %d inputs", len(out), len(inputs))
	}
	return out, nil
}

// Diff returns how got differs from the case's sketch: count, sum, min,
// max, and keys and counts bin by bin (repeated keys and the order of
// their bins included); nil when it does not.
func (c AgentSketchCase) Diff(got DDSketch) []string {
	var d []string
	if got.Cnt != c.Cnt || got.Sum != c.Sum || got.Min != c.Min || got.Max != c.Max {
		d = append(d, fmt.Sprintf("cnt %d sum %v min %v max %v, want %d %v %v %v", got.Cnt, got.Sum, got.Min, got.Max, c.Cnt, c.Sum, c.Min, c.Max))
	}
	if len(got.K) != len(c.K) || len(got.N) != len(c.N) {
		return append(d, fmt.Sprintf("%d keys and %d counts, want %d bins", len(got.K), len(got.N), len(c.K)))
	}
	differ := 0
	for i := range c.K {
		if got.K[i] != c.K[i] || got.N[i] != c.N[i] {
			if differ < 5 {
				d = append(d, fmt.Sprintf("bin %d: %d:%d, want %d:%d", i, got.K[i], got.N[i], c.K[i], c.N[i]))
			}
			differ++
		}
	}
	if differ > 0 {
		d = append(d, fmt.Sprintf("%d of %d bins differ", differ, len(c.K)))
	}
	return d
}

func linearSamples(n int, step float64) []AgentSample {
	out := make([]AgentSample, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, AgentSample{float64(i) * step, 1})
	}
	return out
}

// DecadeSamples returns values i = from … from+n−1 spread over 60 decades
// (1e-15 to 1e45) in a scrambled order, every 7th from the 4th negative:
// ±10^(−15 + 60·frac(i·φ)), at rate 1.
func DecadeSamples(from, n int) []AgentSample {
	const phi = 0.6180339887498949
	out := make([]AgentSample, 0, n)
	for i := from; i < from+n; i++ {
		v := math.Pow(10, -15+60*math.Mod(float64(i)*phi, 1))
		if i%7 == 3 {
			v = -v
		}
		out = append(out, AgentSample{v, 1})
	}
	return out
}

// weightedSamples returns 1 … 600 at rate 1 and, after every 15th, one of
// 100 … 106 in turn at rate 2⁻¹⁴ (a count of 16384, so that a key's count
// passes 65535 and takes several bins).
func weightedSamples() []AgentSample {
	var out []AgentSample
	for i := 1; i <= 600; i++ {
		out = append(out, AgentSample{float64(i), 1})
		if i%15 == 0 {
			out = append(out, AgentSample{float64(100 + (i/15)%7), 1.0 / 16384})
		}
	}
	return out
}

// heavySamples returns 1.02^i, i = 0 … 2999, at rate 2⁻¹⁷ (a count of
// 131072: three bins each), with a value i at rate 1 after every 10th: far
// more bins than the limit, so the lowest collapse with full overflow bins.
func heavySamples() []AgentSample {
	var out []AgentSample
	for i := range 3000 {
		out = append(out, AgentSample{math.Pow(1.02, float64(i)), 1.0 / 131072})
		if i%10 == 0 {
			out = append(out, AgentSample{float64(i), 1})
		}
	}
	return out
}

// rateSamples returns 0.37·i, i = 1 … 2000, at sample rates 1, 0.5, 0.1
// and 0.01 in turn: rates whose inverse is whole, which the Agent and aggd
// count alike.
func rateSamples() []AgentSample {
	rates := []float64{1, 0.5, 0.1, 0.01}
	out := make([]AgentSample, 0, 2000)
	for i := 1; i <= 2000; i++ {
		out = append(out, AgentSample{float64(i) * 0.37, rates[i%4]})
	}
	return out
}

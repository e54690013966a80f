package window

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"testing"

	"github.com/aggd/aggd/internal/cputime"
)

func benchSamples(n int, typ MetricType) []Sample {
	ss := make([]Sample, n)
	for i := range ss {
		ss[i] = Sample{
			Name: fmt.Sprintf("svc.request.metric%d", i%100), Type: typ, Value: float64(i%97) + 0.5,
			Host: "host-1", Tags: []string{"service:api", fmt.Sprintf("endpoint:/v%d", i/100), "env:prod"},
			SampleRate: 1, SetMember: fmt.Sprintf("m%d", i%5),
		}
	}
	return ss
}

// BenchmarkAdd measures one sample of each type into an existing context of
// an open bucket: the steady state of the hot path after decoding.
func BenchmarkAdd(b *testing.B) {
	for typ := TypeGauge; typ < numTypes; typ++ {
		b.Run(typ.String(), func(b *testing.B) {
			const n = 10_000
			sh := NewShard(DefaultConfig())
			tn := NewTenant("t")
			ss := benchSamples(n, typ)
			var arena []byte
			for i := range ss {
				arena = ss[i].Prepare(tn, arena)
				sh.Add(tn, &ss[i], t0)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cputime.Process()
			for i := 0; i < b.N; i++ {
				s := &ss[i%n]
				if r := sh.Add(tn, s, t0+int64(i%1000)); r != Accepted {
					b.Fatal(r)
				}
			}
			// The busy machine's other processes stretch the wall clock,
			// not the CPU time.
			b.ReportMetric(float64(cputime.Process()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

// BenchmarkAddPastExactBound measures one distribution sample into a
// context whose bucket holds more than MaxExactSamples samples, over 60
// decades: the insertion into the Agent sketch at its 4096-bin limit.
func BenchmarkAddPastExactBound(b *testing.B) {
	const n = 7 // contexts; prime to distinct, so each gets every value
	sh := NewShard(DefaultConfig())
	tn := NewTenant("t")
	ss := benchSamples(n, TypeDistribution)
	var arena []byte
	for i := range ss {
		arena = ss[i].Prepare(tn, arena)
	}
	const distinct = 8192
	vals := make([]float64, distinct)
	for i := range vals {
		vals[i] = math.Pow(10, -15+60*math.Mod(float64(i)*0.6180339887498949, 1))
	}
	for i := range 2 * n * distinct {
		s := &ss[i%n]
		s.Value = vals[i%distinct]
		sh.Add(tn, s, t0)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cputime.Process()
	for i := 0; i < b.N; i++ {
		s := &ss[i%n]
		s.Value = vals[i%distinct]
		if r := sh.Add(tn, s, t0+int64(i%1000)); r != Accepted {
			b.Fatal(r)
		}
	}
	b.ReportMetric(float64(cputime.Process()-cpu)/float64(b.N), "cpu-ns/op")
}

// BenchmarkPrepare measures tag canonicalisation, key building and hashing.
func BenchmarkPrepare(b *testing.B) {
	tn := NewTenant("t")
	ss := benchSamples(1000, TypeCount)
	arena := make([]byte, 0, 1<<20)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%1000 == 0 {
			arena = arena[:0]
		}
		arena = ss[i%1000].Prepare(tn, arena)
	}
}

// BenchmarkDrain1M measures draining one bucket of 1M counter contexts and
// iterating every aggregate, the flusher's work before encoding.
func BenchmarkDrain1M(b *testing.B) {
	const n = 1_000_000
	tn := NewTenant("t")
	ss := benchSamples(n, TypeCount)
	arena := make([]byte, 0, 100*n)
	for i := range ss {
		arena = ss[i].Prepare(tn, arena)
	}
	sh := NewShard(DefaultConfig())
	b.ReportAllocs()
	b.ResetTimer()
	var cpu int64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		now := t0 + int64(i)*10*sec
		for j := range ss {
			sh.Add(tn, &ss[j], now)
		}
		runtime.GC() // the adds' garbage is not the drain's
		b.StartTimer()
		start := cputime.Process()
		var sum float64
		for _, bk := range sh.Drain(now+20*sec, false, nil) {
			for m := range bk.Metrics() {
				sum += m.Value
			}
			bk.Release()
		}
		cpu += int64(cputime.Process() - start)
		if sum == 0 {
			b.Fatal("nothing drained")
		}
	}
	// The busy machine's other processes stretch the wall clock, not the
	// CPU time.
	b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
}

// TestMemoryPerContext reports the heap held per counter and per gauge
// context with its bucket, keys of 61 to 69 bytes; the budget is
// memPerContext bytes. It counts bytes held, so it does not depend on the
// machine's speed.
func TestMemoryPerContext(t *testing.T) {
	// Measured 148 (count) and 152 (gauge): context 40 (in chunks, no
	// allocation of its own), key 68 (its bytes and length, in the
	// shard's key arena), context index 10.5, slot 16 with 2.5 of growth,
	// slot index 5, the list of counters 4.4 or the gauges' timestamps 10.
	const memPerContext = 160
	if testing.Short() {
		t.Skip("allocates 200k contexts")
	}
	for _, typ := range []MetricType{TypeCount, TypeGauge} {
		t.Run(typ.String(), func(t *testing.T) {
			const n = 200_000
			tn := NewTenant("t")
			ss := benchSamples(n, typ)
			for i := range ss {
				ss[i].Name = fmt.Sprintf("svc.request.count.%d", i) // 200k distinct contexts
				ss[i].Prepare(tn, nil)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			sh := NewShard(DefaultConfig())
			for i := range ss {
				sh.Add(tn, &ss[i], t0)
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			per := float64(after.HeapAlloc-before.HeapAlloc) / n
			t.Logf("%.0f bytes per %s context (keys of %d to %d bytes)", per, typ, len(ss[0].Key), len(ss[n-1].Key))
			if per > memPerContext {
				t.Errorf("%.0f bytes per context, budget %d", per, memPerContext)
			}
			runtime.KeepAlive(sh)
		})
	}
}

// TestMemoryPerKeptSlot reports the heap a kept bucket holds per counter
// context after its flush, what late samples cost per context and bucket
// of max-lateness; the budget is 120 bytes.
func TestMemoryPerKeptSlot(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 200k contexts")
	}
	const n = 200_000
	tn := NewTenant("t")
	ss := benchSamples(n, TypeCount)
	for i := range ss {
		ss[i].Name = fmt.Sprintf("svc.request.count.%d", i)
		ss[i].Timestamp = t0
		ss[i].Prepare(tn, nil)
	}
	sh := NewShard(DefaultConfig())
	for i := range ss {
		sh.Add(tn, &ss[i], t0)
	}
	for _, b := range sh.Drain(t0+20*sec, false, nil) {
		b.Release()
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for k, b := range sh.kept {
		delete(sh.kept, k)
		b.release()
	}
	bucketPool = sync.Pool{New: bucketPool.New} // let the pooled bucket go
	sh.spare.Store(nil)                         // and the shard's spare
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(before.HeapAlloc-after.HeapAlloc) / n
	t.Logf("%.0f bytes per counter context in a kept bucket", per)
	if per > 120 || per < 16 {
		t.Errorf("%.0f bytes per kept slot, want 16 (the slot) to 120", per)
	}
	runtime.KeepAlive(sh)
}

// TestMemoryPerHistogramContext reports the heap a histogram context holds
// in its bucket with n samples kept exact, with the bound passed (the Agent
// sketch of 500 keys), and with values over 60 decades that fill the
// sketch's 4096 bins.
func TestMemoryPerHistogramContext(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates thousands of sketches")
	}
	tests := []struct {
		n, contexts int
		spread      bool
	}{
		{10, 2000, false}, {100, 2000, false}, {MaxExactSamples, 2000, false}, {MaxExactSamples + 1, 2000, false},
		{6000, 100, true},
	}
	for _, tt := range tests {
		n, contexts := tt.n, tt.contexts
		tn := NewTenant("t")
		ss := benchSamples(contexts, TypeHistogram)
		vals := make([]float64, n)
		for i := range vals {
			vals[i] = float64(i%500) + 0.25
			if tt.spread {
				vals[i] = math.Pow(10, -15+60*math.Mod(float64(i)*0.6180339887498949, 1))
			}
		}
		for i := range ss {
			ss[i].Name = fmt.Sprintf("svc.latency.%d", i)
			ss[i].Values = vals
			ss[i].Prepare(tn, nil)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		sh := NewShard(DefaultConfig())
		for i := range ss {
			sh.Add(tn, &ss[i], t0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		per := float64(after.HeapAlloc-before.HeapAlloc) / float64(contexts)
		t.Logf("%d samples (spread %v): %.0f bytes per histogram context", n, tt.spread, per)
		// Exact samples without a sample rate take 8 bytes each (8 KiB at
		// most, their capacity kept for reuse); the Agent sketch 4 bytes a
		// bin (4096 at most, with room to grow) and 1 KiB of buffer.
		if limit := 8.0*float64(min(n, MaxExactSamples)) + 30_000; per > limit {
			t.Errorf("%d samples: %.0f bytes per context, budget %.0f", n, per, limit)
		}
		runtime.KeepAlive(sh)
	}
}

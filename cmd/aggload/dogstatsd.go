package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// dsdTypes maps the -mix names onto DogStatsD types.
var dsdTypes = map[string]string{"gauge": "g", "count": "c", "histogram": "h", "distribution": "d", "set": "s", "timing": "ms"}

// encodeDatagrams packs lines for every context into datagrams of at most
// o.packet bytes.
func encodeDatagrams(o options) ([][]byte, []int, error) {
	var mix []string
	for _, part := range strings.Split(o.mix, ",") {
		name, w, ok := strings.Cut(strings.TrimSpace(part), ":")
		t, known := dsdTypes[name]
		n, err := strconv.Atoi(w)
		if !ok || !known || err != nil || n < 0 {
			return nil, nil, fmt.Errorf("mix entry %q is not a DogStatsD type:weight", part)
		}
		for range n {
			mix = append(mix, t)
		}
	}
	if len(mix) == 0 {
		return nil, nil, fmt.Errorf("mix has no weight")
	}
	rng := rand.New(rand.NewPCG(o.seed, 0))
	var out [][]byte
	var counts []int // lines per datagram
	var cur []byte
	lines := 0
	for c := range o.contexts {
		typ := mix[c%len(mix)]
		val := strconv.Itoa(rng.IntN(1000))
		if typ == "s" {
			val = "user-" + strconv.Itoa(rng.IntN(100))
		}
		line := fmt.Sprintf("load.metric.%d:%s|%s|#ctx:%d", c%500, val, typ, c/500)
		for t := 1; t < o.tags; t++ {
			line += fmt.Sprintf(",tag%d:value%d", t, c%(t*7+3))
		}
		if len(cur) > 0 && len(cur)+1+len(line) > o.packet {
			out, counts = append(out, cur), append(counts, lines)
			cur, lines = nil, 0
		}
		if len(cur) > 0 {
			cur = append(cur, '\n')
		}
		cur = append(cur, line...)
		lines++
	}
	if len(cur) > 0 {
		out, counts = append(out, cur), append(counts, lines)
	}
	return out, counts, nil
}

// scrapeLines reads aggd_dogstatsd_lines_total and the kernel drops from
// aggd's /metrics.
func scrapeLines(admin string) (lines, drops float64, err error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	for sc.Scan() {
		l := sc.Text()
		for name, dst := range map[string]*float64{"aggd_dogstatsd_lines_total{": &lines, "aggd_dogstatsd_kernel_drops_total{": &drops} {
			if strings.HasPrefix(l, name) {
				if i := strings.LastIndexByte(l, ' '); i > 0 {
					v, _ := strconv.ParseFloat(l[i+1:], 64)
					*dst += v
				}
			}
		}
	}
	return lines, drops, sc.Err()
}

// runDogStatsD sends datagrams over UDP from o.streams senders and reports
// the lines sent and, with -admin, the lines aggd read and the loss.
func runDogStatsD(ctx context.Context, o options, w io.Writer) error {
	dgrams, counts, err := encodeDatagrams(o)
	if err != nil {
		return err
	}
	total := 0
	for _, c := range counts {
		total += c
	}
	perDgram := float64(total) / float64(len(dgrams))
	var before float64
	if o.admin != "" {
		if before, _, err = scrapeLines(o.admin); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	var sentLines atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for s := range o.streams {
		conn, err := net.Dial("udp", o.dogstatsd)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			var interval time.Duration
			if o.rate > 0 {
				interval = time.Duration(float64(time.Second) * perDgram * float64(o.streams) / o.rate)
			}
			next := time.Now()
			for i := s; ctx.Err() == nil; i += o.streams {
				if o.batches > 0 && int64(i/o.streams) >= o.batches {
					return
				}
				if interval > 0 {
					next = next.Add(interval)
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
				}
				if _, err := conn.Write(dgrams[i%len(dgrams)]); err == nil {
					sentLines.Add(int64(counts[i%len(dgrams)]))
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	sent := float64(sentLines.Load())
	fmt.Fprintf(w, "dogstatsd: %d senders, %d contexts, %.1f lines per %d-byte datagram, mix %s, rate %s\n",
		o.streams, o.contexts, perDgram, o.packet, o.mix, rateString(o.rate))
	fmt.Fprintf(w, "sent: %.0f lines in %.2fs = %.0f lines/s\n", sent, secs, sent/secs)
	if o.admin != "" {
		time.Sleep(500 * time.Millisecond) // let aggd read what is queued
		after, drops, err := scrapeLines(o.admin)
		if err != nil {
			return err
		}
		got := after - before
		fmt.Fprintf(w, "read by aggd: %.0f lines = %.0f lines/s; loss %.3f%% (kernel drops so far: %.0f datagrams)\n",
			got, got/secs, 100*(sent-got)/sent, drops)
	}
	return nil
}

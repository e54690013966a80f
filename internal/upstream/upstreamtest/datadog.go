package upstreamtest

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/aggd/aggd/internal/window"
)

// DDPoint is one decoded series point.
type DDPoint struct {
	APIKey string
	Metric string
	Host   string
	// Resources are the series' resources other than its host, as
	// comma-joined type:name pairs in the order sent.
	Resources string
	Tags      string // comma-joined, in the order sent
	Type      int    // 1 count, 2 rate, 3 gauge
	TS        int64
	Value     float64
	Interval  int64
}

// Held returns what p stands for in the sample's own unit: a RATE point is
// a count divided by its interval, so it holds Value × Interval.
func (p DDPoint) Held() float64 {
	if p.Type == 2 {
		return p.Value * float64(p.Interval)
	}
	return p.Value
}

// DDSketch is one decoded Dogsketch.
type DDSketch struct {
	APIKey, Metric, Host, Tags string
	TS, Cnt                    int64
	Min, Max, Avg, Sum         float64
	K                          []int32
	N                          []uint32
}

// Quantile returns the nearest-rank q-quantile the intake would read from
// the sketch's bins, clamped to min and max.
func (s DDSketch) Quantile(q float64) float64 {
	rank := max(math.Ceil(q*float64(s.Cnt)), 1)
	var seen float64
	for i, n := range s.N {
		seen += float64(n)
		if seen >= rank {
			return min(max(window.AgentKeyValue(s.K[i]), s.Min), s.Max)
		}
	}
	return s.Max
}

// Answer is how the intake answers one request.
type Answer struct {
	// Status is the HTTP status; 0 means 202.
	Status int
	// RetryAfter is sent as the Retry-After header when set.
	RetryAfter string
	// Store says whether the payload is kept; by default only with a 2xx
	// status.
	Store *bool
	// Hang holds the request until the client gives up (after storing, if
	// Store says so): an answer lost on the way back.
	Hang bool
}

// DatadogIntake is a Datadog-compatible HTTP intake on loopback that decodes
// every payload. Like Datadog's, it stores one value per series and
// timestamp: a point or sketch for a (series, timestamp) it holds replaces
// the one held, it is not added to it. A series is its API key (the
// organisation), metric name, host, other resources and tag set. It is safe
// for concurrent use.
type DatadogIntake struct {
	*httptest.Server
	// Answer, if set, chooses the answer to request n (from 0) of a path.
	Answer func(path string, n int) Answer

	mu       sync.Mutex
	counts   map[string]int
	series   map[ddSeriesKey]DDPoint
	sketches map[ddSeriesKey]DDSketch
	replaced int
	checks   []map[string]any
	events   []map[string]any
	bodies   map[string][]int // compressed sizes by path
	errs     []error
}

// NewDatadogIntake starts an intake; it is closed when the test ends.
func NewDatadogIntake(tb interface{ Cleanup(func()) }) *DatadogIntake {
	d := newDatadogIntake()
	d.Server = httptest.NewServer(http.HandlerFunc(d.serve))
	tb.Cleanup(d.Close)
	return d
}

// NewDatadogIntakeTLS starts an intake serving HTTPS with a certificate of
// its own (Server.Certificate).
func NewDatadogIntakeTLS(tb interface{ Cleanup(func()) }) *DatadogIntake {
	d := newDatadogIntake()
	d.Server = httptest.NewTLSServer(http.HandlerFunc(d.serve))
	tb.Cleanup(d.Close)
	return d
}

func newDatadogIntake() *DatadogIntake {
	return &DatadogIntake{counts: map[string]int{}, bodies: map[string][]int{},
		series: map[ddSeriesKey]DDPoint{}, sketches: map[ddSeriesKey]DDSketch{}}
}

// ddSeriesKey identifies what the intake stores one value for.
type ddSeriesKey struct {
	apiKey, metric, host, resources, tags string
	ts                                    int64
}

// seriesKey returns the identity of a series point: tags are a set, so
// their order does not matter.
func seriesKey(apiKey, metric, host, resources, tags string, ts int64) ddSeriesKey {
	if strings.Contains(tags, ",") {
		t := strings.Split(tags, ",")
		slices.Sort(t)
		tags = strings.Join(slices.Compact(t), ",")
	}
	return ddSeriesKey{apiKey, metric, host, resources, tags, ts}
}

func (d *DatadogIntake) fail(err error) {
	d.mu.Lock()
	d.errs = append(d.errs, err)
	d.mu.Unlock()
}

// Err returns the decoding errors seen, joined.
func (d *DatadogIntake) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.errs) == 0 {
		return nil
	}
	return fmt.Errorf("intake: %v", d.errs)
}

func (d *DatadogIntake) serve(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	n := d.counts[r.URL.Path]
	d.counts[r.URL.Path]++
	d.mu.Unlock()
	var a Answer
	if d.Answer != nil {
		a = d.Answer(r.URL.Path, n)
	}
	status := a.Status
	if status == 0 {
		status = http.StatusAccepted
	}
	store := status >= 200 && status < 300
	if a.Store != nil {
		store = *a.Store
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	if store {
		if err := d.decode(r, body); err != nil {
			d.fail(fmt.Errorf("%s: %w", r.URL.Path, err))
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	if a.Hang {
		<-r.Context().Done()
		return
	}
	if a.RetryAfter != "" {
		w.Header().Set("Retry-After", a.RetryAfter)
	}
	w.WriteHeader(status)
}

func (d *DatadogIntake) decode(r *http.Request, body []byte) error {
	d.mu.Lock()
	d.bodies[r.URL.Path] = append(d.bodies[r.URL.Path], len(body))
	d.mu.Unlock()
	switch enc := r.Header.Get("Content-Encoding"); enc {
	case "zstd":
		dec, _ := zstd.NewReader(nil)
		defer dec.Close()
		raw, err := dec.DecodeAll(body, nil)
		if err != nil {
			return err
		}
		body = raw
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			return err
		}
		if body, err = io.ReadAll(zr); err != nil {
			return err
		}
	case "":
	default:
		return fmt.Errorf("unknown Content-Encoding %q", enc)
	}
	key := r.Header.Get("DD-API-KEY")
	if key == "" {
		return fmt.Errorf("no DD-API-KEY")
	}
	switch r.URL.Path {
	case "/api/v2/series":
		return d.decodeSeries(key, body)
	case "/api/beta/sketches":
		return d.decodeSketches(key, body)
	case "/api/v1/check_run":
		var checks []map[string]any
		if err := json.Unmarshal(body, &checks); err != nil {
			return err
		}
		for _, c := range checks {
			c["api_key"] = key
		}
		d.mu.Lock()
		d.checks = append(d.checks, checks...)
		d.mu.Unlock()
	case "/api/v1/events":
		var ev map[string]any
		if err := json.Unmarshal(body, &ev); err != nil {
			return err
		}
		ev["api_key"] = key
		d.mu.Lock()
		d.events = append(d.events, ev)
		d.mu.Unlock()
	default:
		return fmt.Errorf("unknown path")
	}
	return nil
}

// field is one protobuf field as read from the wire.
type field struct {
	num protowire.Number
	v   uint64
	b   []byte
}

// fields reads a message's fields without a schema.
func fields(b []byte) ([]field, error) {
	var out []field
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		f := field{num: num}
		switch typ {
		case protowire.VarintType:
			f.v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed64Type:
			f.v, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			f.b, n = protowire.ConsumeBytes(b)
		default:
			return nil, fmt.Errorf("field %d: unexpected wire type %d", num, typ)
		}
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		out = append(out, f)
	}
	return out, nil
}

// decodeSeries reads a MetricPayload (agent-payload): series = 1;
// MetricSeries: resources = 1 {type = 1, name = 2}, metric = 2, tags = 3,
// points = 4 {value = 1, timestamp = 2}, type = 5, interval = 8.
func (d *DatadogIntake) decodeSeries(key string, body []byte) error {
	top, err := fields(body)
	if err != nil {
		return err
	}
	var pts []DDPoint
	for _, s := range top {
		if s.num != 1 {
			return fmt.Errorf("MetricPayload field %d", s.num)
		}
		sf, err := fields(s.b)
		if err != nil {
			return err
		}
		p := DDPoint{APIKey: key}
		var tags []string
		var points [][]field
		for _, f := range sf {
			switch f.num {
			case 1:
				rf, err := fields(f.b)
				if err != nil || len(rf) != 2 || rf[0].num != 1 || rf[1].num != 2 || len(rf[0].b) == 0 {
					return fmt.Errorf("bad resource %v", rf)
				}
				switch typ := string(rf[0].b); typ {
				case "host":
					if p.Host != "" {
						return fmt.Errorf("series %s: two host resources", p.Metric)
					}
					p.Host = string(rf[1].b)
				default:
					if p.Resources != "" {
						p.Resources += ","
					}
					p.Resources += typ + ":" + string(rf[1].b)
				}
			case 2:
				p.Metric = string(f.b)
			case 3:
				tags = append(tags, string(f.b))
			case 4:
				pf, err := fields(f.b)
				if err != nil {
					return err
				}
				points = append(points, pf)
			case 5:
				p.Type = int(f.v)
			case 8:
				p.Interval = int64(f.v)
			default:
				return fmt.Errorf("MetricSeries field %d", f.num)
			}
		}
		p.Tags = strings.Join(tags, ",")
		for _, pf := range points {
			q := p
			for _, f := range pf {
				switch f.num {
				case 1:
					q.Value = math.Float64frombits(f.v)
				case 2:
					q.TS = int64(f.v)
				}
			}
			pts = append(pts, q)
		}
	}
	d.mu.Lock()
	for _, p := range pts {
		k := seriesKey(p.APIKey, p.Metric, p.Host, p.Resources, p.Tags, p.TS)
		if _, ok := d.series[k]; ok {
			d.replaced++
		}
		d.series[k] = p
	}
	d.mu.Unlock()
	return nil
}

// decodeSketches reads a SketchPayload (agent-payload): sketches = 1;
// Sketch: metric = 1, host = 2, tags = 4, dogsketches = 7; Dogsketch:
// ts = 1, cnt = 2, min = 3, max = 4, avg = 5, sum = 6, k = 7 (packed
// sint32), n = 8 (packed uint32).
func (d *DatadogIntake) decodeSketches(key string, body []byte) error {
	top, err := fields(body)
	if err != nil {
		return err
	}
	var out []DDSketch
	for _, s := range top {
		if s.num != 1 {
			continue // metadata
		}
		sf, err := fields(s.b)
		if err != nil {
			return err
		}
		base := DDSketch{APIKey: key}
		var tags []string
		var dogs [][]field
		for _, f := range sf {
			switch f.num {
			case 1:
				base.Metric = string(f.b)
			case 2:
				base.Host = string(f.b)
			case 4:
				tags = append(tags, string(f.b))
			case 7:
				df, err := fields(f.b)
				if err != nil {
					return err
				}
				dogs = append(dogs, df)
			default:
				return fmt.Errorf("field %d of a Sketch", f.num)
			}
		}
		base.Tags = strings.Join(tags, ",")
		for _, df := range dogs {
			sk := base
			for _, f := range df {
				switch f.num {
				case 1:
					sk.TS = int64(f.v)
				case 2:
					sk.Cnt = int64(f.v)
				case 3:
					sk.Min = math.Float64frombits(f.v)
				case 4:
					sk.Max = math.Float64frombits(f.v)
				case 5:
					sk.Avg = math.Float64frombits(f.v)
				case 6:
					sk.Sum = math.Float64frombits(f.v)
				case 7:
					for b := f.b; len(b) > 0; {
						v, n := protowire.ConsumeVarint(b)
						if n < 0 {
							return protowire.ParseError(n)
						}
						sk.K = append(sk.K, int32(protowire.DecodeZigZag(v)))
						b = b[n:]
					}
				case 8:
					for b := f.b; len(b) > 0; {
						v, n := protowire.ConsumeVarint(b)
						if n < 0 {
							return protowire.ParseError(n)
						}
						sk.N = append(sk.N, uint32(v))
						b = b[n:]
					}
				}
			}
			if len(sk.K) != len(sk.N) {
				return fmt.Errorf("sketch %s: %d keys, %d counts", sk.Metric, len(sk.K), len(sk.N))
			}
			out = append(out, sk)
		}
	}
	d.mu.Lock()
	for _, sk := range out {
		k := seriesKey(sk.APIKey, sk.Metric, sk.Host, "", sk.Tags, sk.TS)
		if _, ok := d.sketches[k]; ok {
			d.replaced++
		}
		d.sketches[k] = sk
	}
	d.mu.Unlock()
	return nil
}

// Series returns the points the intake holds, the last written of each
// series and timestamp, sorted by metric, host, tags and time.
func (d *DatadogIntake) Series() []DDPoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	return sortedBySeries(d.series, func(p DDPoint) seriesOrder { return seriesOrder{p.Metric, p.Host, p.Tags, p.TS} })
}

// Sketches returns the sketches the intake holds, the last written of each
// series and timestamp, sorted by metric, host, tags and time.
func (d *DatadogIntake) Sketches() []DDSketch {
	d.mu.Lock()
	defer d.mu.Unlock()
	return sortedBySeries(d.sketches, func(s DDSketch) seriesOrder { return seriesOrder{s.Metric, s.Host, s.Tags, s.TS} })
}

// seriesOrder is what Series and Sketches sort by.
type seriesOrder struct {
	metric, host, tags string
	ts                 int64
}

// sortedBySeries returns the values of m sorted by metric, host, tags and
// time.
func sortedBySeries[K comparable, T any](m map[K]T, order func(T) seriesOrder) []T {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(x, y T) int {
		a, b := order(x), order(y)
		return cmp.Or(cmp.Compare(a.metric, b.metric), cmp.Compare(a.host, b.host),
			cmp.Compare(a.tags, b.tags), cmp.Compare(a.ts, b.ts))
	})
	return out
}

// Replaced returns how many points and sketches replaced one the intake
// held for the same series and timestamp.
func (d *DatadogIntake) Replaced() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.replaced
}

// Checks returns the check runs received, each with its "api_key".
func (d *DatadogIntake) Checks() []map[string]any {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.checks)
}

// Events returns the events received, each with its "api_key".
func (d *DatadogIntake) Events() []map[string]any {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.events)
}

// Requests returns the number of requests to path.
func (d *DatadogIntake) Requests(path string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.counts[path]
}

// BodySizes returns the compressed sizes of the payloads stored for path.
func (d *DatadogIntake) BodySizes(path string) []int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.bodies[path])
}

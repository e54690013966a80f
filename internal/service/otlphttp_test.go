package service_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/overload"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/window"
)

// spanSink keeps the spans ingested.
type spanSink struct{ spans []spans.Span }

func (s *spanSink) IngestSpans(_ *window.Tenant, _ int64, sps []spans.Span, results []window.Reason) {
	for i := range sps {
		if results[i] == window.Accepted {
			s.spans = append(s.spans, sps[i])
		}
	}
}

// startOTLPHTTP serves the OTLP/HTTP receiver on loopback.
func startOTLPHTTP(t *testing.T, maxBody int, setup ...func(*service.Config)) (*httptest.Server, *flush.Aggregator, *service.Tenants, *spanSink) {
	t.Helper()
	tenants, _ := service.NewTenants(service.TenantsConfig{MaxTenants: 10})
	agg := flush.NewAggregator(flush.AggregatorConfig{Window: window.DefaultConfig(), Shards: 2})
	sink := &spanSink{}
	sc := service.Config{Ingest: agg, Tenants: tenants, Limits: codec.DefaultLimits(), Logger: slog.New(slog.DiscardHandler), Spans: sink}
	for _, f := range setup {
		f(&sc)
	}
	srv, err := service.New(sc)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.NewOTLP(service.DefaultOTLPConfig()).Handler(maxBody))
	t.Cleanup(hs.Close)
	return hs, agg, tenants, sink
}

func post(t *testing.T, hs *httptest.Server, path, contentType, encoding string, body []byte, header ...string) *http.Response {
	t.Helper()
	if encoding == "gzip" {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write(body)
		zw.Close()
		body = b.Bytes()
	}
	req, _ := http.NewRequest(http.MethodPost, hs.URL+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := hs.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// TestOTLPHTTPMetrics sends one request per encoding and checks the
// answer and what was aggregated.
func TestOTLPHTTPMetrics(t *testing.T) {
	gauge := func(name string) *colmetricspb.ExportMetricsServiceRequest {
		g := sumPoint(0, 1)
		g.Name = name
		g.GetSum().AggregationTemporality = 1 // delta
		return request(g)
	}
	pbBody, _ := proto.Marshal(gauge("pb"))
	jsonBody, _ := protojson.Marshal(gauge("json"))
	tests := []struct {
		name, contentType, encoding string
		body                        []byte
		wantCode                    int
		wantMetric                  string
	}{
		{"protobuf", "application/x-protobuf", "", pbBody, 200, "pb"},
		{"protobuf gzip", "application/x-protobuf", "gzip", pbBody, 200, "pb"},
		{"json", "application/json", "", jsonBody, 200, "json"},
		{"json gzip with charset", "application/json; charset=utf-8", "gzip", jsonBody, 200, "json"},
		{"unknown content type", "text/plain", "", pbBody, 415, ""},
		{"unknown encoding", "application/x-protobuf", "br", pbBody, 415, ""},
		{"body that does not decode", "application/x-protobuf", "", []byte{0xff, 0xff}, 400, ""},
		{"json that does not decode", "application/json", "", []byte(`{"resourceMetrics": 5}`), 400, ""},
		{"too large", "application/x-protobuf", "", bytes.Repeat([]byte{0}, 2<<10), 413, ""},
		{"too large once gunzipped", "application/x-protobuf", "gzip", bytes.Repeat([]byte{0}, 2<<10), 413, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs, agg, tenants, _ := startOTLPHTTP(t, 1<<10)
			resp := post(t, hs, "/v1/metrics", tc.contentType, tc.encoding, tc.body, "x-tenant-id", "web")
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.wantCode)
			}
			json := strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json")
			if json != strings.HasPrefix(tc.contentType, "application/json") {
				t.Errorf("answered in %s to %s", resp.Header.Get("Content-Type"), tc.contentType)
			}
			unmarshal := proto.Unmarshal
			if json {
				unmarshal = protojson.Unmarshal
			}
			if tc.wantCode != 200 {
				var st spb.Status
				if err := unmarshal(body, &st); err != nil || st.Message == "" {
					t.Errorf("error body %q is not a google.rpc.Status: %v", body, err)
				}
				return
			}
			var out colmetricspb.ExportMetricsServiceResponse
			if err := unmarshal(body, &out); err != nil || out.PartialSuccess != nil {
				t.Errorf("response %q: %v", body, err)
			}
			ps := drained(t, agg, tenants).Points()
			if len(ps) != 1 || ps[0].Name != tc.wantMetric || ps[0].Tenant != "web" || ps[0].Value != 1 {
				t.Errorf("aggregated %+v, want %s = 1 for tenant web", ps, tc.wantMetric)
			}
		})
	}
}

// TestOTLPHTTPPartialSuccessAndPressure: refused points are listed in the
// 200 answer's partial success; past the memory budget the answer is 429
// with Retry-After, which OTLP/HTTP exporters retry; GET is refused.
func TestOTLPHTTPPartialSuccessAndPressure(t *testing.T) {
	lv := &level{}
	hs, _, _, _ := startOTLPHTTP(t, 1<<20, func(c *service.Config) { c.Load = lv })
	bad := histPoint(1, 0, []float64{1}, []uint64{1}, 1) // one count for two buckets
	body, _ := proto.Marshal(request(bad, sumPoint(0, 1)))
	resp := post(t, hs, "/v1/metrics", "application/x-protobuf", "", body)
	b, _ := io.ReadAll(resp.Body)
	var out colmetricspb.ExportMetricsServiceResponse
	if err := proto.Unmarshal(b, &out); resp.StatusCode != 200 || err != nil || out.PartialSuccess.GetRejectedDataPoints() != 1 ||
		!strings.Contains(out.PartialSuccess.GetErrorMessage(), "malformed") {
		t.Errorf("status %d, response %v (%v), want 200 with one point refused as malformed", resp.StatusCode, &out, err)
	}
	lv.l.Store(int32(overload.Hard))
	resp = post(t, hs, "/v1/traces", "application/x-protobuf", "", nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("past the hard limit: %d, Retry-After %q; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	lv.l.Store(int32(overload.OK))
	resp, err := hs.Client().Get(hs.URL + "/v1/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", resp.StatusCode)
	}
}

// TestOTLPHTTPJSONTraces: OTLP/JSON carries span ids as hex strings.
func TestOTLPHTTPJSONTraces(t *testing.T) {
	hs, _, _, sink := startOTLPHTTP(t, 1<<20)
	now := time.Now().UnixNano()
	body := `{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]},
	  "scopeSpans":[{"scope":{"name":"lib"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
	  "parentSpanId":"","name":"GET /cart","kind":2,"startTimeUnixNano":"` + strconv.FormatInt(now, 10) + `","endTimeUnixNano":"` + strconv.FormatInt(now+5e6, 10) + `",
	  "attributes":[{"key":"http.response.status_code","value":{"intValue":"200"}}],"status":{}}]}]}]}`
	resp := post(t, hs, "/v1/traces", "application/json", "", []byte(body))
	b, _ := io.ReadAll(resp.Body)
	var out coltracepb.ExportTraceServiceResponse
	if err := protojson.Unmarshal(b, &out); resp.StatusCode != 200 || err != nil || out.PartialSuccess != nil {
		t.Fatalf("status %d, body %s (%v)", resp.StatusCode, b, err)
	}
	if len(sink.spans) != 1 {
		t.Fatalf("spans %+v", sink.spans)
	}
	sp := sink.spans[0]
	if got := sp.TraceID; got != [16]byte{0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c} ||
		sp.SpanID != [8]byte{0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74} || sp.HasParent || sp.Service != "checkout" || sp.HTTPStatus != 200 || sp.Duration != 5e6 {
		t.Errorf("span %+v", sp)
	}
}

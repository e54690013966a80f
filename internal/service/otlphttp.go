package service

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/klauspost/compress/gzip"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/aggd/aggd/internal/window"
)

// OTLP/HTTP content types.
const (
	contentProtobuf = "application/x-protobuf"
	contentJSON     = "application/json"
)

// Handler returns the OTLP/HTTP receiver: POST /v1/metrics and /v1/traces
// with protobuf or JSON bodies, gzip or not, of at most maxBody bytes
// (after decompression). The tenant comes from the x-tenant-id or
// authorization header, as for gRPC; memory pressure, limits and the
// write-ahead log apply as for OTLP/gRPC. Answers follow the OTLP/HTTP
// specification: 200 with the response (its partial success listing
// refused points), 400 for a body that does not decode, 429 or 503 with
// Retry-After when the client should retry, and a google.rpc.Status body
// in the request's encoding for every error.
func (r *OTLP) Handler(maxBody int) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/metrics", otlpHandler(r, maxBody, false, func(ctx context.Context, tn *window.Tenant, body []byte, json bool) (proto.Message, error) {
		if json { // to protobuf, which the metrics decoder reads
			req := &colmetricspb.ExportMetricsServiceRequest{}
			if err := unmarshalOTLP(body, true, req); err != nil {
				return nil, err
			}
			body, _ = proto.Marshal(req)
		}
		return r.exportMetrics(ctx, tn, body)
	}))
	mux.Handle("/v1/traces", otlpHandler(r, maxBody, true, func(ctx context.Context, tn *window.Tenant, body []byte, json bool) (proto.Message, error) {
		if json { // to protobuf, with the ids OTLP/JSON writes in hex
			req := &coltracepb.ExportTraceServiceRequest{}
			if err := unmarshalOTLP(body, true, req); err != nil {
				return nil, err
			}
			hexIDs(req)
			body, _ = proto.Marshal(req)
		}
		return r.traces.exportTraces(ctx, tn, body)
	}))
	return mux
}

type exportFunc func(ctx context.Context, tn *window.Tenant, body []byte, json bool) (proto.Message, error)

// otlpHandler serves one signal's path; spans says it is traces.
func otlpHandler(r *OTLP, maxBody int, spans bool, export exportFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type"))
		json := ct == contentJSON
		if req.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeOTLPError(w, json, http.StatusMethodNotAllowed, status.New(codes.Unimplemented, "OTLP/HTTP takes POST only"))
			return
		}
		if ct != contentProtobuf && ct != contentJSON {
			writeOTLPError(w, json, http.StatusUnsupportedMediaType, status.Newf(codes.InvalidArgument, "content type %q: want %s or %s", ct, contentProtobuf, contentJSON))
			return
		}
		md := metadata.MD{}
		for _, h := range []string{"x-tenant-id", "authorization"} {
			if v := req.Header.Values(h); len(v) > 0 {
				md[h] = v
			}
		}
		ctx := metadata.NewIncomingContext(req.Context(), md)
		tn, err := r.s.tenants.Resolve(ctx)
		if err == nil {
			err = r.s.admit(ctx, tn)
		}
		if err != nil {
			writeOTLPStatus(w, json, status.Convert(err))
			return
		}
		body, code, err := readOTLPBody(req, maxBody)
		if err != nil {
			writeOTLPError(w, json, code, status.New(codes.InvalidArgument, err.Error()))
			return
		}
		release, err := r.reserve(ctx, tn, body, spans, json)
		if errors.Is(err, errTooLargeForBudget) {
			writeOTLPError(w, json, http.StatusRequestEntityTooLarge, status.Convert(err))
			return
		} else if err != nil {
			writeOTLPStatus(w, json, status.Convert(err))
			return
		}
		resp, err := export(ctx, tn, body, json)
		release()
		if err != nil {
			writeOTLPStatus(w, json, status.Convert(err))
			return
		}
		writeOTLP(w, json, http.StatusOK, resp)
	})
}

var errTooLarge = errors.New("request body too large")

// readOTLPBody reads the body, gunzipping it, up to maxBody bytes; on
// error it returns the HTTP status to answer.
func readOTLPBody(req *http.Request, maxBody int) ([]byte, int, error) {
	var rd io.Reader = http.MaxBytesReader(nil, req.Body, int64(maxBody))
	switch enc := req.Header.Get("Content-Encoding"); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(rd)
		if err != nil {
			return nil, http.StatusBadRequest, errors.New("gzip body: " + err.Error())
		}
		defer zr.Close()
		rd = zr
	default:
		return nil, http.StatusUnsupportedMediaType, errors.New("content encoding " + strconv.Quote(enc) + ": want gzip or none")
	}
	body, err := io.ReadAll(io.LimitReader(rd, int64(maxBody)+1))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe) || len(body) > maxBody:
		return nil, http.StatusRequestEntityTooLarge, errTooLarge
	case err != nil:
		return nil, http.StatusBadRequest, errors.New("reading the body: " + err.Error())
	}
	return body, 0, nil
}

func unmarshalOTLP(body []byte, json bool, m proto.Message) error {
	var err error
	if json {
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(body, m)
	} else {
		err = proto.Unmarshal(body, m)
	}
	if err != nil {
		return status.Error(codes.InvalidArgument, "the body does not decode: "+err.Error())
	}
	return nil
}

// hexIDs fixes the ids of spans decoded from OTLP/JSON, where they are
// hex strings, not base64 as protojson reads bytes: hex digits are base64
// digits too, so the decoded bytes encode back to the hex string.
func hexIDs(req *coltracepb.ExportTraceServiceRequest) {
	fix := func(b *[]byte) {
		if len(*b) == 0 {
			return
		}
		if id, err := hex.DecodeString(base64.StdEncoding.EncodeToString(*b)); err == nil {
			*b = id
		}
	}
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				fix(&sp.TraceId)
				fix(&sp.SpanId)
				fix(&sp.ParentSpanId)
				for _, l := range sp.Links {
					fix(&l.TraceId)
					fix(&l.SpanId)
				}
			}
		}
	}
}

// httpStatus maps a gRPC code to the OTLP/HTTP status.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unavailable, codes.Aborted:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded, codes.Canceled:
		return http.StatusGatewayTimeout
	case codes.Unimplemented:
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

// writeOTLPStatus answers st with its HTTP status and, when it asks for a
// delay (RetryInfo), Retry-After in whole seconds.
func writeOTLPStatus(w http.ResponseWriter, json bool, st *status.Status) {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			secs := int64(ri.GetRetryDelay().AsDuration().Seconds() + 0.999)
			w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
		}
	}
	writeOTLPError(w, json, httpStatus(st.Code()), st)
}

func writeOTLPError(w http.ResponseWriter, json bool, code int, st *status.Status) {
	writeOTLP(w, json, code, st.Proto())
}

func writeOTLP(w http.ResponseWriter, json bool, code int, m proto.Message) {
	var b []byte
	if json {
		b, _ = protojson.Marshal(m)
		w.Header().Set("Content-Type", contentJSON)
	} else {
		b, _ = proto.Marshal(m)
		w.Header().Set("Content-Type", contentProtobuf)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	w.Write(b)
}

package service_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/service/servicetest"
)

// TestPeerCallsOfAnotherProtocolAreRefused checks that a replica takes a
// forwarded batch only from a peer that speaks its peer protocol: a call
// of another version, or of none (an earlier release), is refused
// FailedPrecondition, saying why, and nothing of it is taken.
func TestPeerCallsOfAnotherProtocolAreRefused(t *testing.T) {
	const token = "s3cret-peer-token"
	rec := &servicetest.Recorder{}
	addr := servicetest.ServePeers(t, rec, token, func(*service.Config) {})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	peer := aggdv1.NewPeerServiceClient(cc)
	taken := 0
	for _, tc := range []struct {
		name    string
		md      []string
		code    codes.Code
		message string
	}{
		{"no version", nil, codes.FailedPrecondition, "peer protocol none"},
		{"another version", []string{codec.PeerProtocolKey, "0"}, codes.FailedPrecondition, `peer protocol ["0"]`},
		{"two versions", []string{codec.PeerProtocolKey, codec.PeerProtocol, codec.PeerProtocolKey, "2"}, codes.FailedPrecondition, "run one release"},
		{"this version", []string{codec.PeerProtocolKey, codec.PeerProtocol}, codes.OK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(context.Background(), append([]string{"authorization", "Bearer " + token}, tc.md...)...)
			req := &aggdv1.ForwardRequest{Tenant: "acme", ArrivalUnixNano: 1_700_000_000_000_000_000,
				Batch: &aggdv1.Batch{Samples: []*aggdv1.Sample{{Name: "m", Type: aggdv1.MetricType_METRIC_TYPE_COUNT, Value: 1}}}}
			_, err := peer.Forward(ctx, req)
			if got := status.Code(err); got != tc.code || !strings.Contains(status.Convert(err).Message(), tc.message) {
				t.Fatalf("Forward: %v, want %v containing %q", err, tc.code, tc.message)
			}
			if tc.code == codes.OK {
				taken++
			}
			if n := len(rec.Samples()); n != taken {
				t.Fatalf("%d samples taken, want %d", n, taken)
			}
		})
	}
}

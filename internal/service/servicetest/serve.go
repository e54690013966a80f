package servicetest

import (
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc"

	"github.com/aggd/aggd/internal/codec"
	"github.com/aggd/aggd/internal/service"
)

// Serve serves the aggregator API into ing on a loopback TCP port, with
// authentication off and default limits, until the test ends. It returns
// the address.
func Serve(tb testing.TB, ing service.Ingester) string {
	tb.Helper()
	return ServeSpans(tb, ing, nil)
}

// ServeSpans is Serve with spans taken into si (nil: spans refused).
func ServeSpans(tb testing.TB, ing service.Ingester, si service.SpanIngester) string {
	tb.Helper()
	return ServeWith(tb, ing, func(cfg *service.Config) { cfg.Spans = si })
}

// ServeWith is Serve with setup applied to the server's configuration.
func ServeWith(tb testing.TB, ing service.Ingester, setup func(*service.Config)) string {
	tb.Helper()
	return ServePeers(tb, ing, "", setup)
}

// ServePeers is ServeWith that also serves aggd.v1.PeerService, taking
// calls that carry token; an empty token serves no peer.
func ServePeers(tb testing.TB, ing service.Ingester, token string, setup func(*service.Config)) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ServeOn(tb, lis, ing, token, setup)
	return lis.Addr().String()
}

// ServeOn is ServePeers on a listener the caller made, so that it knows
// the address before the server is set up.
func ServeOn(tb testing.TB, lis net.Listener, ing service.Ingester, token string, setup func(*service.Config)) {
	tb.Helper()
	tenants, err := service.NewTenants(service.TenantsConfig{MaxTenants: 100})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := service.Config{Ingest: ing, Tenants: tenants, Limits: codec.DefaultLimits(), Logger: slog.New(slog.DiscardHandler)}
	setup(&cfg)
	srv, err := service.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	gs := grpc.NewServer(service.ServerOptions()...)
	srv.Register(gs)
	if token != "" {
		srv.RegisterPeer(gs, token)
	}
	go gs.Serve(lis)
	tb.Cleanup(gs.Stop)
}

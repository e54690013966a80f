package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// serveOTLPHTTP serves h, the OTLP/HTTP receiver, on addr until the
// returned stop is called; stop waits up to drain for requests in flight.
func serveOTLPHTTP(addr string, h http.Handler, drain time.Duration, log *slog.Logger) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("OTLP/HTTP server stopped", "err", err)
		}
	}()
	log.Info("OTLP/HTTP serving", "addr", lis.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	}, nil
}

// instanceID is the service.instance.id of this replica's OTLP aggregates:
// outside cluster mode replicas each write their own aggregates of a
// series, told apart by their hostnames; in cluster mode a series has one
// owner, so one writer, and no instance id.
func instanceID(cfg config) string {
	if cfg.Cluster.on() {
		return ""
	}
	return cfg.Hostname
}

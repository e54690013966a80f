// Command aggd is the aggregation server: it receives samples, events and
// service checks over gRPC, aggregates them per tenant in time windows and
// flushes them upstream on aligned ticks.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	rungroup "github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	nooptrace "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	configpkg "github.com/aggd/aggd/internal/config"
	"github.com/aggd/aggd/internal/dogstatsd"
	"github.com/aggd/aggd/internal/flush"
	"github.com/aggd/aggd/internal/journal"
	"github.com/aggd/aggd/internal/overload"
	"github.com/aggd/aggd/internal/rules"
	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/spans"
	"github.com/aggd/aggd/internal/telemetry"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/wal"
)

// The components wired below, checked against the interfaces they are
// wired in as.
var (
	_ flush.Exporter        = (*upstream.Router)(nil)
	_ spans.Exporter        = (*upstream.Router)(nil)
	_ flush.RuleEngine      = (*rules.Engine)(nil)
	_ spans.Observer        = (*rules.Engine)(nil)
	_ flush.EventHolder     = (*spans.GroupSampler)(nil)
	_ flush.WAL             = (*journal.Journal)(nil)
	_ flush.TenantLister    = (*service.Tenants)(nil)
	_ flush.Observer        = (*telemetry.FlushMetrics)(nil)
	_ service.Ingester      = (*flush.Aggregator)(nil)
	_ service.SpanIngester  = (*spans.Processor)(nil)
	_ service.ContextRanker = (*flush.Aggregator)(nil)
	_ spans.StatsSink       = (*flush.Aggregator)(nil)
	_ dogstatsd.Ingester    = (*flush.Aggregator)(nil)
	_ journal.Tenants       = (*service.Tenants)(nil)
	_ journal.Ingester      = (*flush.Aggregator)(nil)
	_ journal.SpanReplayer  = (*spans.Processor)(nil)
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "aggd:", err)
		os.Exit(1)
	}
}

// run builds aggd from args and the environment, serves until ctx is done,
// then shuts down in order. ready, if set, is told the bound addresses.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, ready func(grpcAddr, adminAddr string)) (err error) {
	build := telemetry.BuildInfo()
	if slices.ContainsFunc(args, func(a string) bool { return a == "--version" || a == "-version" }) {
		_, err := fmt.Fprintln(stdout, build)
		return err
	}
	if len(args) > 0 && args[0] == "validate" {
		return validate(args[1:], getenv, stdout)
	}
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	if err := checkEnviron(environ()); err != nil {
		return err
	}
	log := newLogger(cfg, stderr)

	var tenantCfgs []configpkg.Tenant
	if cfg.TenantsFile != "" {
		if tenantCfgs, err = configpkg.LoadTenants(cfg.TenantsFile, getenv); err != nil {
			return err
		}
	}
	tenants, err := service.NewTenants(configpkg.ServiceTenants(tenantCfgs), cfg.TenantsFile != "", cfg.MaxTenants)
	if err != nil {
		return fmt.Errorf("tenants file: %w", err)
	}

	tracer, stopTracing, err := newTracer(ctx, cfg)
	if err != nil {
		return err
	}
	defer stopTracing()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), telemetry.NewTenantCollector(tenants, cfg.MetricsMaxTenants))
	telemetry.RegisterBuildInfo(reg, build)

	spoolDir := ""
	if cfg.WALDir != "" {
		spoolDir = filepath.Join(cfg.WALDir, "queue")
	}
	router, upstreamFile, closeUpstreams, err := buildUpstreams(cfg, getenv, tenantCfgs, configpkg.Shared{
		Histogram: cfg.Histogram, SketchPercentiles: cfg.SketchPct, Metrics: telemetry.NewSendMetrics(reg), Log: log, Stdout: stdout, InstanceID: instanceID(cfg),
		Tracer: tracer, SpoolDir: spoolDir, SpoolMaxBytes: cfg.QueueMaxBytes,
	})
	if err != nil {
		return err
	}
	defer closeUpstreams()
	var walLog *wal.Log
	if cfg.WALDir != "" {
		sync, _ := wal.ParseSync(cfg.WALFsync)
		if walLog, err = wal.Open(filepath.Join(cfg.WALDir, "wal"), wal.Options{Sync: sync}); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, walLog.Close()) }() // fsyncs
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_wal_records", Help: "Batches in the write-ahead log, waiting for the flushes that carry them."},
			func() float64 { return float64(walLog.Stats().Records) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_wal_bytes", Help: "Bytes of the records in the write-ahead log (compressed, as written)."},
				func() float64 { return float64(walLog.Stats().Bytes) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "aggd_wal_damaged_records_total", Help: "Write-ahead log records replay skipped because they failed their checksum."},
				func() float64 { return float64(walLog.Stats().Damaged) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_send_queue_full", Help: "1 while some upstream's send queue on disk is at --queue-max-bytes: flushes wait and batches are refused."},
				func() float64 { return b2f(router.Full()) }))
	}
	if err := router.Start(ctx); err != nil {
		return err
	}

	flushCfg := flush.Config{
		Interval: cfg.Window.Interval, Timeout: cfg.ExportTimeout, Hostname: cfg.Hostname,
		Observer: telemetry.NewFlushMetrics(reg), Tracer: tracer,
	}

	var ruleEngine *rules.Engine
	reloadMetrics := telemetry.NewReloadMetrics(reg)
	var watchers []*configpkg.Watcher
	if cfg.RulesFile != "" {
		set, err := rules.Load(cfg.RulesFile)
		if err != nil {
			return err
		}
		ruleEngine = rules.NewEngine(set, flush.ShardCount(cfg.Shards), cfg.Window)
		watchers = append(watchers, configpkg.NewWatcher(cfg.RulesFile, cfg.RulesReload, func() error {
			set, err := rules.Load(cfg.RulesFile)
			if err == nil {
				ruleEngine.SetRules(set)
			}
			return err
		}, reloadMetrics.Observer("rules"), log))
	}

	var policy *spans.Policy
	if cfg.SamplingFile != "" {
		if policy, err = spans.LoadPolicy(cfg.SamplingFile); err != nil {
			return err
		}
	}
	sampler := spans.NewSampler(policy, cfg.Sampling)
	groups := spans.NewGroupSampler(policy, spans.MaxHeldEvents)
	aggCfg := flush.AggregatorConfig{Window: cfg.Window, Shards: cfg.Shards, Events: groups}
	if ruleEngine != nil {
		aggCfg.Rules = ruleEngine
	}
	agg := flush.NewAggregator(aggCfg)
	var spanObserver spans.Observer
	if ruleEngine != nil {
		spanObserver = ruleEngine
	}
	proc := spans.NewProcessor(agg, sampler, spanObserver)
	var jnl *journal.Journal
	if walLog != nil {
		eventHold, spanHold := journal.Holds(policy, cfg.Window.Interval)
		if jnl, err = journal.New(journal.Config{Log: walLog, Due: agg.Due, EventHold: eventHold, SpanHold: spanHold, LateWindow: cfg.Window.LateWindow,
			Tenants: tenants, Limits: cfg.Limits, Ingest: agg, Spans: proc, Logger: log}); err != nil {
			return err
		}
		flushCfg.WAL = jnl
	}
	flusher, err := flush.NewFlusher(agg, router, tenants, flushCfg, log)
	if err != nil {
		return err
	}
	reg.MustRegister(telemetry.NewSamplerCollector(&sampler.C))
	traceRunner, err := spans.NewRunner(spans.RunnerConfig{Sampler: sampler, Exporter: router, Timeout: cfg.Window.Interval, Logger: log})
	if err != nil {
		return err
	}
	if err := traceRunner.Start(ctx); err != nil {
		return err
	}
	if cfg.SamplingFile != "" {
		watchers = append(watchers, configpkg.NewWatcher(cfg.SamplingFile, cfg.SamplingReload, func() error {
			p, err := spans.LoadPolicy(cfg.SamplingFile)
			if err == nil {
				sampler.SetPolicy(p)
				groups.SetPolicy(p)
			}
			return err
		}, reloadMetrics.Observer("sampling"), log))
	}
	if len(watchers) > 0 {
		for _, w := range watchers {
			if err := w.Start(ctx); err != nil {
				return err
			}
		}
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-hup:
					for _, w := range watchers {
						w.Reload()
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}

	var guard *overload.Guard
	if cfg.MemoryLimit > 0 {
		prev := debug.SetMemoryLimit(int64(cfg.MemoryLimit / 10 * 8)) // the GC works hard before traffic slows
		defer debug.SetMemoryLimit(prev)
		guard = overload.New(cfg.MemoryLimit, 100*time.Millisecond, nil)
		if err := guard.Start(ctx); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, guard.Shutdown(context.Background())) }()
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_memory_used_bytes", Help: "Memory the Go runtime holds, as the memory budget counts it."},
			func() float64 { return float64(guard.Used()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "aggd_memory_pressure", Help: "0 normal, 1 over 80 % of --memory-limit (streams slow), 2 over 95 % (batches refused)."},
				func() float64 { return float64(guard.Level()) }))
	}
	// Memory pressure, and a full send queue on disk, push back on ingest.
	var load overload.Leveler
	switch {
	case walLog != nil:
		load = overload.Pushback{Memory: guard, Full: router.Full}
	case guard != nil:
		load = guard
	}
	node, err := startCluster(ctx, cfg, agg, reg, log)
	if err != nil {
		return err
	}
	defer node.shutdown()
	var dsd *dogstatsd.Server
	if cfg.DogStatsD.UDP != "" || cfg.DogStatsD.Socket != "" {
		tn, err := tenants.Get(cfg.DogStatsDTenant)
		if err != nil {
			return fmt.Errorf("dogstatsd tenant: %w", err)
		}
		dc := cfg.DogStatsD
		dc.Limits, dc.Load = cfg.Limits, load
		var ing dogstatsd.Ingester = agg
		if fwd := node.forwarder(); fwd != nil {
			ing = &service.Routed{Forwarder: fwd, Ingester: agg}
		}
		if dsd, err = dogstatsd.New(dc, tn, ing, log); err != nil {
			return err
		}
		if err := dsd.Start(ctx); err != nil {
			return err
		}
		reg.MustRegister(telemetry.NewDogStatsDCollector(dsd, tn.ID))
		log.Info("dogstatsd listening", "addrs", dsd.Addrs(), "tenant", tn.ID)
	}

	sc := service.Config{Ingest: agg, Tenants: tenants, Limits: cfg.Limits, Logger: log, Spans: proc, MaxStreamAge: cfg.MaxStreamAge, Load: load}
	if guard != nil {
		sc.Memory = guard
	}
	if jnl != nil {
		sc.Journal = jnl
		if err := jnl.Replay(); err != nil {
			return err
		}
	}
	sc.Forwarder = node.forwarder()
	sc.PeerCalls = node.peerCalls()
	srv, err := service.New(sc)
	if err != nil {
		return err
	}
	reg.MustRegister(telemetry.NewRefusalCollector(srv))
	tlsOpt, err := serverTLS(cfg)
	if err != nil {
		return err
	}
	grpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(grpcMetrics)
	gs := grpc.NewServer(append(service.ServerOptions(), tlsOpt,
		grpc.ChainUnaryInterceptor(grpcMetrics.UnaryServerInterceptor()),
		// Per-message accounting on the batch stream cost about 10 % of
		// ingest throughput; aggd's own counters measure that traffic.
		grpc.ChainStreamInterceptor(selector.StreamServerInterceptor(grpcMetrics.StreamServerInterceptor(),
			selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
				return c.FullMethod() != aggdv1.AggregatorService_Stream_FullMethodName
			}))),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.WaitForHandlers(true),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge: orInfinity(cfg.MaxConnAge), MaxConnectionAgeGrace: orInfinity(cfg.MaxConnAgeGrace),
			Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: cfg.KeepaliveMinTime, PermitWithoutStream: true}),
	)...)
	srv.Register(gs)
	srv.RegisterPeer(gs, cfg.Cluster.Token)
	otlp := srv.NewOTLP(cfg.OTLP)
	otlp.Register(gs)
	srv.RegisterAdmin(gs, service.AdminConfig{
		Token:    cfg.AdminToken,
		Contexts: agg,
		Queues:   service.RouterQueues(router),
		Config:   func() string { return effectiveConfig(cfg, upstreamFile, tenantCfgs) },
		Rules:    service.EngineRules(ruleEngine),
	})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	// Series from the start for every method the interceptors count: not
	// for Stream, which they skip and would leave at zero.
	grpcMetrics.InitializeMetrics(exceptMethod{gs, aggdv1.AggregatorService_Stream_FullMethodName})

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	var admin *http.Server
	adminAddr := ""
	if cfg.AdminListen != "" {
		alis, err := net.Listen("tcp", cfg.AdminListen)
		if err != nil {
			lis.Close()
			return err
		}
		adminAddr = alis.Addr().String()
		admin = &http.Server{Handler: metricsMux(reg), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := admin.Serve(alis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server stopped", "err", err)
			}
		}()
	}

	if cfg.PprofListen != "" {
		plis, err := net.Listen("tcp", cfg.PprofListen)
		if err != nil {
			lis.Close()
			return err
		}
		pprofSrv := &http.Server{Handler: pprofMux(), ReadHeaderTimeout: 10 * time.Second}
		go pprofSrv.Serve(plis)
		defer pprofSrv.Close()
	}

	stopOTLPHTTP := func() {}
	if cfg.OTLPHTTPListen != "" {
		if stopOTLPHTTP, err = serveOTLPHTTP(cfg.OTLPHTTPListen, otlp.Handler(cfg.MaxRecvMsgSize), cfg.DrainTimeout, log); err != nil {
			lis.Close()
			return err
		}
	}
	if err := flusher.Start(ctx); err != nil {
		return err
	}
	// Serve until ctx is done or the gRPC server fails, then stop in the
	// order the actors are added: run.Group interrupts them one after the
	// other. Every stop's error is returned.
	var (
		g          rungroup.Group
		stopErrs   []error
		stopCtx    = context.Background() // the shutdown timeout's, from the gRPC stop on
		cancelStop = func() {}
		start      time.Time
	)
	defer func() { cancelStop() }()
	stopped := func(err error) { stopErrs = append(stopErrs, err) }
	untilStopped := func(stop func()) (func() error, func(error)) {
		done := make(chan struct{})
		return func() error { <-done; return nil }, func(error) { stop(); close(done) }
	}
	signalled := make(chan struct{})
	g.Add(func() error {
		select {
		case <-ctx.Done():
		case <-signalled:
		}
		return nil
	}, func(error) { close(signalled) })
	g.Add(untilStopped(func() {
		for _, w := range watchers {
			stopped(w.Shutdown(context.Background()))
		}
	}))
	if dsd != nil {
		g.Add(untilStopped(func() { stopped(dsd.Shutdown(context.Background())) }))
	}
	g.Add(untilStopped(stopOTLPHTTP)) // stop taking OTLP/HTTP before the final flush
	g.Add(func() error {
		if err := gs.Serve(lis); err != nil {
			log.Error("grpc server stopped", "err", err)
			return err
		}
		return nil
	}, func(error) {
		start = time.Now()
		stopCtx, cancelStop = context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		log.Info("shutting down")
		drain(cfg, log, hs, srv, gs)
	})
	if node != nil {
		// The peer port is served by the same gRPC server: its drain and
		// stop above end this too.
		g.Add(func() error { return gs.Serve(node.lis) }, func(error) {})
	}
	g.Add(untilStopped(func() { stopped(traceRunner.Shutdown(stopCtx)) }))
	g.Add(untilStopped(func() { stopped(flusher.Shutdown(stopCtx)) }))
	g.Add(untilStopped(func() {
		if err := router.Shutdown(stopCtx); err != nil {
			log.Error("send queues not drained", "err", err)
			stopped(err)
		}
	}))
	if admin != nil {
		g.Add(untilStopped(func() { stopped(admin.Shutdown(stopCtx)) }))
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(aggdv1.AggregatorService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	var watched []string
	for _, w := range watchers {
		watched = append(watched, w.Path())
	}
	memory := "off"
	if cfg.MemoryLimit > 0 {
		memory = fmt.Sprintf("%d bytes (%.0f MiB)", cfg.MemoryLimit, float64(cfg.MemoryLimit)/(1<<20))
	}
	wal := "off (in memory only)"
	if cfg.WALDir != "" {
		wal = fmt.Sprintf("%s (fsync %s)", cfg.WALDir, cfg.WALFsync)
	}
	log.Info("aggd serving", "version", build.Version, "grpc", lis.Addr().String(), "admin", adminAddr, "interval", cfg.Window.Interval,
		"upstreams", describeUpstreams(upstreamFile), "wal", wal, "memory_limit", memory,
		"auth", cfg.TenantsFile != "", "tenants_file", cfg.TenantsFile, "watched", watched)
	if ready != nil {
		ready(lis.Addr().String(), adminAddr)
	}

	serveErr := g.Run()
	err = errors.Join(stopErrs...)
	log.Info("stopped", "took", time.Since(start), "err", err)
	return errors.Join(serveErr, err)
}

// buildUpstreams makes the upstreams of the configuration file, or the
// JSON-lines upstream of --output without one, and the router over them.
func buildUpstreams(cfg config, getenv func(string) string, tenants []configpkg.Tenant, sh configpkg.Shared) (*upstream.Router, *configpkg.File, func(), error) {
	file := &configpkg.File{Upstreams: []configpkg.Upstream{{Name: "jsonlines", Type: "jsonlines", Path: cfg.Output}}}
	if cfg.ConfigFile != "" {
		var err error
		if file, err = configpkg.Load(cfg.ConfigFile, getenv); err != nil {
			return nil, nil, nil, err
		}
		if len(file.Upstreams) == 0 {
			return nil, nil, nil, fmt.Errorf("%s defines no [[upstream]]", cfg.ConfigFile)
		}
	}
	var ups []upstream.Upstream
	var closers []func() error
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	defaults := file.DefaultUpstreams
	for _, u := range file.Upstreams {
		built, closer, err := u.Build(sh)
		if err != nil {
			closeAll()
			return nil, nil, nil, err
		}
		ups = append(ups, built)
		closers = append(closers, closer)
		if len(file.DefaultUpstreams) == 0 {
			defaults = append(defaults, u.Name)
		}
	}
	routes, err := configpkg.Routes(tenants)
	if err == nil {
		var r *upstream.Router
		if r, err = upstream.NewRouter(ups, defaults, routes); err == nil {
			return r, file, closeAll, nil
		}
	}
	closeAll()
	return nil, nil, nil, err
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// drain takes aggd out of service: health NOT_SERVING, every stream
// ended after its current batch, and the gRPC server stopped, forcibly
// once the drain timeout has passed.
func drain(cfg config, log *slog.Logger, hs *health.Server, srv *service.Server, gs *grpc.Server) {
	hs.Shutdown() // every service NOT_SERVING
	srv.Drain()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.DrainTimeout):
		log.Warn("streams still open after the drain timeout; closing them", "drain_timeout", cfg.DrainTimeout)
		gs.Stop()
		<-stopped
	}
}

// newTracer returns the tracer of aggd's own flushes and sends: an OTLP
// exporter when --otel-traces-endpoint is set, else a no-op.
func newTracer(ctx context.Context, cfg config) (trace.Tracer, func(), error) {
	if cfg.OTelTraces == "" {
		return nooptrace.NewTracerProvider().Tracer("aggd"), func() {}, nil
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.OTelTraces)}
	if cfg.OTelTracesInsecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("otel traces: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "aggd"), attribute.String("host.name", cfg.Hostname))))
	return tp.Tracer("aggd"), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tp.Shutdown(ctx)
	}, nil
}

// serverTLS returns the gRPC port's transport credentials: TLS with
// --tls-cert and --tls-key, verifying client certificates against
// --tls-client-ca when set; else plaintext.
func serverTLS(cfg config) (grpc.ServerOption, error) {
	if cfg.TLSCert == "" {
		return grpc.Creds(insecure.NewCredentials()), nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.TLSClientCA != "" {
		pem, err := os.ReadFile(cfg.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls client ca: %s holds no PEM certificate", cfg.TLSClientCA)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return grpc.Creds(credentials.NewTLS(tc)), nil
}

// orInfinity maps 0 (never) to grpc's infinity.
func orInfinity(d time.Duration) time.Duration {
	if d == 0 {
		return time.Duration(math.MaxInt64)
	}
	return d
}

func metricsMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// describeUpstreams names each upstream with its type and where it sends,
// for the startup log (no credentials).
func describeUpstreams(f *configpkg.File) []string {
	var out []string
	for _, u := range f.Upstreams {
		to := u.Path
		switch u.Type {
		case "datadog":
			to = u.URL
		case "otlp":
			to = u.Endpoint
		}
		out = append(out, fmt.Sprintf("%s (%s → %s)", u.Name, u.Type, to))
	}
	return out
}

// exceptMethod lists a server's services without one method.
type exceptMethod struct {
	*grpc.Server
	fullMethod string
}

func (e exceptMethod) GetServiceInfo() map[string]grpc.ServiceInfo {
	infos := e.Server.GetServiceInfo()
	for name, info := range infos {
		info.Methods = slices.DeleteFunc(slices.Clone(info.Methods), func(m grpc.MethodInfo) bool { return "/"+name+"/"+m.Name == e.fullMethod })
		infos[name] = info
	}
	return infos
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(strings.ToUpper(cfg.LogLevel)))
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: durationText}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// durationText writes durations as Go durations ("1.5s"), not as
// nanoseconds, in both log formats.
func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

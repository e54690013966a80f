// Package config reads aggd's files: the configuration file, which defines
// upstreams, and the tenants file, which maps tokens to tenants and routes
// tenants to upstreams with their own credentials. Strings that hold
// secrets may name environment variables as ${NAME}.
package config

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"go.opentelemetry.io/otel/trace"

	"github.com/aggd/aggd/internal/service"
	"github.com/aggd/aggd/internal/upstream"
)

// File is the configuration file (--config).
type File struct {
	// DefaultUpstreams receive the data of tenants without their own
	// upstreams list.
	DefaultUpstreams []string   `toml:"default_upstreams"`
	Upstreams        []Upstream `toml:"upstream"`
	// Settings are the [aggd] table: options by flag name, below flags
	// and the environment (see LoadSettings).
	Settings map[string]any `toml:"aggd"`
}

// LoadSettings reads the [aggd] table of a configuration file: every
// option of aggd by its flag name (max-tags = 200, interval = "10s",
// memory-limit = "512MiB"), as the strings a flag would be given, lists
// joined with commas, and environment variables expanded (see Expand).
func LoadSettings(path string, getenv func(string) string) (map[string]string, error) {
	var f struct {
		Settings map[string]any `toml:"aggd"`
	}
	if _, err := toml.DecodeFile(path, &f); err != nil {
		return nil, err
	}
	out := map[string]string{}
	var errs []error
	for k, v := range f.Settings {
		var s string
		switch v := v.(type) {
		case []any:
			parts := make([]string, len(v))
			for i, p := range v {
				parts[i] = fmt.Sprint(p)
			}
			s = strings.Join(parts, ",")
		case map[string]any:
			errs = append(errs, fmt.Errorf("%s: [aggd] %s is a table, not an option's value", path, k))
			continue
		default:
			s = fmt.Sprint(v)
		}
		x, err := Expand(s, getenv)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: [aggd] %s: %w", path, k, err))
			continue
		}
		out[k] = x
	}
	return out, errors.Join(errs...)
}

// Upstream is one [[upstream]] entry.
type Upstream struct {
	Name string `toml:"name"`
	// Type is datadog, otlp or jsonlines.
	Type string `toml:"type"`

	// URL is the Datadog intake's base URL.
	URL string `toml:"url"`
	// APIKey is the Datadog API key of tenants without their own.
	APIKey string `toml:"api_key"`
	// RawCounts sends Datadog COUNT series of the sums instead of the
	// Agent's RATE of sum ÷ interval.
	RawCounts bool `toml:"raw_counts"`

	// Endpoint is the OTLP collector's host:port.
	Endpoint string `toml:"endpoint"`
	// Insecure turns TLS off for OTLP.
	Insecure bool `toml:"insecure"`
	// CAFile, if set, holds the PEM certificates that verify the intake
	// (https URLs, OTLP with TLS) instead of the system roots.
	CAFile string `toml:"ca_file"`
	// Headers are sent with every request.
	Headers map[string]string `toml:"headers"`
	// TenantAttribute names the OTLP resource attribute holding the tenant.
	TenantAttribute string `toml:"tenant_attribute"`
	// TenantHeader, if set, is an OTLP request header holding the tenant.
	TenantHeader string `toml:"tenant_header"`

	// Path is the JSON-lines file, or "-" for standard output.
	Path string `toml:"path"`

	Compression     string        `toml:"compression"`
	Senders         int           `toml:"senders"`
	QueueSize       int           `toml:"queue_size"`
	Timeout         time.Duration `toml:"timeout"`
	InitialBackoff  time.Duration `toml:"initial_backoff"`
	MaxBackoff      time.Duration `toml:"max_backoff"`
	MaxPayloadBytes int           `toml:"max_payload_bytes"`
}

// Tenant is one [[tenant]] entry of the tenants file.
// A tenant's settings are declared once, in the two parts its consumers
// take whole: the edge's (id, tokens, the context bound and the limits,
// which the edge hands on to window.Tenant) and the router's (its own
// upstreams and its credentials for them).
type Tenant struct {
	service.TenantConfig
	// TenantRoute's Upstreams, if set, replace the default upstreams for
	// this tenant.
	upstream.TenantRoute
}

// Credentials are a tenant's secrets for one upstream.
type Credentials = upstream.Credentials

func decodeFile(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	md, err := toml.Decode(string(data), v)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return fmt.Errorf("%s: unknown key %q", path, und[0].String())
	}
	return nil
}

// Load reads a configuration file. Every string in it may name
// environment variables (see Expand); a key that does not apply to an
// upstream's type, or a duration without a unit, is an error. Every
// problem is reported, not only the first.
func Load(path string, getenv func(string) string) (*File, error) {
	var f File
	if err := decodeFile(path, &f); err != nil {
		return nil, err
	}
	var raw struct {
		Upstreams []map[string]any `toml:"upstream"`
	}
	if _, err := toml.DecodeFile(path, &raw); err != nil {
		return nil, err
	}
	var errs []error
	for i, keys := range raw.Upstreams {
		errs = append(errs, checkKeys(f.Upstreams[i], keys))
	}
	for i := range f.Upstreams {
		errs = append(errs, expandFields("upstream "+f.Upstreams[i].Name, reflect.ValueOf(&f.Upstreams[i]), getenv))
	}
	errs = append(errs, expandFields("default_upstreams", reflect.ValueOf(&f.DefaultUpstreams), getenv))
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}

// upstreamKeys are the keys each type of upstream takes.
var upstreamKeys = func() map[string]map[string]bool {
	common := []string{"name", "type"}
	sending := append(common, "ca_file", "compression", "senders", "queue_size", "timeout", "initial_backoff", "max_backoff", "max_payload_bytes")
	set := func(keys ...string) map[string]bool {
		m := map[string]bool{}
		for _, k := range keys {
			m[k] = true
		}
		return m
	}
	return map[string]map[string]bool{
		"datadog":   set(append(sending, "url", "api_key", "raw_counts")...),
		"otlp":      set(append(sending, "endpoint", "insecure", "headers", "tenant_attribute", "tenant_header")...),
		"jsonlines": set(append(common, "path")...),
	}
}()

// durationKeys are the upstream keys holding durations.
var durationKeys = map[string]bool{"timeout": true, "initial_backoff": true, "max_backoff": true}

// checkKeys reports keys of u (as keys, decoded without a schema) that do
// not apply to its type, and durations written without a unit.
func checkKeys(u Upstream, keys map[string]any) error {
	allowed, ok := upstreamKeys[u.Type]
	if !ok {
		return fmt.Errorf("upstream %s: type %q is not datadog, otlp or jsonlines", u.Name, u.Type)
	}
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if !allowed[k] {
			errs = append(errs, fmt.Errorf("upstream %s: %s does not apply to type %s", u.Name, k, u.Type))
		}
		if _, isString := keys[k].(string); durationKeys[k] && !isString {
			errs = append(errs, fmt.Errorf("upstream %s: %s = %v has no unit: write a duration such as \"%vs\"", u.Name, k, keys[k], keys[k]))
		}
	}
	return errors.Join(errs...)
}

// LoadTenants reads a tenants file. Every string in it may name
// environment variables (see Expand).
func LoadTenants(path string, getenv func(string) string) ([]Tenant, error) {
	var f struct {
		Tenants []Tenant `toml:"tenant"`
	}
	if err := decodeFile(path, &f); err != nil {
		return nil, err
	}
	var errs []error
	for i := range f.Tenants {
		errs = append(errs, expandFields("tenant "+f.Tenants[i].ID, reflect.ValueOf(&f.Tenants[i]), getenv))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f.Tenants, nil
}

// ServiceTenants returns what the gRPC edge needs of the tenants.
func ServiceTenants(ts []Tenant) []service.TenantConfig {
	out := make([]service.TenantConfig, len(ts))
	for i, t := range ts {
		out[i] = t.TenantConfig
	}
	return out
}

// Routes returns the routes of the tenants that list their own upstreams.
func Routes(ts []Tenant) (map[string]upstream.TenantRoute, error) {
	out := map[string]upstream.TenantRoute{}
	for _, t := range ts {
		if len(t.Upstreams) == 0 {
			if len(t.Credentials) > 0 {
				return nil, fmt.Errorf("tenant %q has credentials but no upstreams list", t.ID)
			}
			continue
		}
		out[t.ID] = t.TenantRoute
	}
	return out, nil
}

// Shared is what every upstream takes from the command line.
type Shared struct {
	Histogram         upstream.HistogramConfig
	SketchPercentiles []float64
	Metrics           upstream.PipelineMetrics
	Log               *slog.Logger
	Stdout            io.Writer
	// Tracer, if set, traces every send attempt.
	Tracer trace.Tracer
	// InstanceID names this aggd among its replicas (service.instance.id
	// of OTLP aggregates).
	InstanceID string
	// SpoolDir, if set, keeps the payloads of every upstream with a send
	// queue on disk, in SpoolDir/<upstream>.queue, each holding at most
	// SpoolMaxBytes. Payloads a crash left there are sent again once the
	// upstream starts.
	SpoolDir      string
	SpoolMaxBytes int64
}

// spool opens the send queue on disk of upstream name; nil without
// SpoolDir.
func (sh Shared) spool(name string) (*upstream.Spool, error) {
	if sh.SpoolDir == "" {
		return nil, nil
	}
	return upstream.OpenSpoolIn(sh.SpoolDir, name, sh.SpoolMaxBytes)
}

// Build makes the upstream u describes. The closer releases what Build
// opened (a JSON-lines file).
func (u Upstream) Build(sh Shared) (upstream.Upstream, func() error, error) {
	noop := func() error { return nil }
	if u.Name == "" {
		return nil, nil, errors.New("an upstream has no name")
	}
	pc := upstream.DefaultPipelineConfig(u.Name)
	if u.Senders != 0 {
		pc.Senders = u.Senders
	}
	if u.QueueSize != 0 {
		pc.QueueSize = u.QueueSize
	}
	if u.Timeout != 0 {
		pc.Timeout = u.Timeout
	}
	if u.InitialBackoff != 0 {
		pc.InitialBackoff = u.InitialBackoff
	}
	if u.MaxBackoff != 0 {
		pc.MaxBackoff = u.MaxBackoff
	}
	pc.Tracer = sh.Tracer
	tlsCfg, err := u.tls()
	if err != nil {
		return nil, nil, err
	}
	switch u.Type {
	case "datadog":
		c := upstream.DatadogConfig{Pipeline: pc, URL: u.URL, APIKey: u.APIKey, Compression: upstream.Compression(cmp.Or(u.Compression, "zstd")),
			MaxUncompressed: u.MaxPayloadBytes, Histogram: sh.Histogram, RawCounts: u.RawCounts}
		if u.URL == "" {
			c.URL = "https://api.datadoghq.com"
		}
		if err := c.Validate(); err != nil {
			return nil, nil, err
		}
		if tlsCfg != nil {
			c.Client = &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, TLSClientConfig: tlsCfg,
				MaxIdleConnsPerHost: pc.Senders, IdleConnTimeout: 90 * time.Second, ForceAttemptHTTP2: true}}
		}
		if c.Pipeline.Spool, err = sh.spool(u.Name); err != nil {
			return nil, nil, err
		}
		return upstream.NewDatadog(c, sh.Metrics, sh.Log), noop, nil
	case "otlp":
		c := upstream.OTLPConfig{Pipeline: pc, Endpoint: u.Endpoint, Insecure: u.Insecure, Headers: u.Headers,
			TenantAttribute: cmp.Or(u.TenantAttribute, "aggd.tenant"), TenantHeader: u.TenantHeader,
			Compression: upstream.Compression(cmp.Or(u.Compression, "gzip")), MaxPayloadBytes: u.MaxPayloadBytes, Histogram: sh.Histogram,
			TLS: tlsCfg, InstanceID: sh.InstanceID}
		if err := c.Validate(); err != nil {
			return nil, nil, err
		}
		if c.Pipeline.Spool, err = sh.spool(u.Name); err != nil {
			return nil, nil, err
		}
		o, err := upstream.NewOTLP(c, sh.Metrics, sh.Log)
		if err != nil && c.Pipeline.Spool != nil {
			c.Pipeline.Spool.Close()
		}
		return o, noop, err
	case "jsonlines":
		w, closer := sh.Stdout, noop
		if p := cmp.Or(u.Path, "-"); p != "-" {
			f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
			if err != nil {
				return nil, nil, fmt.Errorf("upstream %s: %w", u.Name, err)
			}
			w, closer = f, f.Close
		}
		return upstream.NewJSONLines(u.Name, w, upstream.JSONLinesConfig{Histogram: sh.Histogram, SketchPercentiles: sh.SketchPercentiles}), closer, nil
	}
	return nil, nil, fmt.Errorf("upstream %s: type %q is not datadog, otlp or jsonlines", u.Name, u.Type)
}

// tls returns the TLS configuration of u's ca_file, or nil for the
// defaults.
func (u Upstream) tls() (*tls.Config, error) {
	if u.CAFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(u.CAFile)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("upstream %s: %s holds no PEM certificate", u.Name, u.CAFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

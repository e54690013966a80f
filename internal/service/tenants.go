package service

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/aggd/aggd/internal/window"
)

// DefaultTenant is the tenant of calls without x-tenant-id when
// authentication is off.
const DefaultTenant = "default"

// TenantConfig is what the gRPC edge knows of a tenant.
type TenantConfig struct {
	// ID names the tenant in flushed data.
	ID string `toml:"id"`
	// Tokens are the bearer tokens that authenticate as the tenant.
	Tokens []string `toml:"tokens"`
	// MaxContexts bounds the tenant's live contexts; zero means no bound.
	MaxContexts int64 `toml:"max_contexts"`
	// TenantLimits are the tenant's own limits; zero fields take the
	// server's.
	window.TenantLimits
}

func validateTenants(ts []TenantConfig) error {
	ids := map[string]bool{}
	tokens := map[string]bool{}
	for i, t := range ts {
		if err := validTenantID(t.ID); err != nil {
			return fmt.Errorf("tenant %d: %w", i, err)
		}
		if ids[t.ID] {
			return fmt.Errorf("tenant %q is listed twice", t.ID)
		}
		ids[t.ID] = true
		if l := t.TenantLimits; t.MaxContexts < 0 || l.SamplesPerSecond < 0 || l.EventsPerWindow < 0 || l.MaxTags < 0 || l.MaxNameLength < 0 || l.MaxTagLength < 0 || l.MaxHeldTraces < 0 {
			return fmt.Errorf("tenant %q: limits must not be negative", t.ID)
		}
		for _, tok := range t.Tokens {
			if len(tok) < 16 {
				return fmt.Errorf("tenant %q: tokens must be at least 16 characters", t.ID)
			}
			if tokens[tok] {
				return fmt.Errorf("tenant %q: a token is used twice", t.ID)
			}
			tokens[tok] = true
		}
	}
	return nil
}

func validTenantID(id string) error {
	if id == "" || len(id) > 64 {
		return errors.New("tenant id must be 1 to 64 characters")
	}
	for _, c := range []byte(id) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("tenant id %q may hold only letters, digits, '-', '_' and '.'", id)
		}
	}
	return nil
}

// Tenants maps calls to tenants. It is safe for concurrent use.
//
// With authentication on, a call's `authorization: Bearer <token>` must name
// a configured token; nothing else selects the tenant. With it off, the
// `x-tenant-id` header does, or DefaultTenant; tenants are then created on
// first use, up to a bound.
type Tenants struct {
	auth       bool
	maxTenants int

	mu      sync.RWMutex
	byID    map[string]*window.Tenant
	byToken map[[sha256.Size]byte]*window.Tenant
	buckets map[*window.Tenant]*tokenBucket // fixed after NewTenants
}

// tokenBucket meters a tenant's samples per second; the burst is one
// second's worth.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	tokens float64
	last   time.Time
}

// take returns how many of n samples arriving at now fit.
func (b *tokenBucket) take(n int, now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.rate, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	ok := min(n, int(b.tokens))
	b.tokens -= float64(ok)
	return ok
}

// admitSamples returns how many of n samples tenant tn may add now.
func (t *Tenants) admitSamples(tn *window.Tenant, n int, now time.Time) int {
	b := t.buckets[tn]
	if b == nil {
		return n
	}
	return b.take(n, now)
}

// TenantsConfig configures Tenants.
type TenantsConfig struct {
	// Tenants are the configured tenants (the tenants file).
	Tenants []TenantConfig
	// Auth turns authentication on: a call's bearer token selects its
	// tenant, one of Tenants.
	Auth bool
	// MaxTenants bounds the tenants created on demand when Auth is off.
	MaxTenants int
}

// Validate reports a tenant that is not valid or a negative bound.
func (c TenantsConfig) Validate() error {
	if c.MaxTenants < 0 {
		return errors.New("the tenant bound must not be negative")
	}
	return validateTenants(c.Tenants)
}

// NewTenants returns the tenants of cfg, or why cfg is not valid.
func NewTenants(cfg TenantsConfig) (*Tenants, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfgs, auth, maxTenants := cfg.Tenants, cfg.Auth, cfg.MaxTenants
	t := &Tenants{auth: auth, maxTenants: maxTenants, byID: map[string]*window.Tenant{}, byToken: map[[sha256.Size]byte]*window.Tenant{},
		buckets: map[*window.Tenant]*tokenBucket{}}
	for _, c := range cfgs {
		tn := window.NewTenant(c.ID)
		tn.MaxContexts.Store(c.MaxContexts)
		tn.Limits = c.TenantLimits
		t.byID[c.ID] = tn
		if c.SamplesPerSecond > 0 {
			t.buckets[tn] = &tokenBucket{rate: c.SamplesPerSecond, tokens: c.SamplesPerSecond}
		}
		for _, tok := range c.Tokens {
			// Tokens are looked up by digest, so the lookup's timing says
			// nothing about how much of a guessed token is right.
			t.byToken[sha256.Sum256([]byte(tok))] = tn
		}
	}
	return t, nil
}

// List returns every known tenant, sorted by id.
func (t *Tenants) List() []*window.Tenant {
	t.mu.RLock()
	out := make([]*window.Tenant, 0, len(t.byID))
	for _, tn := range t.byID {
		out = append(out, tn)
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b *window.Tenant) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Get returns the tenant id, for edges that carry no credentials (a
// DogStatsD listener): a configured tenant, or with authentication off a
// tenant created on first use.
func (t *Tenants) Get(id string) (*window.Tenant, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tn := t.byID[id]; tn != nil {
		return tn, nil
	}
	if t.auth {
		return nil, fmt.Errorf("tenant %q is not in the tenants file", id)
	}
	if err := validTenantID(id); err != nil {
		return nil, err
	}
	tn := window.NewTenant(id)
	t.byID[id] = tn
	return tn, nil
}

// Resolve returns the tenant of the call whose context is ctx, or a status
// error: Unauthenticated, InvalidArgument or ResourceExhausted.
func (t *Tenants) Resolve(ctx context.Context) (*window.Tenant, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if t.auth {
		v := md.Get("authorization")
		if len(v) != 1 {
			return nil, status.Error(codes.Unauthenticated, "authorization: Bearer <token> is required")
		}
		tok, ok := strings.CutPrefix(v[0], "Bearer ")
		if !ok {
			return nil, status.Error(codes.Unauthenticated, "authorization must be Bearer <token>")
		}
		if tn := t.byToken[sha256.Sum256([]byte(tok))]; tn != nil {
			return tn, nil
		}
		return nil, status.Error(codes.Unauthenticated, "unknown token")
	}
	id := DefaultTenant
	if v := md.Get("x-tenant-id"); len(v) > 0 {
		id = v[0]
	}
	t.mu.RLock()
	tn := t.byID[id]
	t.mu.RUnlock()
	if tn != nil {
		return tn, nil
	}
	if err := validTenantID(id); err != nil {
		return nil, status.Error(codes.InvalidArgument, "x-tenant-id: "+err.Error())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if tn := t.byID[id]; tn != nil {
		return tn, nil
	}
	if len(t.byID) >= t.maxTenants {
		return nil, status.Errorf(codes.ResourceExhausted, "tenant_limit: the server holds %d tenants, its limit", len(t.byID))
	}
	tn = window.NewTenant(id)
	t.byID[id] = tn
	return tn, nil
}

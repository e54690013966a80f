package service

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
	"github.com/aggd/aggd/internal/rules"
	"github.com/aggd/aggd/internal/upstream"
	"github.com/aggd/aggd/internal/window"
)

// ContextRanker ranks contexts by sample count: the aggregator.
type ContextRanker interface {
	TopContexts(t *window.Tenant, n int) []window.ContextStat
}

// QueueInfo is a send queue's state as the admin service reports it.
type QueueInfo struct {
	Upstream        string
	Depth, Capacity int
	Bytes           int64
}

// AdminConfig gives the admin service what it reports.
type AdminConfig struct {
	// Token, if set, is required as `authorization: Bearer <token>`. With
	// authentication on and no token, the admin service refuses every call.
	Token string
	// Contexts ranks contexts.
	Contexts ContextRanker
	// Queues returns the send queues.
	Queues func() []QueueInfo
	// Config returns the effective configuration as JSON, secrets redacted.
	Config func() string
	// Rules returns the aggregation rules in force.
	Rules func() []RuleInfo
}

// RuleInfo is an aggregation rule as the admin service reports it.
type RuleInfo struct {
	Name, Category   string
	Outputs          []string
	Matched, Emitted int64
	// Corrections and TooLate count late items' effects (see the rules
	// engine's Counters).
	Corrections, TooLate int64
}

// RouterQueues is an AdminConfig.Queues reporting r's send queues.
func RouterQueues(r *upstream.Router) func() []QueueInfo {
	return func() []QueueInfo {
		var out []QueueInfo
		for _, q := range r.Queues() {
			out = append(out, QueueInfo{Upstream: q.Upstream, Depth: q.Depth, Capacity: q.Capacity, Bytes: q.Bytes})
		}
		return out
	}
}

// EngineRules is an AdminConfig.Rules reporting the rules e holds and
// their counters; a nil e holds none.
func EngineRules(e *rules.Engine) func() []RuleInfo {
	return func() []RuleInfo {
		if e == nil {
			return nil
		}
		var out []RuleInfo
		for _, r := range e.Rules().Rules {
			c := e.Counters(r.Name)
			ri := RuleInfo{Name: r.Name, Category: r.Category, Matched: c.Matched.Load(), Emitted: c.Outputs.Load(),
				Corrections: c.Corrections.Load(), TooLate: c.TooLate.Load()}
			for _, a := range r.Algorithms {
				ri.Outputs = append(ri.Outputs, a.Output)
			}
			out = append(out, ri)
		}
		return out
	}
}

type admin struct {
	aggdv1.UnimplementedAdminServiceServer
	s   *Server
	cfg AdminConfig
}

// RegisterAdmin registers the admin service on g.
func (s *Server) RegisterAdmin(g *grpc.Server, cfg AdminConfig) {
	aggdv1.RegisterAdminServiceServer(g, &admin{s: s, cfg: cfg})
}

// allowed checks the admin token.
func (a *admin) allowed(ctx context.Context) error {
	if a.cfg.Token == "" {
		if a.s.tenants.auth {
			return status.Error(codes.PermissionDenied, "the admin service needs --admin-token when authentication is on")
		}
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("authorization")
	if len(v) == 1 {
		if tok, ok := strings.CutPrefix(v[0], "Bearer "); ok {
			want, got := sha256.Sum256([]byte(a.cfg.Token)), sha256.Sum256([]byte(tok))
			if subtle.ConstantTimeCompare(want[:], got[:]) == 1 {
				return nil
			}
		}
	}
	return status.Error(codes.Unauthenticated, "authorization: Bearer <admin token> is required")
}

func (a *admin) ListTenants(ctx context.Context, _ *aggdv1.ListTenantsRequest) (*aggdv1.ListTenantsResponse, error) {
	if err := a.allowed(ctx); err != nil {
		return nil, err
	}
	resp := &aggdv1.ListTenantsResponse{}
	for _, t := range a.s.tenants.List() {
		ti := &aggdv1.TenantInfo{Id: t.ID, Contexts: t.Contexts.Load(), MaxContexts: t.MaxContexts.Load(), Accepted: t.Accepted.Load(), Rejected: map[string]uint64{}}
		for r := window.Reason(1); r < window.NumReasons; r++ {
			if n := t.Rejected[r].Load(); n > 0 {
				ti.Rejected[r.String()] = n
			}
		}
		resp.Tenants = append(resp.Tenants, ti)
	}
	return resp, nil
}

func (a *admin) TopContexts(ctx context.Context, req *aggdv1.TopContextsRequest) (*aggdv1.TopContextsResponse, error) {
	if err := a.allowed(ctx); err != nil {
		return nil, err
	}
	n := int(req.Limit)
	if n == 0 {
		n = 20
	}
	if n > 1000 {
		return nil, status.Error(codes.InvalidArgument, "limit is at most 1000")
	}
	var t *window.Tenant
	if req.Tenant != "" {
		for _, x := range a.s.tenants.List() {
			if x.ID == req.Tenant {
				t = x
			}
		}
		if t == nil {
			return nil, status.Errorf(codes.NotFound, "no tenant %q", req.Tenant)
		}
	}
	resp := &aggdv1.TopContextsResponse{}
	for _, c := range a.cfg.Contexts.TopContexts(t, n) {
		name, host, tags := window.SplitKey(c.Key, nil)
		resp.Contexts = append(resp.Contexts, &aggdv1.ContextInfo{Tenant: c.Tenant.ID, Name: name, Host: host, Tags: tags, Samples: c.Samples})
	}
	return resp, nil
}

func (a *admin) GetQueues(ctx context.Context, _ *aggdv1.GetQueuesRequest) (*aggdv1.GetQueuesResponse, error) {
	if err := a.allowed(ctx); err != nil {
		return nil, err
	}
	resp := &aggdv1.GetQueuesResponse{}
	if a.cfg.Queues != nil {
		for _, q := range a.cfg.Queues() {
			resp.Queues = append(resp.Queues, &aggdv1.QueueInfo{Upstream: q.Upstream, Depth: uint32(q.Depth), Capacity: uint32(q.Capacity), Bytes: uint64(q.Bytes)})
		}
	}
	return resp, nil
}

func (a *admin) GetConfig(ctx context.Context, _ *aggdv1.GetConfigRequest) (*aggdv1.GetConfigResponse, error) {
	if err := a.allowed(ctx); err != nil {
		return nil, err
	}
	resp := &aggdv1.GetConfigResponse{}
	if a.cfg.Config != nil {
		resp.Json = a.cfg.Config()
	}
	return resp, nil
}

func (a *admin) ListRules(ctx context.Context, _ *aggdv1.ListRulesRequest) (*aggdv1.ListRulesResponse, error) {
	if err := a.allowed(ctx); err != nil {
		return nil, err
	}
	resp := &aggdv1.ListRulesResponse{}
	if a.cfg.Rules != nil {
		for _, r := range a.cfg.Rules() {
			resp.Rules = append(resp.Rules, &aggdv1.RuleInfo{Name: r.Name, Category: r.Category, Outputs: r.Outputs, Matched: r.Matched, Emitted: r.Emitted,
				Corrections: r.Corrections, TooLate: r.TooLate})
		}
	}
	return resp, nil
}

// Package deploy holds the checks of the Helm chart and the Kubernetes
// manifests. It is a module of its own so that Helm and the Kubernetes API
// types stay out of aggd's dependencies.
package deploy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the rendered example")

const chartDir = "helm/aggd"

// kubeVersion is the oldest Kubernetes the chart supports (the preStop
// sleep action is on by default from 1.30).
var kubeVersion = &chartutil.KubeVersion{Version: "v1.30.0", Major: "1", Minor: "30"}

// scenarios are value sets the chart must render into valid objects.
var scenarios = map[string]string{
	"defaults": ``,
	// The rendered example cmd/aggd's tests start aggd with.
	"example": `
upstreams:
  - name: datadog
    type: datadog
    url: https://api.datadoghq.com
    api_key: ${DD_API_KEY}
    timeout: 10s
  - name: collector
    type: otlp
    endpoint: otel-collector.observability.svc:4317
    insecure: true
    headers:
      X-Scope-OrgID: aggd
defaultUpstreams: [datadog]
secretEnv:
  DD_API_KEY: example-datadog-key
  SHOP_TOKEN: example-shop-token
adminToken: example-admin-token
dogstatsd:
  tenant: shop
tenants: |
  [[tenant]]
  id = "shop"
  tokens = ["${SHOP_TOKEN}"]
  max_contexts = 500000
  upstreams = ["datadog", "collector"]
sampling: |
  version = 2
  [trace]
  data_ttl = "1m"
  group_key = "trace_id"
  [[trace.sampling_pipeline]]
  name = "keep-error-trace"
  type = "condition"
  condition = '{ status = "error" }'
  action = "keep"
cluster:
  enabled: true
  peerToken: example-peer-token
serviceMonitor:
  enabled: true
prometheusRule:
  enabled: true
grafanaDashboard:
  enabled: true
networkPolicy:
  enabled: true
  metricsFrom:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: monitoring
  egress:
    - ports:
        - port: 443
          protocol: TCP
        - port: 4317
          protocol: TCP
        - port: 53
          protocol: UDP
`,
	"fixed replicas on an emptyDir": `
autoscaling: {enabled: false}
replicaCount: 3
persistence: {enabled: false}
dogstatsd: {enabled: false}
otlpHttp: {enabled: false}
topologySpread: {enabled: false}
memoryBudget: {enabled: false}
resources: {requests: {cpu: 500m, memory: 512Mi, ephemeral-storage: 5Gi}}
`,
	"existing secret": `
existingSecret: aggd-keys
dogstatsd: {tenant: shop}
tenants: |
  [[tenant]]
  id = "shop"
  tokens = ["${SHOP_TOKEN}"]
`,
}

// refusals are value sets the chart must refuse, with the reason.
var refusals = map[string]struct{ values, err string }{
	"tenants without admin token":   {"dogstatsd: {enabled: false}\ntenants: |\n  [[tenant]]\n  id = \"a\"\n", "adminToken"},
	"cluster without a peer token":  {"cluster: {enabled: true}", "cluster.peerToken"},
	"an empty secret":               {"secretEnv: {DD_API_KEY: ''}", "secretEnv.DD_API_KEY is empty"},
	"DogStatsD tenant not a tenant": {"adminToken: x\ntenants: |\n  [[tenant]]\n  id = \"shop\"\n", `dogstatsd.tenant "default" is not a tenant`},
	"budget without a limit":        {"resources: {limits: null}", "resources.limits.memory"},
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// render renders the chart with values (YAML over values.yaml) as helm
// template does, returning the manifests by template path.
func render(t *testing.T, c *chart.Chart, values string) (map[string]string, error) {
	t.Helper()
	vals, err := chartutil.ReadValues([]byte(values))
	if err != nil {
		t.Fatal(err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kubeVersion
	rv, err := chartutil.ToRenderValues(c, vals, chartutil.ReleaseOptions{Name: "aggd", Namespace: "observability", IsInstall: true, Revision: 1}, caps)
	if err != nil {
		t.Fatal(err)
	}
	return engine.Render(c, rv)
}

// objects is a rendered chart decoded into the Kubernetes API's types.
type objects struct {
	StatefulSet    *appsv1.StatefulSet
	Services       []*corev1.Service
	ConfigMap      *corev1.ConfigMap // aggd's files
	Dashboard      *corev1.ConfigMap
	Secret         *corev1.Secret
	HPA            *autoscalingv2.HorizontalPodAutoscaler
	PDB            *policyv1.PodDisruptionBudget
	NetworkPolicy  *networkingv1.NetworkPolicy
	ServiceMonitor *monitoringv1.ServiceMonitor
	PrometheusRule *monitoringv1.PrometheusRule
	count          int
}

// decodeStrict decodes one manifest into its kind's Go type, refusing any
// field the type does not have (what kubeconform -strict refuses).
func decodeStrict(doc []byte, o *objects) error {
	var meta struct{ APIVersion, Kind string }
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return err
	}
	var into any
	switch meta.APIVersion + " " + meta.Kind {
	case "apps/v1 StatefulSet":
		o.StatefulSet = new(appsv1.StatefulSet)
		into = o.StatefulSet
	case "v1 Service":
		s := new(corev1.Service)
		o.Services = append(o.Services, s)
		into = s
	case "v1 ConfigMap":
		cm := new(corev1.ConfigMap)
		if err := yaml.UnmarshalStrict(doc, cm); err != nil {
			return err
		}
		if strings.HasSuffix(cm.Name, "-dashboard") {
			o.Dashboard = cm
		} else {
			o.ConfigMap = cm
		}
		o.count++
		return nil
	case "v1 Secret":
		o.Secret = new(corev1.Secret)
		into = o.Secret
	case "autoscaling/v2 HorizontalPodAutoscaler":
		o.HPA = new(autoscalingv2.HorizontalPodAutoscaler)
		into = o.HPA
	case "policy/v1 PodDisruptionBudget":
		o.PDB = new(policyv1.PodDisruptionBudget)
		into = o.PDB
	case "networking.k8s.io/v1 NetworkPolicy":
		o.NetworkPolicy = new(networkingv1.NetworkPolicy)
		into = o.NetworkPolicy
	case "monitoring.coreos.com/v1 PrometheusRule":
		o.PrometheusRule = new(monitoringv1.PrometheusRule)
		into = o.PrometheusRule
	case "monitoring.coreos.com/v1 ServiceMonitor":
		o.ServiceMonitor = new(monitoringv1.ServiceMonitor)
		into = o.ServiceMonitor
	default:
		return fmt.Errorf("unexpected object %s %s", meta.APIVersion, meta.Kind)
	}
	o.count++
	return yaml.UnmarshalStrict(doc, into)
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// decodeAll decodes every manifest of a multi-document text.
func decodeAll(text string) (*objects, error) {
	o := &objects{}
	for _, doc := range docSep.Split(text, -1) {
		if len(bytes.TrimSpace(stripComments([]byte(doc)))) == 0 {
			continue
		}
		if err := decodeStrict([]byte(doc), o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

func stripComments(b []byte) []byte {
	return regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAll(b, nil)
}

// manifests joins rendered templates in name order, as helm template
// prints them (NOTES.txt aside).
func manifests(out map[string]string) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(out)) {
		if strings.HasSuffix(name, "NOTES.txt") || strings.TrimSpace(out[name]) == "" {
			continue
		}
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", name, strings.TrimSpace(out[name]))
	}
	return b.String()
}

func TestHelmLint(t *testing.T) {
	for name, values := range scenarios {
		t.Run(name, func(t *testing.T) {
			vals, err := chartutil.ReadValues([]byte(values))
			if err != nil {
				t.Fatal(err)
			}
			l := lint.AllWithKubeVersion(chartDir, vals, "observability", kubeVersion)
			// As helm lint --strict: warnings fail too.
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Error(m)
				}
			}
		})
	}
}

func TestHelmTemplate(t *testing.T) {
	c := loadChart(t)
	for name, values := range scenarios {
		t.Run(name, func(t *testing.T) {
			out, err := render(t, c, values)
			if err != nil {
				t.Fatal(err)
			}
			text := manifests(out)
			o, err := decodeAll(text)
			if err != nil {
				t.Fatal(err)
			}
			vals, _ := chartutil.ReadValues([]byte(values))
			checkWorkload(t, c.Metadata.AppVersion, o, vals, true)
			if name == "example" {
				golden := filepath.Join("testdata", "helm-example.yaml")
				if *update {
					os.WriteFile(golden, []byte(text), 0o644)
				}
				want, err := os.ReadFile(golden)
				if err != nil || string(want) != text {
					t.Errorf("%s is not what the chart renders (go test -run TestHelmTemplate -update)", golden)
				}
			}
		})
	}
}

func TestHelmRefusals(t *testing.T) {
	c := loadChart(t)
	for name, r := range refusals {
		t.Run(name, func(t *testing.T) {
			_, err := render(t, c, r.values)
			if err == nil || !strings.Contains(err.Error(), r.err) {
				t.Errorf("rendered with %q: error %v, want one naming %q", r.values, err, r.err)
			}
		})
	}
}

// TestHelmRollsPods checks that a change of configuration or of a secret
// changes the pod template, so the StatefulSet rolls its pods.
func TestHelmRollsPods(t *testing.T) {
	c := loadChart(t)
	annotations := func(values string) map[string]string {
		out, err := render(t, c, values)
		if err != nil {
			t.Fatal(err)
		}
		o, err := decodeAll(manifests(out))
		if err != nil {
			t.Fatal(err)
		}
		return o.StatefulSet.Spec.Template.Annotations
	}
	base := annotations("")
	for _, change := range []string{
		"upstreams: [{name: out, type: jsonlines, path: '-'}]\ndefaultUpstreams: [out]",
		"secretEnv: {DD_API_KEY: another}",
		"sampling: 'version = 2'",
	} {
		if got := annotations(change); maps.Equal(got, base) {
			t.Errorf("%q leaves the pod template's annotations %v", change, got)
		}
	}
}

// checkWorkload checks the objects that run aggd; vals are the values they
// were rendered with (nil: the defaults); hashed says whether the pod
// template must carry the checksums of the ConfigMap and Secret.
func checkWorkload(t *testing.T, appVersion string, o *objects, vals chartutil.Values, hashed bool) {
	t.Helper()
	sts := o.StatefulSet
	if sts == nil || o.ConfigMap == nil || len(o.Services) != 2 {
		t.Fatalf("want a StatefulSet, a ConfigMap and two Services, have %+v", o)
	}
	pod := sts.Spec.Template
	ct := pod.Spec.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range ct.Env {
		env[e.Name] = e
	}
	autoscaled := o.HPA != nil
	if autoscaled == (sts.Spec.Replicas != nil) {
		t.Errorf("HPA %v and StatefulSet replicas %v: exactly one of them sets the count", autoscaled, sts.Spec.Replicas)
	}
	if autoscaled && (o.HPA.Spec.ScaleTargetRef.Kind != "StatefulSet" || o.HPA.Spec.ScaleTargetRef.Name != sts.Name) {
		t.Errorf("HPA targets %+v", o.HPA.Spec.ScaleTargetRef)
	}
	if o.PDB == nil || o.PDB.Spec.MaxUnavailable == nil || o.PDB.Spec.MaxUnavailable.IntValue() != 1 || o.PDB.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget %+v is not maxUnavailable 1", o.PDB)
	}
	if tag := ct.Image[strings.LastIndex(ct.Image, ":")+1:]; tag != appVersion {
		t.Errorf("image %s is not the chart's appVersion %s", ct.Image, appVersion)
	}
	// Selectors of every object match the pod.
	selectors := map[string]map[string]string{"StatefulSet": sts.Spec.Selector.MatchLabels}
	if o.PDB != nil {
		selectors["PodDisruptionBudget"] = o.PDB.Spec.Selector.MatchLabels
	}
	for _, s := range o.Services {
		selectors["Service "+s.Name] = s.Spec.Selector
	}
	if o.NetworkPolicy != nil {
		selectors["NetworkPolicy"] = o.NetworkPolicy.Spec.PodSelector.MatchLabels
	}
	for _, ts := range pod.Spec.TopologySpreadConstraints {
		selectors["topology spread "+ts.TopologyKey] = ts.LabelSelector.MatchLabels
	}
	for what, sel := range selectors {
		if len(sel) == 0 {
			t.Errorf("%s has an empty selector", what)
		}
		for k, v := range sel {
			if pod.Labels[k] != v {
				t.Errorf("%s selects %s=%s, the pod has %q", what, k, v, pod.Labels[k])
			}
		}
	}
	if spread, _ := vals.PathValue("topologySpread.enabled"); spread == nil && len(pod.Spec.TopologySpreadConstraints) != 2 {
		t.Errorf("topology spread %+v, want zone and host", pod.Spec.TopologySpreadConstraints)
	}
	// Ports: every Service and NetworkPolicy port names a container port.
	ports := map[string]corev1.ContainerPort{}
	for _, p := range ct.Ports {
		ports[p.Name] = p
	}
	for _, s := range o.Services {
		for _, p := range s.Spec.Ports {
			cp, ok := ports[p.TargetPort.StrVal]
			if !ok || cp.Protocol != p.Protocol {
				t.Errorf("Service %s port %s targets %q, not a %s container port", s.Name, p.Name, p.TargetPort.StrVal, p.Protocol)
			}
		}
	}
	if np := o.NetworkPolicy; np != nil {
		for _, r := range np.Spec.Ingress {
			for _, p := range r.Ports {
				if cp, ok := ports[p.Port.StrVal]; !ok || cp.Protocol != *p.Protocol {
					t.Errorf("NetworkPolicy admits port %v, not a container port", p.Port)
				}
			}
		}
		// Restricted egress must let forwards out to the other replicas.
		if peer, ok := ports["peer"]; ok && slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
			out := slices.ContainsFunc(np.Spec.Egress, func(r networkingv1.NetworkPolicyEgressRule) bool {
				return len(r.To) > 0 && r.To[0].PodSelector != nil && slices.ContainsFunc(r.Ports, func(p networkingv1.NetworkPolicyPort) bool {
					return p.Port != nil && p.Port.IntVal == peer.ContainerPort
				})
			})
			if !out {
				t.Errorf("NetworkPolicy restricts egress without letting the peer port %d out to aggd's pods", peer.ContainerPort)
			}
		}
	}
	if sm := o.ServiceMonitor; sm != nil {
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "admin" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("ServiceMonitor endpoints %+v", sm.Spec.Endpoints)
		}
		scraped := 0
		for _, s := range o.Services {
			if slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "admin" }) {
				scraped++
			}
		}
		if scraped != 1 {
			t.Errorf("%d Services have the admin port: each pod would be scraped %d times", scraped, scraped)
		}
	}
	if hl := o.Services[1]; hl.Spec.ClusterIP != "None" || sts.Spec.ServiceName != hl.Name {
		t.Errorf("StatefulSet serviceName %q is not the headless Service %s", sts.Spec.ServiceName, hl.Name)
	}
	// Shutdown: the preStop sleep and aggd's shutdown fit in the grace
	// period.
	shutdown, err := time.ParseDuration(env["AGGD_SHUTDOWN_TIMEOUT"].Value)
	if err != nil {
		t.Fatal(err)
	}
	ps := ct.Lifecycle.PreStop
	if ps == nil || ps.Sleep == nil || ps.Sleep.Seconds < 1 {
		t.Fatalf("no preStop sleep: %+v", ps)
	}
	if grace := time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second; grace <= time.Duration(ps.Sleep.Seconds)*time.Second+shutdown+5*time.Second {
		t.Errorf("terminationGracePeriodSeconds %v is not comfortably above the preStop sleep %ds plus --shutdown-timeout %v", grace, ps.Sleep.Seconds, shutdown)
	}
	// The memory budget is the container's limit, through the downward
	// API, for aggd and for the Go runtime.
	if budget, _ := vals.PathValue("memoryBudget.enabled"); budget == nil {
		lim := ct.Resources.Limits[corev1.ResourceMemory]
		for _, name := range []string{"AGGD_MEMORY_LIMIT", "GOMEMLIMIT"} {
			e := env[name]
			if e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil || e.ValueFrom.ResourceFieldRef.Resource != "limits.memory" ||
				e.ValueFrom.ResourceFieldRef.ContainerName != ct.Name || !(e.ValueFrom.ResourceFieldRef.Divisor.IsZero() || e.ValueFrom.ResourceFieldRef.Divisor.Cmp(resource.MustParse("1")) == 0) {
				t.Errorf("%s is %+v, not the container's memory limit %s in bytes", name, e, lim.String())
			}
		}
	}
	if _, ok := ct.Resources.Requests[corev1.ResourceEphemeralStorage]; !ok {
		t.Error("no ephemeral-storage request")
	}
	// The write-ahead log is on the claim, or on an emptyDir whose size
	// the ephemeral-storage request covers.
	var walMount *corev1.VolumeMount
	for i, m := range ct.VolumeMounts {
		if m.MountPath == env["AGGD_WAL_DIR"].Value {
			walMount = &ct.VolumeMounts[i]
		}
	}
	if walMount == nil {
		t.Fatalf("--wal-dir %q is not mounted", env["AGGD_WAL_DIR"].Value)
	}
	claimed := slices.ContainsFunc(sts.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == walMount.Name })
	if persist, _ := vals.PathValue("persistence.enabled"); persist == nil {
		if !claimed || sts.Spec.PersistentVolumeClaimRetentionPolicy == nil || sts.Spec.PersistentVolumeClaimRetentionPolicy.WhenScaled != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
			t.Errorf("--wal-dir is not on a claim kept when scaled down")
		}
	} else {
		for _, v := range pod.Spec.Volumes {
			if v.Name == walMount.Name && (v.EmptyDir == nil || v.EmptyDir.SizeLimit.Cmp(ct.Resources.Requests[corev1.ResourceEphemeralStorage]) > 0) {
				t.Errorf("--wal-dir's emptyDir %+v is larger than the ephemeral-storage request", v.EmptyDir)
			}
		}
	}
	// Config and secret changes roll the pods.
	if hashed && pod.Annotations["checksum/config"] == "" || hashed && (o.Secret != nil) != (pod.Annotations["checksum/secret"] != "") {
		t.Errorf("pod annotations %v lack the checksums of the ConfigMap and Secret", pod.Annotations)
	}
	secret := ct.EnvFrom[0].SecretRef.Name
	if o.Secret != nil && o.Secret.Name != secret {
		t.Errorf("envFrom names Secret %s, the chart makes %s", secret, o.Secret.Name)
	}
}

// TestHelmMonitoring checks that the chart's PrometheusRule holds the
// rules promtool tests, and its dashboard ConfigMap the dashboard.
func TestHelmMonitoring(t *testing.T) {
	out, err := render(t, loadChart(t), scenarios["example"])
	if err != nil {
		t.Fatal(err)
	}
	o, err := decodeAll(manifests(out))
	if err != nil {
		t.Fatal(err)
	}
	if o.PrometheusRule == nil || o.Dashboard == nil {
		t.Fatal("no PrometheusRule or dashboard ConfigMap")
	}
	data, err := os.ReadFile(filepath.Join(chartDir, "files/aggd-alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var file monitoringv1.PrometheusRuleSpec
	if err := yaml.UnmarshalStrict(data, &file); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(o.PrometheusRule.Spec)
	want, _ := json.Marshal(file)
	if len(file.Groups) == 0 || len(file.Groups[0].Rules) < 10 || string(got) != string(want) {
		t.Errorf("the PrometheusRule's spec\n%s\nis not files/aggd-alerts.yaml\n%s", got, want)
	}
	dash, err := os.ReadFile(filepath.Join(chartDir, "files/grafana-aggd.json"))
	if err != nil {
		t.Fatal(err)
	}
	if o.Dashboard.Data["aggd.json"] != string(dash) || !json.Valid(dash) || o.Dashboard.Labels["grafana_dashboard"] != "1" {
		t.Errorf("the dashboard ConfigMap %s does not hold files/grafana-aggd.json with the sidecar's label", o.Dashboard.Name)
	}
}

package deploy

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const kustomizeDir = "kubernetes"

// kustomization is the part of kustomization.yaml the test reads; the
// strict decoding refuses anything else, so a key this test does not
// check cannot slip in.
type kustomization struct {
	APIVersion         string   `json:"apiVersion"`
	Kind               string   `json:"kind"`
	Resources          []string `json:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `json:"name"`
		Files []string `json:"files"`
	} `json:"configMapGenerator"`
	SecretGenerator []struct {
		Name string   `json:"name"`
		Envs []string `json:"envs"`
	} `json:"secretGenerator"`
	GeneratorOptions struct {
		Labels map[string]string `json:"labels"`
	} `json:"generatorOptions"`
}

// loadKustomization decodes the resources strictly and builds the objects
// its generators make (without their name hashes).
func loadKustomization(t *testing.T) *objects {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(kustomizeDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, r := range k.Resources {
		data, err := os.ReadFile(filepath.Join(kustomizeDir, r))
		if err != nil {
			t.Fatal(err)
		}
		all.WriteString("---\n")
		all.Write(data)
		all.WriteString("\n")
	}
	o, err := decodeAll(all.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(k.ConfigMapGenerator) != 1 || len(k.SecretGenerator) != 1 {
		t.Fatalf("want one ConfigMap and one Secret generator: %+v", k)
	}
	g := k.ConfigMapGenerator[0]
	o.ConfigMap = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: g.Name}, Data: map[string]string{}}
	for _, f := range g.Files {
		text, err := os.ReadFile(filepath.Join(kustomizeDir, f))
		if err != nil {
			t.Fatal(err)
		}
		o.ConfigMap.Data[filepath.Base(f)] = string(text)
	}
	s := k.SecretGenerator[0]
	o.Secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.Name}, StringData: map[string]string{}}
	for _, f := range s.Envs {
		text, err := os.ReadFile(filepath.Join(kustomizeDir, f))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(text))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			name, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is not NAME=value", f, line)
			}
			o.Secret.StringData[name] = v
		}
	}
	return o
}

func TestKustomizeManifests(t *testing.T) {
	o := loadKustomization(t)
	c := loadChart(t)
	checkWorkload(t, c.Metadata.AppVersion, o, nil, false)
	// The pod mounts the generated ConfigMap and takes the generated
	// Secret's variables, names kustomize rewrites with their hashes.
	pod := o.StatefulSet.Spec.Template.Spec
	mounted := false
	for _, v := range pod.Volumes {
		mounted = mounted || (v.ConfigMap != nil && v.ConfigMap.Name == o.ConfigMap.Name)
	}
	if !mounted {
		t.Errorf("no volume mounts the generated ConfigMap %s", o.ConfigMap.Name)
	}
	if _, ok := o.Secret.StringData["AGGD_ADMIN_TOKEN"]; !ok {
		t.Error("the Secret has no AGGD_ADMIN_TOKEN")
	}
}

// TestStrictDecoding checks that the decoding refuses what kubeconform
// -strict refuses: a field the schema does not have, and a wrong type.
func TestStrictDecoding(t *testing.T) {
	for _, doc := range []string{
		"apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: a}\nspec: {maxUnavailabe: 1}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: grpc}]}\n",
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\n",
	} {
		if _, err := decodeAll(doc); err == nil {
			t.Errorf("decoded %q", doc)
		}
	}
}

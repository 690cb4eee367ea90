package kube

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/flannel-go/flannel/internal/lease"
)

func fakeSource(t *testing.T, objs ...runtime.Object) (*Source, *fake.Clientset) {
	t.Helper()
	c := fake.NewClientset(objs...)
	s, err := New(context.Background(), Options{Client: c, NodeName: "n1", NetConfPath: filepath.Join(t.TempDir(), "absent.json")})
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

// TestAcquireSendsOnePatch checks what goes over the wire: one GET, one
// strategic-merge patch of nodes/n1/status with exactly upstream's values,
// and nothing at all the second time.
func TestAcquireSendsOnePatch(t *testing.T) {
	s, c := fakeSource(t, node("n1", []string{"10.244.1.0/24"}, nil))
	nc := mustConf(t, confV4)
	attrs := lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "host-gw"}
	l, err := s.Acquire(context.Background(), nc, attrs, lease.Prev{})
	if err != nil || l.Subnet.String() != "10.244.1.0/24" {
		t.Fatalf("Acquire = %v, %v", l, err)
	}
	var patches []k8stesting.PatchAction
	for _, a := range c.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			patches = append(patches, p)
		}
	}
	want := `{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null",` +
		`"flannel.alpha.coreos.com/backend-type":"host-gw","flannel.alpha.coreos.com/kube-subnet-manager":"true",` +
		`"flannel.alpha.coreos.com/public-ip":"192.0.2.1"}}}`
	if len(patches) != 1 || patches[0].GetSubresource() != "status" || string(patches[0].GetPatch()) != want {
		t.Fatalf("patches = %v", patches)
	}
	c.ClearActions()
	if _, err := s.Acquire(context.Background(), nc, attrs, lease.Prev{}); err != nil {
		t.Fatal(err)
	}
	for _, a := range c.Actions() {
		if a.GetVerb() != "get" {
			t.Errorf("second Acquire sent %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
}

func TestConfigMissing(t *testing.T) {
	s, _ := fakeSource(t)
	_, err := s.Config(context.Background())
	if !errors.Is(err, lease.ErrNoConfig) || !strings.Contains(err.Error(), "absent.json") {
		t.Fatalf("Config: %v, want ErrNoConfig naming the file", err)
	}
}

func TestNodeNameFromEnv(t *testing.T) {
	c := fake.NewClientset()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if n, err := nodeName(context.Background(), coreV1{c.CoreV1()}, env(map[string]string{"NODE_NAME": "x", "POD_NAME": "p"})); n != "x" || err != nil {
		t.Errorf("NODE_NAME: %q %v", n, err)
	}
	if _, err := nodeName(context.Background(), coreV1{c.CoreV1()}, env(map[string]string{"POD_NAME": "p"})); err == nil || !strings.Contains(err.Error(), "POD_NAMESPACE") {
		t.Errorf("POD_NAME alone: %v", err)
	}
	if _, err := nodeName(context.Background(), coreV1{c.CoreV1()}, env(map[string]string{"POD_NAME": "p", "POD_NAMESPACE": "kube-flannel"})); err == nil || !strings.Contains(err.Error(), "kube-flannel/p") {
		t.Errorf("absent pod: %v", err)
	}
}

func TestRESTConfigAsksForProtobuf(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	const y = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`
	if err := os.WriteFile(kc, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := RESTConfig("", kc)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ContentType != "application/vnd.kubernetes.protobuf" || !strings.HasPrefix(cfg.AcceptContentTypes, "application/vnd.kubernetes.protobuf") {
		t.Errorf("content types %q / %q", cfg.ContentType, cfg.AcceptContentTypes)
	}
	// --kube-api-url overrides the kubeconfig's server, as upstream.
	if cfg, err = RESTConfig("https://192.0.2.1:6443", kc); err != nil || cfg.Host != "https://192.0.2.1:6443" {
		t.Errorf("with --kube-api-url: %v %v", cfg, err)
	}
}

// Package kubetest gives tests a real kube-apiserver (package kubeapi)
// that is stopped at cleanup, skipped or failed with the reason when its
// binary is not built, and helpers to create Node objects.
package kubetest

import (
	"context"
	"os"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flannel-go/flannel/internal/etcdtest"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
)

// Require returns the kube-apiserver binary, or skips the test with the
// reason when it has not been built; under CI (CI set) a missing binary
// fails the test instead, since CI's setup builds it.
func Require(t testing.TB) string {
	t.Helper()
	bin, err := kubeapi.Binary()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return bin
}

// Start runs a kube-apiserver for t: on an embedded etcd of its own unless
// o.Etcd is set, in t.TempDir() unless o.Dir is set, and stopped at
// cleanup (its log is printed when the test failed). It skips like Require.
func Start(t testing.TB, o kubeapi.Options) *kubeapi.Server {
	t.Helper()
	if o.Binary == "" {
		o.Binary = Require(t)
	}
	if len(o.Etcd) == 0 {
		o.Etcd = etcdtest.StartEtcd(t)
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	s, err := kubeapi.Launch(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver ready at %s in %v", s.URL, time.Since(start).Round(10*time.Millisecond))
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("kube-apiserver log (tail):\n%s", s.LogTail(4000))
		}
	})
	return s
}

// Client is s.Client for tests.
func Client(t testing.TB, s *kubeapi.Server) kubernetes.Interface {
	t.Helper()
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// CreateNode creates a Node with the given pod CIDRs (none: not assigned
// yet), as the kubelet and the controller-manager's node IPAM would.
func CreateNode(t testing.TB, c kubernetes.Interface, name string, podCIDRs ...string) *v1.Node {
	t.Helper()
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDRs[0], podCIDRs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	return n
}

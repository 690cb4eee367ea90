package kubetest_test

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flannel-go/flannel/internal/kubetest"
)

func TestStartAdminAndRBAC(t *testing.T) {
	s := kubetest.Start(t, kubetest.Options{})
	c := s.MustClient(t)
	kubetest.CreateNode(t, c, "n1", "10.244.1.0/24")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 || nodes.Items[0].Spec.PodCIDR != "10.244.1.0/24" {
		t.Fatalf("list nodes: %v %v", nodes, err)
	}

	// A user outside system:masters has no rights until RBAC grants some.
	kc, err := s.WriteKubeconfig("nobody.kubeconfig", "nobody")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nobody.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("unprivileged list: err = %v, want Forbidden", err)
	}

	s.Stop()
	select {
	case <-s.Exited():
	default:
		t.Fatal("server still running after Stop")
	}
}

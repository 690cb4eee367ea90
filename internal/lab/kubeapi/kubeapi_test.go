package kubeapi_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/flannel-go/flannel/internal/etcdembed"
	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
	"github.com/flannel-go/flannel/internal/netnstest"
)

func TestStartAdminAndRBAC(t *testing.T) {
	s := kubetest.Start(t, kubeapi.Options{})
	c := kubetest.Client(t, s)
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

// TestInNamespace runs etcd and the API server inside a network namespace
// of the test's own, as the lab does, and reaches them from inside it.
func TestInNamespace(t *testing.T) {
	bin := kubetest.Require(t)
	n := netnstest.New(t, "kt")
	var etcd *etcdembed.Server
	err := n.Do(func() error {
		// Listening sockets keep the namespace they were made in.
		var err error
		etcd, err = etcdembed.Start(context.Background(), etcdembed.Options{Dir: t.TempDir(), UnsafeNoFsync: true})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = n.Do(func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	s := kubetest.Start(t, kubeapi.Options{
		Binary: bin,
		Etcd:   etcd.Endpoints(),
		Wrap:   []string{"ip", "netns", "exec", n.Name},
		Dial:   dial,
	})
	kubetest.CreateNode(t, kubetest.Client(t, s), "n1", "10.244.1.0/24")
	// Nothing listens on the root namespace's loopback.
	if c, err := net.DialTimeout("tcp", strings.TrimPrefix(s.URL, "https://"), time.Second); err == nil {
		c.Close()
		t.Fatalf("%s answers in the root namespace", s.URL)
	}
}

// TestStopThenStart holds the server down, then starts it again on the
// same address with the same certificates and data: the client made
// before the outage works on, and what it wrote is still there.
func TestStopThenStart(t *testing.T) {
	s := kubetest.Start(t, kubeapi.Options{})
	c := kubetest.Client(t, s)
	kubetest.CreateNode(t, c, "n1", "10.244.1.0/24")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.Start(ctx); !errors.Is(err, kubeapi.ErrRunning) {
		t.Fatalf("Start of a running server: %v, want ErrRunning", err)
	}

	s.Stop()
	down, dcancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := c.CoreV1().Nodes().Get(down, "n1", metav1.GetOptions{})
	dcancel()
	if err == nil {
		t.Fatal("the server answers after Stop")
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := c.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil || n.Spec.PodCIDR != "10.244.1.0/24" {
		t.Fatalf("after Start: node n1 %v, err %v", n, err)
	}
}

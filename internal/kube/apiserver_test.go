package kube_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

const netConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

// rig is one real API server shared by the subtests, with flanneld's
// identity bound to upstream's ClusterRole, so every call the source makes
// is proven to need no more rights than upstream's manifest grants.
type rig struct {
	srv      *kubeapi.Server
	admin    kubernetes.Interface
	flannel  string // kubeconfig of user "flanneld"
	confPath string
	nc       *netconf.Config
}

func newRig(t *testing.T) *rig {
	s := kubetest.Start(t, kubeapi.Options{})
	r := &rig{srv: s, admin: kubetest.Client(t, s), confPath: filepath.Join(t.TempDir(), "net-conf.json")}
	if err := os.WriteFile(r.confPath, []byte(netConf), 0o644); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.nc, err = netconf.Parse([]byte(netConf)); err != nil {
		t.Fatal(err)
	}
	if r.flannel, err = s.WriteKubeconfig("flanneld.kubeconfig", "flanneld"); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if err := kubeapi.GrantFlannelRole(ctx, r.admin, "flanneld"); err != nil {
		t.Fatal(err)
	}
	return r
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// assignPodCIDR sets node's podCIDR as the controller-manager's node IPAM
// would.
func (r *rig) assignPodCIDR(t *testing.T, node, cidr string) {
	t.Helper()
	patch := []byte(`{"spec":{"podCIDR":"` + cidr + `","podCIDRs":["` + cidr + `"]}}`)
	if _, err := r.admin.CoreV1().Nodes().Patch(ctxT(t), node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) source(t *testing.T, nodeName string, env map[string]string) *kube.Source {
	t.Helper()
	s, err := kube.New(ctxT(t), kube.Options{
		Kubeconfig:                r.flannel,
		NetConfPath:               r.confPath,
		SetNodeNetworkUnavailable: true,
		NodeName:                  nodeName,
		Getenv:                    func(k string) string { return env[k] },
		Log:                       slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

func vxlanAttrs(ip, mac string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"` + mac + `"}`)}
}

// feed runs Watch and hands its updates to the test.
func feed(t *testing.T, s *kube.Source) <-chan lease.Update {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan lease.Update, 100)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Watch(ctx, func(u lease.Update) { ch <- u }); !errors.Is(err, context.Canceled) {
			t.Errorf("Watch: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ch
}

func next(t *testing.T, ch <-chan lease.Update) lease.Update {
	t.Helper()
	select {
	case u := <-ch:
		return u
	case <-time.After(30 * time.Second):
		t.Fatal("no update from Watch within 30 s")
		return lease.Update{}
	}
}

func TestAgainstAPIServer(t *testing.T) {
	r := newRig(t)

	t.Run("AcquireAnnotatesLikeUpstream", func(t *testing.T) {
		ctx := ctxT(t)
		kubetest.CreateNode(t, r.admin, "a1", "10.244.1.0/24")
		s := r.source(t, "a1", nil)
		if b, err := s.Config(ctx); err != nil || string(b) != netConf {
			t.Fatalf("Config = %q, %v", b, err)
		}
		l, err := s.Acquire(ctx, r.nc, vxlanAttrs("192.0.2.1", "0a:58:0a:f4:01:00"), lease.Prev{})
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet != netip.MustParsePrefix("10.244.1.0/24") || l.Attrs.PublicIP.String() != "192.0.2.1" {
			t.Fatalf("lease = %+v", l)
		}
		n, err := r.admin.CoreV1().Nodes().Get(ctx, "a1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`,
			"flannel.alpha.coreos.com/backend-type":        "vxlan",
			"flannel.alpha.coreos.com/kube-subnet-manager": "true",
			"flannel.alpha.coreos.com/public-ip":           "192.0.2.1",
		}
		for k, v := range want {
			if n.Annotations[k] != v {
				t.Errorf("annotation %s = %q, want %q", k, n.Annotations[k], v)
			}
		}
		// Nothing changed: no write, the resource version stays.
		if _, err := s.Acquire(ctx, r.nc, vxlanAttrs("192.0.2.1", "0a:58:0a:f4:01:00"), lease.Prev{}); err != nil {
			t.Fatal(err)
		}
		n2, _ := r.admin.CoreV1().Nodes().Get(ctx, "a1", metav1.GetOptions{})
		if n2.ResourceVersion != n.ResourceVersion {
			t.Errorf("second Acquire wrote the node (rv %s → %s)", n.ResourceVersion, n2.ResourceVersion)
		}
		prev, err := s.PrevAttrs(ctx)
		if err != nil || string(prev.BackendData) != want["flannel.alpha.coreos.com/backend-data"] {
			t.Errorf("PrevAttrs = %+v, %v", prev, err)
		}

		// Keep sets NetworkUnavailable=False once it runs.
		kctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { _ = s.Keep(kctx, l, nil) })
		defer func() { cancel(); wg.Wait() }()
		waitNode(t, r.admin, "a1", func(n *v1.Node) bool {
			for _, c := range n.Status.Conditions {
				if c.Type == v1.NodeNetworkUnavailable {
					return c.Status == v1.ConditionFalse && c.Reason == "FlannelIsUp" && c.Message == "Flannel is running on this node"
				}
			}
			return false
		})
	})

	t.Run("HostGWAndOverwrite", func(t *testing.T) {
		ctx := ctxT(t)
		n := kubetest.CreateNode(t, r.admin, "h1", "10.244.2.0/24")
		n.Annotations = map[string]string{"flannel.alpha.coreos.com/public-ip-overwrite": "198.51.100.7"}
		if _, err := r.admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		s := r.source(t, "h1", nil)
		l, err := s.Acquire(ctx, r.nc, lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.2"), BackendType: "host-gw"}, lease.Prev{})
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs.PublicIP.String() != "198.51.100.7" {
			t.Errorf("lease PublicIP = %s, want the overwrite", l.Attrs.PublicIP)
		}
		got, _ := r.admin.CoreV1().Nodes().Get(ctx, "h1", metav1.GetOptions{})
		if got.Annotations["flannel.alpha.coreos.com/backend-data"] != "null" ||
			got.Annotations["flannel.alpha.coreos.com/public-ip"] != "198.51.100.7" {
			t.Errorf("annotations = %v", got.Annotations)
		}
	})

	t.Run("DualStackCustomPrefix", func(t *testing.T) {
		ctx := ctxT(t)
		const dualConf = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`
		path := filepath.Join(t.TempDir(), "net-conf.json")
		if err := os.WriteFile(path, []byte(dualConf), 0o644); err != nil {
			t.Fatal(err)
		}
		nc, err := netconf.Parse([]byte(dualConf))
		if err != nil {
			t.Fatal(err)
		}
		kubetest.CreateNode(t, r.admin, "d1", "10.244.5.0/24", "fd00:10:244:5::/64")
		s, err := kube.New(ctx, kube.Options{Kubeconfig: r.flannel, NetConfPath: path, NodeName: "d1",
			AnnotationPrefix: "example.org/net"})
		if err != nil {
			t.Fatal(err)
		}
		attrs := vxlanAttrs("192.0.2.5", "0a:58:0a:f4:05:00")
		attrs.PublicIPv6 = netip.MustParseAddr("2001:db8::5")
		attrs.BackendV6Data = json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:0a:f4:05:01"}`)
		l, err := s.Acquire(ctx, nc, attrs, lease.Prev{})
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet.String() != "10.244.5.0/24" || l.Subnet6.String() != "fd00:10:244:5::/64" {
			t.Fatalf("lease = %v", l)
		}
		n, _ := r.admin.CoreV1().Nodes().Get(ctx, "d1", metav1.GetOptions{})
		want := map[string]string{
			"example.org/net-kube-subnet-manager": "true",
			"example.org/net-backend-type":        "vxlan",
			"example.org/net-backend-data":        `{"VNI":1,"VtepMAC":"0a:58:0a:f4:05:00"}`,
			"example.org/net-backend-v6-data":     `{"VNI":1,"VtepMAC":"0a:58:0a:f4:05:01"}`,
			"example.org/net-public-ip":           "192.0.2.5",
			"example.org/net-public-ipv6":         "2001:db8::5",
		}
		for k, v := range want {
			if n.Annotations[k] != v {
				t.Errorf("annotation %s = %q, want %q", k, n.Annotations[k], v)
			}
		}
		// The MAC comes back under the custom prefix too (upstream looks
		// for prefix + "/backend-data" and finds nothing).
		prev, err := s.PrevAttrs(ctx)
		if err != nil || string(prev.BackendData) != want["example.org/net-backend-data"] ||
			string(prev.BackendV6Data) != want["example.org/net-backend-v6-data"] {
			t.Errorf("PrevAttrs = %+v, %v", prev, err)
		}
	})

	t.Run("LatePodCIDR", func(t *testing.T) {
		ctx := ctxT(t)
		kubetest.CreateNode(t, r.admin, "late")
		s := r.source(t, "late", nil)
		attrs := vxlanAttrs("192.0.2.3", "0a:58:0a:f4:03:00")
		_, err := s.Acquire(ctx, r.nc, attrs, lease.Prev{})
		if !errors.Is(err, kube.ErrPodCIDR) {
			t.Fatalf("Acquire without podCIDR: err = %v, want ErrPodCIDR", err)
		}
		t.Logf("as expected: %v", err)
		r.assignPodCIDR(t, "late", "10.244.3.0/24")
		l, err := s.Acquire(ctx, r.nc, attrs, lease.Prev{})
		if err != nil || l.Subnet.String() != "10.244.3.0/24" {
			t.Fatalf("Acquire after podCIDR: %v, %v", l, err)
		}
	})

	t.Run("NodeNameFromPod", func(t *testing.T) {
		ctx := ctxT(t)
		kubetest.CreateNode(t, r.admin, "p1", "10.244.4.0/24")
		if _, err := r.admin.CoreV1().ServiceAccounts("default").Create(ctx,
			&v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := r.admin.CoreV1().Pods("default").Create(ctx, &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel-ds-x"},
			Spec: v1.PodSpec{NodeName: "p1", AutomountServiceAccountToken: new(bool),
				Containers: []v1.Container{{Name: "f", Image: "flannel"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := r.source(t, "", map[string]string{"POD_NAME": "kube-flannel-ds-x", "POD_NAMESPACE": "default"})
		if s.NodeName() != "p1" {
			t.Fatalf("NodeName = %q, want p1", s.NodeName())
		}
	})

	t.Run("WatchAndKeep", func(t *testing.T) {
		ctx := ctxT(t)
		kubetest.CreateNode(t, r.admin, "w1", "10.244.10.0/24")
		s := r.source(t, "w1", nil)
		l, err := s.Acquire(ctx, r.nc, vxlanAttrs("192.0.2.10", "0a:58:0a:f4:0a:00"), lease.Prev{})
		if err != nil {
			t.Fatal(err)
		}
		ch := feed(t, s)
		u := next(t, ch)
		if !u.Reset || !hasSubnet(u.Leases, "10.244.10.0/24") || !hasSubnet(u.Leases, "10.244.1.0/24") {
			t.Fatalf("first update = %+v, want a Reset with w1 and a1", u)
		}

		// A new flannel node arrives as one Added event.
		kubetest.CreateNode(t, r.admin, "w2", "10.244.11.0/24")
		s2 := r.source(t, "w2", nil)
		if _, err := s2.Acquire(ctx, r.nc, vxlanAttrs("192.0.2.11", "0a:58:0a:f4:0b:00"), lease.Prev{}); err != nil {
			t.Fatal(err)
		}
		u = next(t, ch)
		if u.Reset || len(u.Events) != 1 || u.Events[0].Type != lease.Added || u.Events[0].Lease.Subnet.String() != "10.244.11.0/24" ||
			u.Events[0].Lease.Attrs.PublicIP.String() != "192.0.2.11" {
			t.Fatalf("after w2 joined: %+v", u)
		}

		// Keep holds our lease: it puts back annotations someone removed.
		kctx, kcancel := context.WithCancel(ctx)
		keepErr := make(chan error, 1)
		go func() { keepErr <- s.Keep(kctx, l, nil) }()
		defer kcancel()
		rm := []byte(`{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":null,"flannel.alpha.coreos.com/kube-subnet-manager":null}}}`)
		if _, err := r.admin.CoreV1().Nodes().Patch(ctx, "w1", types.StrategicMergePatchType, rm, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		waitNode(t, r.admin, "w1", func(n *v1.Node) bool {
			return n.Annotations["flannel.alpha.coreos.com/public-ip"] == "192.0.2.10" &&
				n.Annotations["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
		})

		// A deleted node is a Removed event.
		if err := r.admin.CoreV1().Nodes().Delete(ctx, "w2", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		for {
			u = next(t, ch)
			if i := eventFor(u, "10.244.11.0/24"); i >= 0 {
				if u.Events[i].Type != lease.Removed {
					t.Fatalf("after w2 was deleted: %+v", u)
				}
				break
			}
		}

		// Our own node deleted: Keep reports the lease lost.
		if err := r.admin.CoreV1().Nodes().Delete(ctx, "w1", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-keepErr:
			if !errors.Is(err, lease.ErrNotFound) {
				t.Fatalf("Keep after our node was deleted: %v, want ErrNotFound", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Keep did not notice our node was deleted")
		}
	})
}

// TestWatchSurvivesAPIServerRestart stops the API server under a running
// Watch and Keep, starts it again, and expects the feed to carry on by
// itself: a node that joins afterwards arrives as an event.
func TestWatchSurvivesAPIServerRestart(t *testing.T) {
	r := newRig(t)
	ctx := ctxT(t)
	kubetest.CreateNode(t, r.admin, "r1", "10.244.20.0/24")
	s := r.source(t, "r1", nil)
	l, err := s.Acquire(ctx, r.nc, vxlanAttrs("192.0.2.20", "0a:58:0a:f4:14:00"), lease.Prev{})
	if err != nil {
		t.Fatal(err)
	}
	ch := feed(t, s)
	if u := next(t, ch); !u.Reset || len(u.Leases) != 1 {
		t.Fatalf("first update = %+v", u)
	}
	kctx, kcancel := context.WithCancel(ctx)
	keepErr := make(chan error, 1)
	go func() { keepErr <- s.Keep(kctx, l, nil) }()

	r.srv.Stop()
	if err := r.srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	kubetest.CreateNode(t, r.admin, "r2", "10.244.21.0/24")
	s2 := r.source(t, "r2", nil)
	if _, err := s2.Acquire(ctx, r.nc, vxlanAttrs("192.0.2.21", "0a:58:0a:f4:15:00"), lease.Prev{}); err != nil {
		t.Fatal(err)
	}
	for {
		u := next(t, ch)
		if i := eventFor(u, "10.244.21.0/24"); i >= 0 && u.Events[i].Type == lease.Added {
			break
		}
	}
	kcancel()
	if err := <-keepErr; !errors.Is(err, context.Canceled) {
		t.Errorf("Keep across the restart: %v", err)
	}
}

func hasSubnet(ls []lease.Lease, sn string) bool {
	for _, l := range ls {
		if l.Subnet.String() == sn {
			return true
		}
	}
	return false
}

func eventFor(u lease.Update, sn string) int {
	for i, e := range u.Events {
		if e.Lease.Subnet.String() == sn {
			return i
		}
	}
	return -1
}

// waitNode waits until ok holds for the node, watching it rather than
// polling.
func waitNode(t *testing.T, c kubernetes.Interface, name string, ok func(*v1.Node) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ok(n) {
		return
	}
	w, err := c.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{
		FieldSelector: "metadata.name=" + name, ResourceVersion: n.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if n, is := ev.Object.(*v1.Node); is && ok(n) {
			return
		}
	}
	t.Fatalf("node %s: condition not met within 30 s (last seen: %+v)", name, n.ObjectMeta.Annotations)
}

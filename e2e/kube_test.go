package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
)

// kubeLab is a lab whose flanneld run in Kubernetes mode against a real
// kube-apiserver on the lab's etcd, one Node object per lab host.
type kubeLab struct {
	*lab.Lab
	api    *kubeapi.Server
	client kubernetes.Interface
	cidrs  map[string]netip.Prefix // node name → podCIDR
}

// startKubeLab builds n hosts, runs the API server beside the lab's etcd,
// applies dist/kube-flannel.yml (so flanneld's credentials carry exactly
// the manifest's RBAC), creates a Node per host with a podCIDR, as the
// controller-manager's node IPAM would, and starts flanneld on each with
// --kube-subnet-mgr (lab.StartKube, which `flannelctl lab up --kube` runs
// too).
func startKubeLab(t *testing.T, n int, backend string) *kubeLab {
	t.Helper()
	bin := kubetest.Require(t)
	o := labOpts(t, n, backendConfig(backend))
	o.NoFlanneld = true
	l := startLab(t, o)
	manifest, err := filepath.Abs("../dist/kube-flannel.yml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	k, err := l.StartKube(ctx, lab.KubeOptions{
		APIServer: bin,
		Manifest:  manifest,
		NetConf:   fmt.Sprintf(`{"Network":"10.244.0.0/16","Backend":{"Type":%q}}`, backend),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver ready at %s in %v", k.API.URL, time.Since(start).Round(10*time.Millisecond))
	t.Cleanup(func() {
		k.API.Stop()
		if t.Failed() {
			t.Logf("kube-apiserver log (tail):\n%s", k.API.LogTail(4000))
		}
	})
	kl := &kubeLab{Lab: l, api: k.API, client: k.Client, cidrs: k.CIDRs}
	for _, h := range l.Hosts {
		startHost(t, l, h)
	}
	return kl
}

// Three nodes in Kubernetes mode, per backend: each takes its podCIDR,
// publishes upstream's annotations byte for byte, is marked network-
// available, and every pod pings every other. A deleted node's routes are
// gone from the others within a second.
func TestKubeMode(t *testing.T) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			kl := startKubeLab(t, 3, b)
			ctx := context.Background()
			for _, h := range kl.Hosts {
				if h.Subnet != kl.cidrs[h.Name] {
					t.Errorf("%s: subnet.env has %s, want the node's podCIDR %s", h.Name, h.Subnet, kl.cidrs[h.Name])
				}
				node := awaitNetworkAvailable(t, kl.client, h.Name)
				assertUpstreamAnnotations(t, node, b, h.Addr)
			}
			assertAllPairsPing(t, kl.Lab)

			gone := kl.Hosts[2]
			if err := kl.client.CoreV1().Nodes().Delete(ctx, gone.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			sn := kl.cidrs[gone.Name]
			for _, h := range kl.Hosts[:2] {
				if took, ok := pollUntil(time.Second, func() bool { return !entriesFor(h, sn, gone.Addr).any() }); !ok {
					t.Errorf("%s still routes the deleted node's %s after %s: %s", h.Name, sn, took, entriesFor(h, sn, gone.Addr))
				}
			}
		})
	}
}

// assertUpstreamAnnotations checks the annotations upstream's flanneld
// writes, in its exact form.
func assertUpstreamAnnotations(t *testing.T, n *v1.Node, backend string, pub netip.Addr) {
	t.Helper()
	const p = "flannel.alpha.coreos.com/"
	a := n.Annotations
	want := map[string]string{
		p + "kube-subnet-manager": "true",
		p + "backend-type":        backend,
		p + "public-ip":           pub.String(),
	}
	for k, v := range want {
		if a[k] != v {
			t.Errorf("node %s: annotation %s = %q, want %q", n.Name, k, a[k], v)
		}
	}
	data := a[p+"backend-data"]
	switch backend {
	case "vxlan":
		if !regexp.MustCompile(`^\{"VNI":1,"VtepMAC":"[0-9a-f]{2}(:[0-9a-f]{2}){5}"\}$`).MatchString(data) {
			t.Errorf("node %s: backend-data %q, want upstream's {\"VNI\":1,\"VtepMAC\":\"…\"}", n.Name, data)
		}
	case "host-gw":
		if data != "null" {
			t.Errorf("node %s: backend-data %q, want null as upstream writes it", n.Name, data)
		}
	}
}

// awaitNetworkAvailable waits, on a watch of the node, for flanneld to
// set its NetworkUnavailable condition (it does so a few API calls after
// subnet.env, so a test cannot just read the node once) and checks it is
// False with upstream's reason. It returns the node as last seen.
func awaitNetworkAvailable(t *testing.T, c kubernetes.Interface, name string) *v1.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cond := func(n *v1.Node) *v1.NodeCondition {
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == v1.NodeNetworkUnavailable {
				return &n.Status.Conditions[i]
			}
		}
		return nil
	}
	n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cond(n) == nil {
		w, err := c.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{
			FieldSelector:   "metadata.name=" + name,
			ResourceVersion: n.ResourceVersion,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		for cond(n) == nil {
			ev, ok := <-w.ResultChan()
			if !ok {
				t.Fatalf("node %s has no NetworkUnavailable condition after %v", name, 15*time.Second)
			}
			if m, isNode := ev.Object.(*v1.Node); isNode {
				n = m
			}
		}
	}
	if c := cond(n); c.Status != v1.ConditionFalse || c.Reason != "FlannelIsUp" {
		t.Errorf("node %s: NetworkUnavailable %s reason %q, want False FlannelIsUp", name, c.Status, c.Reason)
	}
	return n
}

// In Kubernetes mode a flanneld SIGKILLed and restarted keeps its subnet
// and VTEP MAC and no ping is lost; after a "reboot" (the device gone
// too) it recreates the device with the MAC its node's annotation
// already tells the peers, so they need no update.
func TestKubeRestartKeepsSubnetAndMAC(t *testing.T) {
	kl := startKubeLab(t, 2, "vxlan")
	h1, h2 := kl.Hosts[0], kl.Hosts[1]
	ctx := context.Background()
	data := func() string {
		t.Helper()
		n, err := kl.client.CoreV1().Nodes().Get(ctx, h1.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n.Annotations["flannel.alpha.coreos.com/backend-data"]
	}
	before, subnet := data(), h1.Subnet

	pings := startPings(t, kl.Lab, [2]*lab.Host{h1, h2})
	stopFlanneld(t, kl.Lab, h1, syscall.SIGKILL)
	restartAndWait(t, kl.Lab, h1)
	if err := kl.WaitSubnet(ctx, h1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if h1.Subnet != subnet {
		t.Errorf("after a restart the subnet is %s, was %s", h1.Subnet, subnet)
	}
	if got := data(); got != before {
		t.Errorf("after a restart backend-data is %s, was %s", got, before)
	}
	time.Sleep(2 * time.Second) // pings run on after the restart: the scenario, not synchronisation
	pings.stopNoLoss(t)

	stopFlanneld(t, kl.Lab, h1, syscall.SIGTERM)
	nsRun(t, h1.NS, "ip", "link", "del", "flannel.1")
	restartAndWait(t, kl.Lab, h1)
	if got := data(); got != before {
		t.Errorf("after the device was recreated backend-data is %s, was %s", got, before)
	}
	mac := regexp.MustCompile(`"VtepMAC":"([^"]+)"`).FindStringSubmatch(before)
	if mac == nil || !strings.Contains(nsOutput(h1.NS, "ip", "link", "show", "flannel.1"), "link/ether "+mac[1]) {
		t.Errorf("flannel.1 was recreated without the published MAC %v:\n%s", mac, nsOutput(h1.NS, "ip", "link", "show", "flannel.1"))
	}
	waitFor(t, 10*time.Second, "pings across after the device was recreated", func() bool {
		got, _, _ := kl.Ping(ctx, h1, h2.Container, 1, 200*time.Millisecond)
		return got == 1
	})
}

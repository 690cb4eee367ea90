package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab"
)

// ghostNode is a Node that no lab host runs, annotated as a flannel peer
// on vxlan would annotate it: the hosts must route to it like to any peer.
func ghostNode(t *testing.T, c kubernetes.Interface, name string, p fakePeer) {
	t.Helper()
	const pre = "flannel.alpha.coreos.com/"
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
			pre + "kube-subnet-manager": "true",
			pre + "backend-type":        "vxlan",
			pre + "backend-data":        fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, p.MAC),
			pre + "public-ip":           p.PublicIP.String(),
		}},
		Spec: v1.NodeSpec{PodCIDR: p.Subnet.String(), PodCIDRs: []string{p.Subnet.String()}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
}

// The API server is down for 60 s under two vxlan hosts pinging each
// other at 10/s both ways: no ping is lost, both flanneld keep running,
// and once the server is back their watch resumes by itself, so a node
// that joins then is routed to within seconds (typically well under one).
func TestKubeAPIServerOutage(t *testing.T) {
	kl := startKubeLab(t, 2, "vxlan")
	hosts := kl.Hosts[:2]
	pids := []int{hosts[0].FlanneldPID, hosts[1].FlanneldPID}
	pings := startPings(t, kl.Lab, [2]*lab.Host{hosts[0], hosts[1]})

	kl.api.Stop()
	t.Log("kube-apiserver stopped for 60 s")
	time.Sleep(60 * time.Second) // the outage itself, not synchronisation
	for i, h := range hosts {
		if !lab.Alive(pids[i]) {
			t.Errorf("%s's flanneld (pid %d) exited while the API server was down", h.Name, pids[i])
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := kl.api.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	t.Log("kube-apiserver started again")

	// A node that joins now reaches the hosts only through a watch that
	// resumed: nothing else reads the nodes.
	ghost := fakePeer{
		Subnet:   netip.MustParsePrefix("10.244.99.0/24"),
		PublicIP: netip.MustParseAddr("192.168.100.200"),
		MAC:      "0a:fe:00:00:00:63",
	}
	ghostNode(t, kl.client, "ghost", ghost)
	created := time.Now()
	t.Logf("node ghost created %s after the API server was ready", created.Sub(back).Round(time.Millisecond))
	// The informer waits at most 5 s between attempts to reach the
	// server, and may have to list again once it answers; client-go's
	// own backoff would by now wait 30 to 60 s.
	took := whenEach(created, 20*time.Second, hosts, func(h *lab.Host) bool {
		return entriesFor(h, ghost.Subnet, ghost.PublicIP).complete("vxlan")
	})
	for i, h := range hosts {
		switch {
		case took[i] < 0:
			t.Errorf("%s has no route to the node that joined after the outage within 20 s: %s", h.Name, entriesFor(h, ghost.Subnet, ghost.PublicIP))
		case took[i] > 10*time.Second:
			t.Errorf("%s routed to the node that joined after the outage only %s after it was created, want within 10 s", h.Name, took[i])
		default:
			t.Logf("%s routes to the node that joined after the outage %s after it was created", h.Name, took[i])
		}
	}
	pings.stopNoLoss(t)
	for i, h := range hosts {
		if !lab.Alive(pids[i]) || h.FlanneldPID != pids[i] {
			t.Errorf("%s's flanneld (pid %d) is not the one that ran before the outage", h.Name, pids[i])
		}
		log := logOf(kl.Lab, h)
		if !strings.Contains(log, "the API server does not answer") || !strings.Contains(log, "the API server answers again") {
			t.Errorf("%s's flanneld did not say that the API server was gone and back:\n%s", h.Name, log)
		}
	}
}

// nodeReads returns what the API server's metrics count of lists and
// watches of nodes, by series: finished LIST and WATCH requests, and the
// watches open now.
func nodeReads(t *testing.T, c kubernetes.Interface) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := c.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		t.Fatalf("kube-apiserver /metrics: %v", err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, "{")
		if !ok || (name != "apiserver_request_total" && name != "apiserver_longrunning_requests") ||
			!strings.Contains(rest, `resource="nodes"`) || !strings.Contains(rest, `subresource=""`) ||
			!(strings.Contains(rest, `verb="LIST"`) || strings.Contains(rest, `verb="WATCH"`)) {
			continue
		}
		series, value, _ := strings.Cut(line, "} ")
		var n float64
		if _, err := fmt.Sscan(value, &n); err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[series+"}"] = int(n)
	}
	return out
}

// With the alloc backend flanneld forwards to no peer, so in Kubernetes
// mode it neither lists nor watches the nodes: it reads and annotates only
// its own. The API server's own counts of node lists and watches prove it
// across a flanneld's start. On vxlan the same start opens a watch, which
// shows that the counts would see one.
func TestKubeAllocRunsNoInformer(t *testing.T) {
	for _, b := range []string{"alloc", "vxlan"} {
		t.Run(b, func(t *testing.T) {
			kl := startKubeLab(t, 2, b)
			h := kl.Hosts[0]
			if h.Subnet != kl.cidrs[h.Name] {
				t.Errorf("%s: subnet.env has %s, want the node's podCIDR %s", h.Name, h.Subnet, kl.cidrs[h.Name])
			}
			stopFlanneld(t, kl.Lab, h, syscall.SIGTERM)
			// The API server (and the other host's flanneld, on vxlan)
			// hold watches of their own: count what this start adds.
			before := nodeReads(t, kl.client)
			offset := len(logOf(kl.Lab, h))
			restartAndWait(t, kl.Lab, h)
			if b == "vxlan" {
				waitFor(t, 10*time.Second, "the restarted flanneld's watch of nodes", func() bool {
					return !maps.Equal(nodeReads(t, kl.client), before)
				})
				return
			}
			if after := nodeReads(t, kl.client); !maps.Equal(after, before) {
				t.Errorf("the API server's counts of node lists and watches changed across a flanneld's start with the alloc backend, want no list or watch:\nbefore %v\nafter  %v", before, after)
			}
			if log := logSince(kl.Lab, h, offset); !strings.Contains(log, "not watching the other hosts' leases") {
				t.Errorf("%s's flanneld does not say that it watches no peers:\n%s", h.Name, log)
			}
			awaitNetworkAvailable(t, kl.client, h.Name)
		})
	}
}

// A node gets its podCIDR only after flanneld started on it (the
// controller-manager is slow, or was down): flanneld stays up and says,
// once, which node lacks which field; when the podCIDR is set it comes up
// at once with that subnet, and pods reach the other node. With the alloc
// backend, which runs no informer, it learns of the podCIDR as fast.
func TestKubePodCIDRAssignedLate(t *testing.T) {
	for _, b := range []string{"vxlan", "alloc"} {
		t.Run(b, func(t *testing.T) { podCIDRAssignedLate(t, b) })
	}
}

func podCIDRAssignedLate(t *testing.T, backend string) {
	kl := startKubeLab(t, 2, backend)
	h1, h2 := kl.Hosts[0], kl.Hosts[1]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// h2 becomes a host that has just joined: no flanneld, no subnet.env,
	// no device, and a Node object without a podCIDR.
	stopFlanneld(t, kl.Lab, h2, syscall.SIGTERM)
	if err := kl.client.CoreV1().Nodes().Delete(ctx, h2.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	old := h2.Subnet
	if backend != "alloc" {
		waitFor(t, 5*time.Second, "h1 to drop the deleted node's routes", func() bool { return !entriesFor(h1, old, h2.Addr).any() })
	}
	if err := os.Remove(kl.SubnetFile(h2)); err != nil {
		t.Fatal(err)
	}
	if backend == "vxlan" {
		nsRun(t, h2.NS, "ip", "link", "del", "flannel.1")
	}
	kubetest.CreateNode(t, kl.client, h2.Name)

	offset := len(logOf(kl.Lab, h2))
	if err := kl.StartFlanneld(h2); err != nil {
		t.Fatal(err)
	}
	pid := h2.FlanneldPID
	// Upstream exits here and the pod crash-loops; we wait and say why.
	const complaint = `node \"h2\": spec.podCIDR is not assigned yet`
	waitFor(t, 10*time.Second, "h2's flanneld to say that its node has no podCIDR", func() bool {
		return strings.Contains(logSince(kl.Lab, h2, offset), complaint)
	})
	time.Sleep(5 * time.Second) // how long it is watched waiting (retries back off meanwhile), not synchronisation
	log := logSince(kl.Lab, h2, offset)
	if !lab.Alive(pid) {
		t.Fatalf("h2's flanneld exited while its node had no podCIDR:\n%s", log)
	}
	if n := strings.Count(log, complaint); n != 1 {
		t.Errorf("h2's flanneld said %d times that the podCIDR is missing, want once:\n%s", n, log)
	}
	if line := firstLine(log, complaint); !strings.Contains(line, "level=ERROR") {
		t.Errorf("the missing podCIDR is not reported as an error: %s", line)
	}
	if _, err := os.Stat(kl.SubnetFile(h2)); !os.IsNotExist(err) {
		t.Errorf("subnet.env exists before the node has a podCIDR (stat: %v)", err)
	}
	t.Logf("h2: %s", firstLine(log, complaint))

	// The controller-manager's node IPAM assigns it.
	cidr := netip.MustParsePrefix("10.244.42.0/24")
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, cidr, cidr)
	if _, err := kl.client.CoreV1().Nodes().Patch(ctx, h2.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	assigned := time.Now()
	if err := kl.WaitSubnet(ctx, h2, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	took := time.Since(assigned).Round(time.Millisecond)
	t.Logf("h2 wrote subnet.env %s after its podCIDR was assigned", took)
	if h2.Subnet != cidr {
		t.Errorf("h2's subnet.env has %s, want the podCIDR assigned late, %s", h2.Subnet, cidr)
	}
	if took > 2*time.Second {
		t.Errorf("h2 came up %s after its podCIDR was assigned, want within 2 s", took)
	}
	if h2.FlanneldPID != pid || !lab.Alive(pid) {
		t.Errorf("h2's flanneld is not the one started before the podCIDR was assigned (pid %d)", pid)
	}
	if backend == "alloc" {
		return // no datapath
	}
	if err := kl.SetupContainer(h2); err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]*lab.Host{{h1, h2}, {h2, h1}} {
		waitFor(t, 10*time.Second, "pings from "+p[0].Name+" to "+p[1].Name+"'s pod", func() bool {
			got, _, _ := kl.Ping(ctx, p[0], p[1].Container, 1, 200*time.Millisecond)
			return got == 1
		})
	}
}

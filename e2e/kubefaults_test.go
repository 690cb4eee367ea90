package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

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
// that joins then is routed to within seconds.
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
	took := whenEach(created, 10*time.Second, hosts, func(h *lab.Host) bool {
		return entriesFor(h, ghost.Subnet, ghost.PublicIP).complete("vxlan")
	})
	for i, h := range hosts {
		switch {
		case took[i] < 0:
			t.Errorf("%s has no route to the node that joined after the outage within 10 s: %s", h.Name, entriesFor(h, ghost.Subnet, ghost.PublicIP))
		case took[i] > 5*time.Second:
			t.Errorf("%s routed to the node that joined after the outage only %s after it was created, want within 5 s", h.Name, took[i])
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
			n, err := kl.client.CoreV1().Nodes().Get(context.Background(), h.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			assertNetworkAvailable(t, n)
		})
	}
}

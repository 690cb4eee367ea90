package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
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

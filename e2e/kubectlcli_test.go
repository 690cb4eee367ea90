package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/doctor"
	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/status"
)

// kubeCtl runs the flannelctl binary inside host h's namespace as an
// operator on that node would in Kubernetes mode: $KUBECONFIG and
// NODE_NAME, nothing of etcd.
func kubeCtl(t *testing.T, l *lab.Lab, h *lab.Host, kubeconfig string, args ...string) (stdout string, code int) {
	t.Helper()
	stdout, _, code = runCtl(t, h, []string{"KUBECONFIG=" + kubeconfig, "NODE_NAME=" + h.Name, "FLANNELD_SUBNET_FILE=" + l.SubnetFile(h)}, args...)
	return stdout, code
}

// TestKubeFlannelctl: on a running Kubernetes-mode lab, flannelctl's
// leases, status and doctor read the nodes flanneld annotated, with the
// admin's credentials and with flanneld's own (the manifest's RBAC).
func TestKubeFlannelctl(t *testing.T) {
	kl := startKubeLab(t, 2, "vxlan")
	admin, err := kl.api.WriteKubeconfig("ctl-admin.conf", "ctl-admin", "system:masters")
	if err != nil {
		t.Fatal(err)
	}
	node, err := kl.api.WriteKubeconfig("ctl-node.conf", "system:serviceaccount:kube-flannel:flannel")
	if err != nil {
		t.Fatal(err)
	}
	macs := map[string]string{}
	for _, h := range kl.Hosts {
		out, err := exec.Command("ip", "netns", "exec", h.NS, "cat", "/sys/class/net/flannel.1/address").Output()
		if err != nil {
			t.Fatalf("%s: MAC of flannel.1: %v", h.Name, err)
		}
		macs[h.Name] = strings.TrimSpace(string(out))
	}
	h1, h2 := kl.Hosts[0], kl.Hosts[1]

	// The admin reads the network config from the manifest's ConfigMap.
	out, code := kubeCtl(t, kl.Lab, h1, admin, "leases", "list", "-o", "json")
	var ls []status.LeaseInfo
	if err := json.Unmarshal([]byte(out), &ls); code != 0 || err != nil || len(ls) != len(kl.Hosts) {
		t.Fatalf("leases list -o json: exit %d, %v, %d leases", code, err, len(ls))
	}
	for _, l := range ls {
		var d struct{ VNI int }
		if json.Unmarshal(l.BackendData, &d) != nil || d.VNI != 1 {
			t.Errorf("%s: backend data %s", l.Node, l.BackendData)
		}
		var h *lab.Host
		for _, x := range kl.Hosts {
			if x.Name == l.Node {
				h = x
			}
		}
		if h == nil || l.Subnet != kl.cidrs[h.Name].String() || l.PublicIP != h.Addr.String() || l.Backend != "vxlan" ||
			!strings.Contains(string(l.BackendData), macs[h.Name]) {
			t.Errorf("lease %+v does not match its host", l)
		}
	}
	out, code = kubeCtl(t, kl.Lab, h1, admin, "leases", "list")
	for _, h := range kl.Hosts {
		if code != 0 || !strings.Contains(out, kl.cidrs[h.Name].String()) || !strings.Contains(out, macs[h.Name]) {
			t.Errorf("leases list lacks %s (%s, %s)", h.Name, kl.cidrs[h.Name], macs[h.Name])
		}
	}

	// A node's own credentials: no ConfigMap, but nodes.
	out, code = kubeCtl(t, kl.Lab, h1, node, "leases", "show", h2.Name)
	if code != 0 || !strings.Contains(out, kl.cidrs[h2.Name].String()) || !strings.Contains(out, macs[h2.Name]) || !strings.Contains(out, "FlannelIsUp") {
		t.Errorf("leases show %s: exit %d", h2.Name, code)
	}
	out, code = kubeCtl(t, kl.Lab, h1, node, "status")
	if code != 0 || !strings.Contains(out, h1.Name+", podCIDR "+kl.cidrs[h1.Name].String()+", NetworkUnavailable=False (FlannelIsUp)") {
		t.Errorf("status: exit %d", code)
	}
	out, code = kubeCtl(t, kl.Lab, h1, node, "doctor", "-o", "json")
	var fs []doctor.Finding
	if err := json.Unmarshal([]byte(out), &fs); err != nil {
		t.Fatalf("doctor -o json: %v", err)
	}
	seen := map[string]bool{}
	for _, f := range fs {
		seen[f.Check] = true
		switch f.Check {
		case "podCIDR", "annotations", "lease", "condition", "public-ip", "device", "vtep", "peers":
			if f.Level != doctor.OK {
				t.Errorf("doctor: %s", f)
			}
		}
	}
	for _, c := range []string{"podCIDR", "annotations", "lease", "condition", "public-ip", "vtep", "peers"} {
		if !seen[c] {
			t.Errorf("doctor has no %s finding", c)
		}
	}
	if (code != 0) != doctor.Failed(fs) {
		t.Errorf("doctor: exit %d with Failed %v", code, doctor.Failed(fs))
	}
}

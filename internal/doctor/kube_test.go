package doctor

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/kubestate"
	"github.com/flannel-go/flannel/internal/netconf"
)

// kubeNode is node n1 as the API server has it: upstream's annotations,
// read through kube's parser as flannelctl does.
func kubeNode(t *testing.T, ann map[string]string, podCIDRs []string, cond *kubestate.Condition, nc *netconf.Config) kubestate.Node {
	t.Helper()
	keys, err := kube.ParseAnnotationPrefix(kube.DefaultAnnotationPrefix)
	if err != nil {
		t.Fatal(err)
	}
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: ann}}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDRs[0], podCIDRs
	}
	out := kubestate.Node{Name: "n1", PodCIDRs: podCIDRs, Keys: keys, Annotations: ann,
		Managed: ann[keys.SubnetKubeManaged] == "true", NetworkUnavailable: cond}
	out.Lease, out.LeaseErr = kube.NodeLease(n, keys, nc)
	return out
}

func upstreamAnnotations(ip, mac string) map[string]string {
	const p = "flannel.alpha.coreos.com/"
	return map[string]string{
		p + "kube-subnet-manager": "true",
		p + "backend-type":        "vxlan",
		p + "backend-data":        `{"VNI":1,"VtepMAC":"` + mac + `"}`,
		p + "public-ip":           ip,
	}
}

var flannelIsUp = &kubestate.Condition{Status: "False", Reason: "FlannelIsUp"}

// healthyKube is healthy's host in Kubernetes mode: its lease is node n1's
// podCIDR, the peers are the other nodes' leases (no expiry, no ID).
func healthyKube(t *testing.T) (*fakeSys, Input) {
	sys, in := healthy(t)
	fl := sys.links["flannel.1"]
	fl.MAC = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	sys.links["flannel.1"] = fl
	for i := range in.Leases {
		in.Leases[i].ID, in.Leases[i].Expires = 0, time.Time{}
	}
	in.Kube = &KubeInput{Node: kubeNode(t, upstreamAnnotations("192.168.1.1", "02:00:00:00:00:01"), []string{"10.5.1.0/24"}, flannelIsUp, in.Config)}
	return sys, in
}

func find(fs []Finding, check string) []Finding {
	var out []Finding
	for _, f := range fs {
		if f.Check == check {
			out = append(out, f)
		}
	}
	return out
}

func TestKubeHealthyHostHasOnlyOK(t *testing.T) {
	sys, in := healthyKube(t)
	fs := run(t, sys, in)
	for _, f := range fs {
		if f.Level != OK {
			t.Errorf("healthy kube host: %s", f)
		}
	}
	for _, c := range []string{"podCIDR", "annotations", "lease", "condition", "public-ip", "vtep", "device", "peers"} {
		if len(find(fs, c)) == 0 {
			t.Errorf("no %s finding", c)
		}
	}
	if len(find(fs, "lease")) != 1 || !strings.Contains(find(fs, "lease")[0].Message, `node "n1"'s podCIDR`) {
		t.Errorf("lease finding: %v", find(fs, "lease"))
	}
}

func TestKubeFindings(t *testing.T) {
	const p = "flannel.alpha.coreos.com/"
	for _, tc := range []struct {
		name  string
		edit  func(t *testing.T, sys *fakeSys, in *Input)
		check string
		level Level
		want  []string // in the message and fix
	}{
		{"node unreadable", func(t *testing.T, _ *fakeSys, in *Input) {
			in.Kube = &KubeInput{Err: kubestate.ErrNoNode}
		}, "node", Fail, []string{"cannot read this host's Node", "--node-name"}},
		{"no podCIDR", func(t *testing.T, _ *fakeSys, in *Input) {
			in.Kube.Node = kubeNode(t, nil, nil, nil, in.Config)
		}, "podCIDR", Fail, []string{"no podCIDR", "--allocate-node-cidrs=true", "kubectl patch node n1"}},
		{"podCIDR outside Network", func(t *testing.T, _ *fakeSys, in *Input) {
			in.Kube.Node = kubeNode(t, upstreamAnnotations("192.168.1.1", "02:00:00:00:00:01"), []string{"10.6.1.0/24"}, flannelIsUp, in.Config)
		}, "podCIDR", Fail, []string{"outside Network 10.5.0.0/16", "--cluster-cidr"}},
		{"not published", func(t *testing.T, _ *fakeSys, in *Input) {
			in.Kube.Node = kubeNode(t, map[string]string{}, []string{"10.5.1.0/24"}, nil, in.Config)
		}, "annotations", Fail, []string{p + "kube-subnet-manager=true", "no peer routes to it", "--kube-annotation-prefix"}},
		{"bad annotation", func(t *testing.T, _ *fakeSys, in *Input) {
			a := upstreamAnnotations("192.168.1.1", "02:00:00:00:00:01")
			a[p+"backend-data"] = "{not json"
			in.Kube.Node = kubeNode(t, a, []string{"10.5.1.0/24"}, flannelIsUp, in.Config)
		}, "annotations", Fail, []string{p + "backend-data", "every peer ignores it", "kubectl annotate node n1"}},
		{"other backend published", func(t *testing.T, _ *fakeSys, in *Input) {
			a := upstreamAnnotations("192.168.1.1", "02:00:00:00:00:01")
			a[p+"backend-type"] = "host-gw"
			in.Kube.Node = kubeNode(t, a, []string{"10.5.1.0/24"}, flannelIsUp, in.Config)
		}, "annotations", Fail, []string{`backend-type="host-gw"`, `backend "vxlan"`}},
		{"stale subnet.env", func(t *testing.T, _ *fakeSys, in *Input) {
			in.Env.Subnet = netip.MustParsePrefix("10.5.9.1/24")
		}, "lease", Fail, []string{"FLANNEL_SUBNET=10.5.9.1/24", "podCIDR is 10.5.1.0/24", "restart flanneld"}},
		{"nodes not listable", func(t *testing.T, _ *fakeSys, in *Input) {
			in.EtcdErr = errors.New("nodes is forbidden")
		}, "lease", Fail, []string{"cannot list the nodes", "list on nodes"}},
		{"no condition", func(t *testing.T, _ *fakeSys, in *Input) {
			in.Kube.Node.NetworkUnavailable = nil
		}, "condition", Warn, []string{"no NetworkUnavailable condition", "--set-node-network-unavailable"}},
		{"NetworkUnavailable True", func(t *testing.T, _ *fakeSys, in *Input) {
			in.Kube.Node.NetworkUnavailable = &kubestate.Condition{Status: "True", Reason: "NoRouteCreated"}
		}, "condition", Fail, []string{"NetworkUnavailable=True (NoRouteCreated)", "no pods are scheduled", "nodes/status"}},
		{"condition by someone else", func(t *testing.T, _ *fakeSys, in *Input) {
			in.Kube.Node.NetworkUnavailable = &kubestate.Condition{Status: "False", Reason: "RouteCreated"}
		}, "condition", Warn, []string{`reason "RouteCreated"`, "only pod network"}},
		{"public IP not local", func(t *testing.T, _ *fakeSys, in *Input) {
			in.Kube.Node = kubeNode(t, upstreamAnnotations("192.168.9.9", "02:00:00:00:00:01"), []string{"10.5.1.0/24"}, flannelIsUp, in.Config)
		}, "public-ip", Warn, []string{p + "public-ip 192.168.9.9 is not an address of this host", p + "public-ip-overwrite", "--public-ip"}},
		{"public IP overwritten", func(t *testing.T, _ *fakeSys, in *Input) {
			a := upstreamAnnotations("203.0.113.1", "02:00:00:00:00:01")
			a[p+"public-ip-overwrite"] = "203.0.113.1"
			in.Kube.Node = kubeNode(t, a, []string{"10.5.1.0/24"}, flannelIsUp, in.Config)
		}, "public-ip", OK, []string{"set by " + p + "public-ip-overwrite (NAT)"}},
		{"peer down", func(t *testing.T, sys *fakeSys, _ *Input) {
			sys.answer = func(Probe) ProbeResult { return ProbeResult{} }
		}, "peers", Fail, []string{"(overlay) nor the host", "delete its Node"}},
		{"VTEP MAC differs", func(t *testing.T, sys *fakeSys, _ *Input) {
			setLink(sys, "flannel.1", func(l *Link) { l.MAC = net.HardwareAddr{2, 0, 0, 0, 0, 9} })
		}, "vtep", Fail, []string{"flannel.1 has MAC 02:00:00:00:00:09", `node "n1"'s ` + p + "backend-data annotation publishes VtepMAC 02:00:00:00:00:01", "restart flanneld"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys, in := healthyKube(t)
			tc.edit(t, sys, &in)
			fs := run(t, sys, in)
			got := find(fs, tc.check)
			var hit *Finding
			for i := range got {
				if got[i].Level == tc.level {
					hit = &got[i]
				}
			}
			if hit == nil {
				t.Fatalf("no %s finding of level %s in %v", tc.check, tc.level, got)
			}
			text := hit.Message + " " + hit.Fix
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("%s lacks %q", hit, w)
				}
			}
			if (tc.level == Fail) != Failed(fs) {
				t.Errorf("Failed = %v with a %s finding", Failed(fs), tc.level)
			}
		})
	}
}

// The etcd mode compares the VTEP MAC with the lease too.
func TestVtepMACInEtcdMode(t *testing.T) {
	sys, in := healthy(t)
	setLink(sys, "flannel.1", func(l *Link) { l.MAC = net.HardwareAddr{2, 0, 0, 0, 0, 1} })
	if f := find(run(t, sys, in), "vtep"); len(f) != 1 || f[0].Level != OK {
		t.Errorf("matching MAC: %v", f)
	}
	setLink(sys, "flannel.1", func(l *Link) { l.MAC = net.HardwareAddr{2, 0, 0, 0, 0, 2} })
	if f := find(run(t, sys, in), "vtep"); len(f) != 1 || f[0].Level != Fail || !strings.Contains(f[0].Message, "its lease publishes VtepMAC 02:00:00:00:00:01") {
		t.Errorf("other MAC: %v", f)
	}
}

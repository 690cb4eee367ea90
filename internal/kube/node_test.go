package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

func mustConf(t testing.TB, s string) *netconf.Config {
	t.Helper()
	nc, err := netconf.Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

const (
	confV4   = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	confDual = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`
)

func node(name string, cidrs []string, ann map[string]string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidrs[0], cidrs
	}
	return n
}

func peerAnn(k Keys, ip, data string) map[string]string {
	return map[string]string{
		k.SubnetKubeManaged: "true", k.BackendType: "vxlan", k.BackendData: data, k.PublicIP: ip,
	}
}

func TestPodCIDRErrors(t *testing.T) {
	nc := mustConf(t, confV4)
	for _, tc := range []struct {
		name  string
		node  *v1.Node
		nc    *netconf.Config
		field string // in the message besides the node's name
	}{
		{"none yet", node("n1", nil, nil), nc, "spec.podCIDR is not assigned yet"},
		{"outside", node("n1", []string{"10.1.0.0/24"}, nil), nc, "spec.podCIDR 10.1.0.0/24 is outside Network 10.244.0.0/16"},
		{"wider than network", node("n1", []string{"10.0.0.0/8"}, nil), nc, "outside Network"},
		{"host bits", node("n1", []string{"10.244.1.1/24"}, nil), nc, `"10.244.1.1/24" is not a CIDR`},
		{"three", node("n1", []string{"10.244.1.0/24", "fd00::/64", "10.244.2.0/24"}, nil), nc, "more than one IPv4 and one IPv6"},
		{"no v6", node("n1", []string{"10.244.1.0/24"}, nil), mustConf(t, confDual), "has no IPv6 CIDR"},
		{"v6 only node, v4 network", node("n1", []string{"fd00:10:244::/64"}, nil), nc, "has no IPv4 CIDR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sn4, sn6, err := podCIDRs(tc.node, familiesOf(tc.nc))
			if err == nil {
				err = inNetwork(tc.node.Name, tc.nc, sn4, sn6)
			}
			if err == nil {
				t.Fatalf("no error for %v", tc.node.Spec)
			}
			if !errors.Is(err, ErrPodCIDR) || !strings.Contains(err.Error(), `node "n1"`) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("err = %q, want ErrPodCIDR naming node \"n1\" and %q", err, tc.field)
			}
		})
	}
}

func TestPodCIDRsDual(t *testing.T) {
	n := node("n1", []string{"fd00:10:244:1::/64", "10.244.1.0/24"}, nil)
	sn4, sn6, err := podCIDRs(n, dual)
	if err != nil || sn4 != netip.MustParsePrefix("10.244.1.0/24") || sn6 != netip.MustParsePrefix("fd00:10:244:1::/64") {
		t.Fatalf("podCIDRs = %v %v %v", sn4, sn6, err)
	}
	// An IPv4 network ignores the node's IPv6 CIDR.
	if sn4, sn6, err = podCIDRs(n, v4only); err != nil || sn6.IsValid() || !sn4.IsValid() {
		t.Fatalf("v4 only: %v %v %v", sn4, sn6, err)
	}
}

func TestNodeLease(t *testing.T) {
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	nc := mustConf(t, confV4)
	data := `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`

	l, err := nodeLease(node("n1", []string{"10.244.1.0/24"}, peerAnn(k, "192.0.2.1", data)), k, nc)
	if err != nil {
		t.Fatal(err)
	}
	want := lease.Lease{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "vxlan", BackendData: json.RawMessage(data)}}
	if !sameLease(l, want) {
		t.Errorf("lease = %+v, want %+v", l, want)
	}

	hg := peerAnn(k, "192.0.2.1", "null")
	hg[k.BackendType] = "host-gw"
	if l, err = nodeLease(node("n1", []string{"10.244.1.0/24"}, hg), k, nc); err != nil || l.Attrs.BackendData != nil {
		t.Errorf("host-gw: %+v, %v; want nil BackendData", l, err)
	}

	if _, err := nodeLease(node("n1", []string{"10.244.1.0/24"}, nil), k, nc); !errors.Is(err, errNotPeer) {
		t.Errorf("unannotated node: err = %v, want errNotPeer", err)
	}
	for _, bad := range []map[string]string{
		peerAnn(k, "", data),
		peerAnn(k, "2001:db8::1", data),
		peerAnn(k, "0.0.0.0", data),
		peerAnn(k, "192.0.2.1", `{"VNI":1,`),
		{k.SubnetKubeManaged: "true", k.BackendType: "vxlan", k.BackendData: data},
	} {
		if l, err := nodeLease(node("n1", []string{"10.244.1.0/24"}, bad), k, nc); err == nil || errors.Is(err, errNotPeer) {
			t.Errorf("annotations %v: lease %+v, err %v; want an error", bad, l, err)
		}
	}
}

// FuzzNodeLease feeds arbitrary annotations and podCIDRs (what any API
// client may write on a Node) through nodeLease: it must not panic, and a
// lease it accepts must be routable: subnets canonical and inside the
// network, public addresses of the right family, backend data valid JSON
// that survives the etcd encoding.
func FuzzNodeLease(f *testing.F) {
	f.Add("true", "vxlan", `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`, "192.0.2.1", "", "", "10.244.1.0/24", "", false)
	f.Add("true", "host-gw", "null", "192.0.2.1", "null", "2001:db8::1", "10.244.1.0/24", "fd00:10:244:1::/64", true)
	f.Add("true", "", "", "::ffff:1.2.3.4", "", "", "10.244.1.1/24", "", false)
	f.Add("false", "x", "{}", "1.2.3.4", "", "fe80::1%eth0", "10.0.0.0/8", "fd00::/8", true)
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	ncs := []*netconf.Config{mustConf(f, confV4), mustConf(f, confDual)}
	f.Fuzz(func(t *testing.T, managed, typ, data, ip, data6, ip6, cidr, cidr6 string, dualStack bool) {
		nc := ncs[0]
		if dualStack {
			nc = ncs[1]
		}
		n := node("n", nil, map[string]string{
			k.SubnetKubeManaged: managed, k.BackendType: typ, k.BackendData: data, k.PublicIP: ip,
			k.BackendV6Data: data6, k.PublicIPv6: ip6,
		})
		n.Spec.PodCIDR = cidr
		if cidr6 != "" {
			n.Spec.PodCIDRs = []string{cidr, cidr6}
		}
		l, err := nodeLease(n, k, nc)
		if err != nil {
			return
		}
		if !within(nc.Network, l.Subnet) || l.Subnet.Masked() != l.Subnet {
			t.Fatalf("subnet %v outside %v or not canonical", l.Subnet, nc.Network)
		}
		if nc.EnableIPv6 != l.Subnet6.IsValid() || (l.Subnet6.IsValid() && !within(nc.IPv6Network, l.Subnet6)) {
			t.Fatalf("subnet6 %v with IPv6 %v", l.Subnet6, nc.EnableIPv6)
		}
		if !l.Attrs.PublicIP.Is4() || (nc.EnableIPv6 && (!l.Attrs.PublicIPv6.Is6() || l.Attrs.PublicIPv6.Is4In6())) {
			t.Fatalf("public IPs %v %v", l.Attrs.PublicIP, l.Attrs.PublicIPv6)
		}
		b, err := json.Marshal(l.Attrs)
		if err != nil {
			t.Fatalf("marshal %+v: %v", l.Attrs, err)
		}
		var back lease.Attrs
		if err := json.Unmarshal(b, &back); err != nil || !back.Equal(l.Attrs) {
			t.Fatalf("round trip %s: %+v, %v", b, back, err)
		}
	})
}

func TestSlim(t *testing.T) {
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	n := node("n1", []string{"10.244.1.0/24"}, peerAnn(k, "192.0.2.1", "null"))
	n.Annotations["kubeadm.alpha.kubernetes.io/cri-socket"] = "unix:///run/containerd/containerd.sock"
	n.Labels = map[string]string{"kubernetes.io/hostname": "n1"}
	n.ResourceVersion = "42"
	n.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	n.Status.Images = []v1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 1}}
	n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady}}
	n.Spec.Taints = []v1.Taint{{Key: "x"}}
	obj, err := k.slim(n)
	if err != nil {
		t.Fatal(err)
	}
	s := obj.(*v1.Node)
	if s.Name != "n1" || s.ResourceVersion != "42" || s.Spec.PodCIDR != "10.244.1.0/24" || len(s.Spec.PodCIDRs) != 1 {
		t.Errorf("lost what flanneld reads: %+v", s)
	}
	if len(s.Annotations) != 4 || s.Labels != nil || s.ManagedFields != nil || s.Status.Images != nil ||
		s.Status.Conditions != nil || s.Spec.Taints != nil {
		t.Errorf("kept what flanneld does not read: %+v", s)
	}
	if _, err := k.slim("not a node"); err != nil {
		t.Errorf("slim of a tombstone: %v", err)
	}
}

// TestFeedFilter checks which node updates become lease events.
func TestFeedFilter(t *testing.T) {
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	var logs bytes.Buffer
	s := &Source{keys: k, node: "self", log: slog.New(slog.NewTextHandler(&logs, nil)), ownChanged: make(chan struct{})}
	f := newFeed(context.Background(), s, mustConf(t, confV4))
	take := func() []lease.Event {
		evs := f.pending
		f.pending = nil
		return evs
	}
	data := `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`
	n1 := node("n1", []string{"10.244.1.0/24"}, peerAnn(k, "192.0.2.1", data))

	f.set(node("n1", []string{"10.244.1.0/24"}, nil))
	if evs := take(); len(evs) != 0 {
		t.Fatalf("unannotated node: %v", evs)
	}
	f.set(n1)
	if evs := take(); len(evs) != 1 || evs[0].Type != lease.Added || evs[0].Lease.Subnet.String() != "10.244.1.0/24" {
		t.Fatalf("new peer: %v", evs)
	}

	// An update that changes nothing flanneld reads is no event.
	same := n1.DeepCopy()
	same.ResourceVersion = "2"
	same.Labels = map[string]string{"x": "y"}
	f.set(same)
	if evs := take(); len(evs) != 0 {
		t.Fatalf("unrelated update: %v", evs)
	}

	// Any one field is an update: public IP, backend data, type.
	for _, change := range []func(a map[string]string){
		func(a map[string]string) { a[k.PublicIP] = "192.0.2.2" },
		func(a map[string]string) { a[k.BackendData] = `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:01"}` },
		func(a map[string]string) { a[k.BackendType] = "host-gw" },
	} {
		c := n1.DeepCopy()
		change(c.Annotations)
		f.set(c)
		if evs := take(); len(evs) != 1 || evs[0].Type != lease.Added {
			t.Fatalf("changed %v: %v", c.Annotations, evs)
		}
		f.set(n1)
		take()
	}

	// A new podCIDR removes the old subnet and adds the new one.
	moved := n1.DeepCopy()
	moved.Spec.PodCIDR, moved.Spec.PodCIDRs = "10.244.9.0/24", []string{"10.244.9.0/24"}
	f.set(moved)
	if evs := take(); len(evs) != 2 || evs[0].Type != lease.Removed || evs[0].Lease.Subnet.String() != "10.244.1.0/24" ||
		evs[1].Type != lease.Added || evs[1].Lease.Subnet.String() != "10.244.9.0/24" {
		t.Fatalf("moved: %v", evs)
	}

	// Bad annotations: removed, and one warning naming the node however
	// often the node is updated.
	bad := moved.DeepCopy()
	bad.Annotations[k.PublicIP] = "garbage"
	f.set(bad)
	f.set(bad)
	if evs := take(); len(evs) != 1 || evs[0].Type != lease.Removed {
		t.Fatalf("bad annotations: %v", evs)
	}
	if n := strings.Count(logs.String(), "node=n1"); n != 1 {
		t.Errorf("%d warnings for n1, want 1:\n%s", n, logs.String())
	}
	f.set(moved)
	if evs := take(); len(evs) != 1 || evs[0].Type != lease.Added {
		t.Fatalf("repaired: %v", evs)
	}

	f.del(moved)
	if evs := take(); len(evs) != 1 || evs[0].Type != lease.Removed || evs[0].Lease.Attrs.BackendType != "" {
		t.Fatalf("deleted: %v", evs)
	}
	f.del(moved)
	if evs := take(); len(evs) != 0 {
		t.Fatalf("deleted twice: %v", evs)
	}
	if len(f.snapshot()) != 0 {
		t.Errorf("snapshot after delete: %v", f.snapshot())
	}
}

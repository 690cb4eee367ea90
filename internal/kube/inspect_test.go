package kube

import (
	"errors"
	"net/netip"
	"testing"
)

// Without a config, NodeLease reads the families the node has.
func TestNodeLeaseWithoutConfig(t *testing.T) {
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	ann := map[string]string{k.SubnetKubeManaged: "true", k.BackendType: "vxlan",
		k.BackendData: `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`, k.PublicIP: "192.0.2.1",
		k.BackendV6Data: `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:01"}`, k.PublicIPv6: "2001:db8::1"}

	n := node("v4", nil, ann)
	n.Spec.PodCIDR = "10.244.1.0/24"
	l, err := NodeLease(n, k, nil)
	if err != nil || l.Subnet != netip.MustParsePrefix("10.244.1.0/24") || l.Subnet6.IsValid() || l.Attrs.PublicIPv6.IsValid() {
		t.Errorf("v4 node: %+v %v", l, err)
	}
	n = node("dual", nil, ann)
	n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.2.0/24", []string{"10.244.2.0/24", "fd00:10:244:2::/64"}
	l, err = NodeLease(n, k, nil)
	if err != nil || l.Subnet6 != netip.MustParsePrefix("fd00:10:244:2::/64") || l.Attrs.PublicIPv6 != netip.MustParseAddr("2001:db8::1") || len(l.Attrs.BackendV6Data) == 0 {
		t.Errorf("dual-stack node: %+v %v", l, err)
	}
	n = node("v6", nil, ann)
	n.Spec.PodCIDR = "fd00:10:244:3::/64"
	if l, err = NodeLease(n, k, nil); err != nil || l.Subnet.IsValid() || !l.Subnet6.IsValid() {
		t.Errorf("v6-only node: %+v %v", l, err)
	}
	n = node("none", nil, ann)
	if _, err := NodeLease(n, k, nil); !errors.Is(err, ErrPodCIDR) {
		t.Errorf("no podCIDR: %v, want ErrPodCIDR", err)
	}
	if _, err := NodeLease(node("plain", nil, nil), k, nil); !errors.Is(err, ErrNotFlannelNode) {
		t.Errorf("unannotated node: %v, want ErrNotFlannelNode", err)
	}
	// With a config, its networks bound the podCIDRs.
	n = node("out", nil, ann)
	n.Spec.PodCIDR = "10.99.0.0/24"
	if _, err := NodeLease(n, k, mustConf(t, confV4)); !errors.Is(err, ErrPodCIDR) {
		t.Errorf("podCIDR outside Network: %v", err)
	}
}

func FuzzNodeLeaseWithoutConfig(f *testing.F) {
	f.Add("true", "vxlan", `{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`, "192.0.2.1", "2001:db8::1", "10.244.1.0/24", "fd00::/64")
	f.Add("true", "host-gw", "null", "192.0.2.1", "", "fd00::/64", "")
	f.Add("true", "", "", "", "", "not a cidr", "10.0.0.0/8")
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	f.Fuzz(func(t *testing.T, managed, typ, data, ip, ip6, cidr, cidr2 string) {
		n := node("n", nil, map[string]string{k.SubnetKubeManaged: managed, k.BackendType: typ,
			k.BackendData: data, k.BackendV6Data: data, k.PublicIP: ip, k.PublicIPv6: ip6})
		n.Spec.PodCIDR = cidr
		if cidr2 != "" {
			n.Spec.PodCIDRs = []string{cidr, cidr2}
		}
		l, err := NodeLease(n, k, nil)
		if err != nil {
			return
		}
		if !l.Subnet.IsValid() && !l.Subnet6.IsValid() {
			t.Fatalf("lease without a subnet: %+v", l)
		}
		if l.Subnet.IsValid() && (!l.Subnet.Addr().Is4() || !l.Attrs.PublicIP.Is4()) {
			t.Fatalf("IPv4 lease %v with public IP %v", l.Subnet, l.Attrs.PublicIP)
		}
		if l.Subnet6.IsValid() && (!l.Subnet6.Addr().Is6() || !l.Attrs.PublicIPv6.Is6()) {
			t.Fatalf("IPv6 lease %v with public IP %v", l.Subnet6, l.Attrs.PublicIPv6)
		}
	})
}

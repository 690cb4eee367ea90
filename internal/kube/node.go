package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// errNotPeer: the node does not carry kube-subnet-manager=true, so no
// flanneld runs there (yet); not a fault.
var errNotPeer = errors.New("not a flannel node")

// ErrPodCIDR is wrapped by Acquire's error when the node has no usable
// podCIDR: none assigned yet, or one outside the configured network. Both
// can be fixed without restarting flanneld (the controller-manager assigns
// podCIDRs late; an operator may re-create the node), so the caller retries.
var ErrPodCIDR = errors.New("kube: node pod CIDR unusable")

// podCIDRError is an ErrPodCIDR whose text is only what is wrong.
type podCIDRError struct{ msg string }

func (e *podCIDRError) Error() string        { return e.msg }
func (e *podCIDRError) Is(target error) bool { return target == ErrPodCIDR }

func cidrErr(format string, args ...any) error {
	return &podCIDRError{fmt.Sprintf(format, args...)}
}

// podCIDRs returns the node's podCIDR of each family the network uses. It
// reads spec.podCIDRs (at most one per family) and falls back to
// spec.podCIDR, which older API servers and hand-made nodes have alone.
// Errors name the node and the field.
func podCIDRs(n *v1.Node, fam families) (sn4, sn6 netip.Prefix, err error) {
	field, list := "spec.podCIDRs", n.Spec.PodCIDRs
	if len(list) == 0 && n.Spec.PodCIDR != "" {
		field, list = "spec.podCIDR", []string{n.Spec.PodCIDR}
	}
	if len(list) == 0 {
		return sn4, sn6, cidrErr("node %q: spec.podCIDR is not assigned yet (kube-controller-manager assigns it with --allocate-node-cidrs=true)", n.Name)
	}
	if len(list) > 2 {
		return sn4, sn6, cidrErr("node %q: %s %v: more than one IPv4 and one IPv6 CIDR", n.Name, field, list)
	}
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Masked() != p || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return netip.Prefix{}, netip.Prefix{}, cidrErr("node %q: %s %q is not a CIDR", n.Name, field, s)
		}
		dst := &sn4
		if p.Addr().Is6() {
			dst = &sn6
		}
		if dst.IsValid() {
			return netip.Prefix{}, netip.Prefix{}, cidrErr("node %q: %s %v: two CIDRs of one family", n.Name, field, list)
		}
		*dst = p
	}
	if !fam.v4 {
		sn4 = netip.Prefix{}
	} else if !sn4.IsValid() {
		return netip.Prefix{}, netip.Prefix{}, cidrErr("node %q: %s %v has no IPv4 CIDR, but the network is IPv4", n.Name, field, list)
	}
	if !fam.v6 {
		sn6 = netip.Prefix{}
	} else if !sn6.IsValid() {
		return netip.Prefix{}, netip.Prefix{}, cidrErr("node %q: %s %v has no IPv6 CIDR, but the network is IPv6", n.Name, field, list)
	}
	return sn4, sn6, nil
}

// inNetwork checks that the podCIDRs lie inside the configured networks.
func inNetwork(name string, nc *netconf.Config, sn4, sn6 netip.Prefix) error {
	if sn4.IsValid() && !within(nc.Network, sn4) {
		return cidrErr("node %q: spec.podCIDR %s is outside Network %s", name, sn4, nc.Network)
	}
	if sn6.IsValid() && !within(nc.IPv6Network, sn6) {
		return cidrErr("node %q: spec.podCIDRs %s is outside IPv6Network %s", name, sn6, nc.IPv6Network)
	}
	return nil
}

func within(outer, inner netip.Prefix) bool {
	return outer.IsValid() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

func familiesOf(nc *netconf.Config) families { return families{v4: nc.EnableIPv4, v6: nc.EnableIPv6} }

// nodeLease turns a peer's Node into its lease, reading the annotations
// under k. A node without kube-subnet-manager=true gives errNotPeer; one
// whose annotations or podCIDRs do not make a usable lease for every family
// of nc gives an error saying which field is wrong.
func nodeLease(n *v1.Node, k Keys, nc *netconf.Config) (lease.Lease, error) {
	a := n.Annotations
	if a[k.SubnetKubeManaged] != "true" {
		return lease.Lease{}, errNotPeer
	}
	fam := familiesOf(nc)
	sn4, sn6, err := podCIDRs(n, fam)
	if err != nil {
		return lease.Lease{}, err
	}
	if err := inNetwork(n.Name, nc, sn4, sn6); err != nil {
		return lease.Lease{}, err
	}
	l := lease.Lease{Subnet: sn4, Subnet6: sn6, Attrs: lease.Attrs{BackendType: a[k.BackendType]}}
	if fam.v4 {
		if l.Attrs.PublicIP, err = annotationAddr(a, k.PublicIP, false); err != nil {
			return lease.Lease{}, err
		}
		if l.Attrs.BackendData, err = annotationJSON(a, k.BackendData); err != nil {
			return lease.Lease{}, err
		}
	}
	if fam.v6 {
		if l.Attrs.PublicIPv6, err = annotationAddr(a, k.PublicIPv6, true); err != nil {
			return lease.Lease{}, err
		}
		if l.Attrs.BackendV6Data, err = annotationJSON(a, k.BackendV6Data); err != nil {
			return lease.Lease{}, err
		}
	}
	return l, nil
}

func annotationAddr(a map[string]string, key string, v6 bool) (netip.Addr, error) {
	s, ok := a[key]
	if !ok {
		return netip.Addr{}, fmt.Errorf("annotation %s is missing", key)
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Is6() != v6 || ip.Is4In6() || ip.Zone() != "" || ip.IsUnspecified() {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return netip.Addr{}, fmt.Errorf("annotation %s: %q is not an %s address", key, s, fam)
	}
	return ip, nil
}

func annotationJSON(a map[string]string, key string) (json.RawMessage, error) {
	s := a[key]
	if s == "" || s == "null" {
		return nil, nil
	}
	if !json.Valid([]byte(s)) {
		return nil, fmt.Errorf("annotation %s: %.80q is not JSON", key, s)
	}
	return json.RawMessage(s), nil
}

// slim is the informer's transform: it keeps of a Node only what flanneld
// reads (name, resource version, our annotations, pod CIDRs), so that the
// cache of a large cluster costs a few hundred bytes a node rather than the
// tens of kilobytes of status images, managedFields and labels.
func (k Keys) slim(obj any) (any, error) {
	n, ok := obj.(*v1.Node)
	if !ok {
		return obj, nil // cache.DeletedFinalStateUnknown and the like
	}
	out := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:            n.Name,
			UID:             n.UID,
			ResourceVersion: n.ResourceVersion,
		},
		Spec: v1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}
	for key, v := range n.Annotations {
		if k.mine(key) {
			if out.Annotations == nil {
				out.Annotations = make(map[string]string, 8)
			}
			out.Annotations[key] = v
		}
	}
	return out, nil
}

package kube

import (
	"context"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// This file exports, for the operator's tool (flannelctl with --kubeconfig),
// the reading of nodes that flanneld does, so both read annotations the
// same way.

// ErrNotFlannelNode is NodeLease's error for a node without
// kube-subnet-manager=true: no flanneld has published a lease there.
var ErrNotFlannelNode = errNotPeer

// NodeLease is the lease a peer's flanneld reads from node n, its
// annotations under k. With nc nil (a tool that does not know the
// network config) the families are those of the node's podCIDRs and
// their containment in the network is not checked.
func NodeLease(n *v1.Node, k Keys, nc *netconf.Config) (lease.Lease, error) {
	if nc == nil {
		nc = anyNetwork(n)
	}
	return nodeLease(n, k, nc)
}

// anyNetwork is a config of every family the node has a podCIDR of, each
// network the whole address space; IPv4 when it has none, so that the
// missing podCIDR is what NodeLease reports.
func anyNetwork(n *v1.Node) *netconf.Config {
	list := n.Spec.PodCIDRs
	if len(list) == 0 && n.Spec.PodCIDR != "" {
		list = []string{n.Spec.PodCIDR}
	}
	nc := &netconf.Config{}
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
		case p.Addr().Is4():
			nc.EnableIPv4, nc.Network = true, netip.MustParsePrefix("0.0.0.0/0")
		default:
			nc.EnableIPv6, nc.IPv6Network = true, netip.MustParsePrefix("::/0")
		}
	}
	if !nc.EnableIPv4 && !nc.EnableIPv6 {
		nc.EnableIPv4, nc.Network = true, netip.MustParsePrefix("0.0.0.0/0")
	}
	return nc
}

// ResolveNodeName finds this host's node as flanneld does: NODE_NAME, else
// the spec.nodeName of the pod POD_NAME in POD_NAMESPACE.
func ResolveNodeName(ctx context.Context, c corev1client.CoreV1Interface, getenv func(string) string) (string, error) {
	return nodeName(ctx, coreV1{c}, getenv)
}

package doctor

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/flannel-go/flannel/internal/backend/vxlan"
	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/kubestate"
)

// KubeInput is this host's Node in Kubernetes mode. Input.Leases are then
// the leases of every flannel node, and Input.EtcdErr says why the nodes
// could not be listed.
type KubeInput struct {
	Node kubestate.Node // valid when Err is nil
	// Err says why the node could not be read (its name unknown, the API
	// server unreachable, no such node).
	Err error
}

// checkKube replaces checkLease in Kubernetes mode: the lease is the
// node's podCIDR with flannel's annotations on it, and the node's
// NetworkUnavailable condition gates the scheduling of pods.
func (h *host) checkKube() []Finding {
	k := h.in.Kube
	h.backend = backendOf(h.in.Config, nil)
	if k.Err != nil {
		return []Finding{fail("node", "check --kubeconfig (or $KUBECONFIG) and --node-name (or NODE_NAME); the user needs get on nodes",
			"cannot read this host's Node: %v", k.Err)}
	}
	n := k.Node
	out := []Finding{checkPodCIDR(n), h.checkAnnotations(n)}
	if n.LeaseErr == nil {
		own := n.Lease
		h.own = &own
		h.backend = backendOf(h.in.Config, h.own)
		if _, err := h.sys.LinkWithAddr(own.Attrs.PublicIP); err != nil && own.Attrs.PublicIP.IsValid() {
			h.natted = true
		}
	}
	out = append(out, h.checkKubeLease(n)...)
	out = append(out, checkCondition(n))
	return out
}

func checkPodCIDR(n kubestate.Node) Finding {
	const c = "podCIDR"
	if len(n.PodCIDRs) == 0 {
		return fail(c, fmt.Sprintf("run kube-controller-manager with --allocate-node-cidrs=true and --cluster-cidr set to the Network of net-conf.json, or set one by hand: kubectl patch node %s -p '{\"spec\":{\"podCIDR\":\"<CIDR>\",\"podCIDRs\":[\"<CIDR>\"]}}'", n.Name),
			"node %q has no podCIDR (spec.podCIDR is empty): flanneld waits for one and this node has no pod network", n.Name)
	}
	if errors.Is(n.LeaseErr, kube.ErrPodCIDR) {
		return fail(c, "make kube-controller-manager's --cluster-cidr and the Network of net-conf.json agree; a podCIDR cannot be changed, so delete and re-register the node after fixing it",
			"%v", n.LeaseErr)
	}
	return ok(c, "node %q has podCIDR %s", n.Name, strings.Join(n.PodCIDRs, ","))
}

func (h *host) checkAnnotations(n kubestate.Node) Finding {
	const c = "annotations"
	k := n.Keys
	switch {
	case !n.Managed:
		return fail(c, "start flanneld with --kube-subnet-mgr on this node and see its log; if it runs with --kube-annotation-prefix, give flannelctl the same",
			"node %q lacks %s=true: flanneld has not published this node's lease, so no peer routes to it", n.Name, k.SubnetKubeManaged)
	case errors.Is(n.LeaseErr, kube.ErrPodCIDR):
		return skip(c, "no usable podCIDR, so no lease to compare the annotations with")
	case n.LeaseErr != nil:
		return fail(c, fmt.Sprintf("remove the bad annotation (kubectl annotate node %s <key>-) and restart flanneld; it publishes its own again", n.Name),
			"node %q carries annotations that make no lease, so every peer ignores it: %v", n.Name, n.LeaseErr)
	}
	l := n.Lease
	if cfg := h.in.Config; cfg != nil && typedLeases(cfg.BackendType) && l.Attrs.BackendType != cfg.BackendType {
		return fail(c, "restart flanneld so that it publishes the configured backend (and see its log if it does not)",
			"node %q publishes %s=%q but the network config says backend %q: peers set up the wrong datapath to this node", n.Name, k.BackendType, l.Attrs.BackendType, cfg.BackendType)
	}
	return ok(c, "node %q publishes backend %s, public IP %s", n.Name, orDash(l.Attrs.BackendType), addrs(l.Attrs.PublicIP, l.Attrs.PublicIPv6))
}

// checkKubeLease compares the node's lease with subnet.env and the host.
func (h *host) checkKubeLease(n kubestate.Node) []Finding {
	const c = "lease"
	var out []Finding
	if h.in.EtcdErr != nil {
		out = append(out, fail(c, "the user needs list on nodes (flannel's ClusterRole grants get, list and watch)",
			"cannot list the nodes: %v", h.in.EtcdErr))
	}
	if h.own == nil {
		return out
	}
	if !h.envOK() {
		return append(out, skip(c, "no subnet.env to compare the node's podCIDR with"))
	}
	e, cfg := h.in.Env, h.in.Config
	if cfg != nil && cfg.EnableIPv4 && e.Network.IsValid() && e.Network != cfg.Network {
		out = append(out, fail(c, "restart flanneld so that it reads the new config and rewrites subnet.env, then restart the pods on this node",
			"subnet.env has FLANNEL_NETWORK=%s but the network config says Network %s: the config changed after flanneld started", e.Network, cfg.Network))
	}
	sn := e.Subnet.Masked()
	if h.own.Subnet.IsValid() && sn != h.own.Subnet {
		return append(out, fail(c, "restart flanneld: it rewrites subnet.env from the podCIDR; then restart the pods on this node",
			"subnet.env has FLANNEL_SUBNET=%s but node %q's podCIDR is %s: subnet.env is stale or belongs to another node", e.Subnet, n.Name, h.own.Subnet))
	}
	out = append(out, ok(c, "%s is node %q's podCIDR, backend %s", sn, n.Name, orDash(h.backend)))
	return append(out, h.checkPublicIP(n)...)
}

// checkPublicIP checks that the addresses the node publishes are this
// host's, unless the user overwrote them (NAT).
func (h *host) checkPublicIP(n kubestate.Node) []Finding {
	const c = "public-ip"
	var out []Finding
	for _, p := range []struct {
		ip        netip.Addr
		key, over string
	}{
		{h.own.Attrs.PublicIP, n.Keys.PublicIP, n.Keys.PublicIPOverwrite},
		{h.own.Attrs.PublicIPv6, n.Keys.PublicIPv6, n.Keys.PublicIPv6Overwrite},
	} {
		if !p.ip.IsValid() {
			continue
		}
		l, err := h.sys.LinkWithAddr(p.ip)
		switch {
		case err == nil:
			out = append(out, ok(c, "%s %s is an address of %s", p.key, p.ip, l.Name))
		case n.Annotations[p.over] == p.ip.String():
			out = append(out, ok(c, "%s %s is not on this host but set by %s (NAT)", p.key, p.ip, p.over))
		default:
			out = append(out, warn(c, fmt.Sprintf("run doctor on node %s itself; if the host is behind NAT, set the address peers reach in %s; else restart flanneld with the right --iface or --public-ip", n.Name, p.over),
				"%s %s is not an address of this host: peers send node %q's overlay traffic there", p.key, p.ip, n.Name))
		}
	}
	return out
}

func checkCondition(n kubestate.Node) Finding {
	const c = "condition"
	cond := n.NetworkUnavailable
	switch {
	case cond == nil:
		return warn(c, "see flanneld's log: it sets NetworkUnavailable=False (reason FlannelIsUp) once subnet.env is written, unless run with --set-node-network-unavailable=false",
			"node %q has no NetworkUnavailable condition: flanneld has not finished starting, or does not set it", n.Name)
	case cond.Status == "True":
		return fail(c, "start flanneld on this node; if it runs, see its log for why it cannot patch the node's status (RBAC: patch on nodes/status)",
			"node %q has NetworkUnavailable=True (%s): it is tainted node.kubernetes.io/network-unavailable and no pods are scheduled there", n.Name, orDash(strings.TrimSpace(cond.Reason+" "+cond.Message)))
	case cond.Status != "False":
		return warn(c, "see flanneld's log; it sets the condition to False once up",
			"node %q has NetworkUnavailable=%s", n.Name, cond.Status)
	case cond.Reason != kube.ReasonFlannelIsUp:
		return warn(c, "make sure flannel is the only pod network of this cluster (a cloud route controller or another CNI also sets this condition)",
			"node %q has NetworkUnavailable=False with reason %q, not %s: something other than flanneld set it", n.Name, cond.Reason, kube.ReasonFlannelIsUp)
	}
	return ok(c, "node %q has NetworkUnavailable=False (%s)", n.Name, cond.Reason)
}

// checkVtep compares the VXLAN device's MAC with the VtepMAC this host
// publishes, in its lease or its node's backend-data annotation: peers
// address their overlay frames to the published one, and the device
// drops frames for any other.
func (h *host) checkVtep() []Finding {
	const c = "vtep"
	if h.backend != vxlan.Type || h.dev == nil || len(h.dev.MAC) == 0 || h.own == nil {
		return nil
	}
	where := "its lease"
	fix := "restart flanneld: it publishes the device's MAC again"
	if h.in.Kube != nil {
		where = fmt.Sprintf("node %q's %s annotation", h.in.Kube.Node.Name, h.in.Kube.Node.Keys.BackendData)
		fix = "restart flanneld: it publishes the device's MAC in the annotation again (or delete " + h.dev.Name + ": flanneld recreates it with the published MAC)"
	}
	d, err := vxlan.DecodeLeaseData(h.own.Attrs.BackendData)
	if err != nil {
		return []Finding{fail(c, fix, "%s has no usable vxlan data: %v", where, err)}
	}
	mac := strings.ToLower(h.dev.MAC.String())
	if d.VtepMAC.String() != mac {
		return []Finding{fail(c, fix,
			"%s has MAC %s but %s publishes VtepMAC %s: peers address this host's overlay frames to a MAC it drops", h.dev.Name, mac, where, d.VtepMAC)}
	}
	return []Finding{ok(c, "%s has the published VtepMAC %s", h.dev.Name, mac)}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func addrs(a ...netip.Addr) string {
	var s []string
	for _, x := range a {
		if x.IsValid() {
			s = append(s, x.String())
		}
	}
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

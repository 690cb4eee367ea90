package doctor

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/flannel-go/flannel/internal/lease"
)

// peers are the other hosts' leases that a datapath would use.
func (h *host) peers() []lease.Lease {
	var out []lease.Lease
	for _, l := range h.in.Leases {
		if h.own != nil && (l.Subnet == h.own.Subnet || l.Attrs.PublicIP == h.own.Attrs.PublicIP) {
			continue
		}
		if !l.Attrs.PublicIP.IsValid() || !l.Subnet.IsValid() {
			continue
		}
		// A reservation no host has taken yet carries no backend data.
		if l.Reserved() && l.Attrs.BackendType == "" && len(l.Attrs.BackendData) == 0 && typedLeases(h.backend) {
			continue
		}
		out = append(out, l)
	}
	return out
}

// probeAddr is the peer address a probe through the overlay goes to: the
// peer's subnet address, which sits on its flannel.<VNI> or flannel0 as a
// /32, or for host-gw its bridge's first address.
func probeAddr(backend string, sn netip.Prefix) netip.Addr {
	if backend == "host-gw" {
		return sn.Addr().Next()
	}
	return sn.Addr()
}

func (h *host) checkPeers(ctx context.Context) []Finding {
	const c = "peers"
	if h.own == nil || !h.envOK() {
		return nil
	}
	switch h.backend {
	case "vxlan", "udp", "host-gw", "wireguard":
	default:
		return []Finding{skip(c, "backend %q has no datapath to probe", h.backend)}
	}
	var out []Finding
	var peers []lease.Lease
	for _, p := range h.peers() {
		if typedLeases(h.backend) && p.Attrs.BackendType != h.backend {
			out = append(out, warn(c, "run the same backend on every host (the config's Backend.Type), then restart that host's flanneld",
				"peer %s (%s) announces backend %q, this host runs %q: no route to it", p.Subnet, p.Attrs.PublicIP, p.Attrs.BackendType, h.backend))
			continue
		}
		peers = append(peers, p)
	}
	if len(peers) == 0 {
		return append(out, ok(c, "no peers"))
	}
	// Round 1: a small probe through the overlay and one on the underlay
	// to each peer; round 2: a full-size DF probe to those that answered.
	probes := make([]Probe, 0, 2*len(peers))
	for _, p := range peers {
		probes = append(probes, Probe{Dst: probeAddr(h.backend, p.Subnet)}, Probe{Dst: p.Attrs.PublicIP})
	}
	res := h.sys.Probe(ctx, probes, h.in.ProbeTimeout)
	mtu := h.in.Env.MTU
	var big []Probe
	var bigPeers []lease.Lease
	for i, p := range peers {
		over, under := res[2*i], res[2*i+1]
		dst := probes[2*i].Dst
		switch {
		case over.Err != nil:
			out = append(out, skip(c, "peer %s: cannot probe %s: %v", p.Subnet, dst, over.Err))
		case over.Replied:
			big = append(big, Probe{Dst: dst, Size: mtu, DF: true})
			bigPeers = append(bigPeers, p)
		case h.backend == "host-gw" && under.Replied:
			out = append(out, skip(c, "peer %s: %s (its bridge) does not answer, though the host %s does: no containers there yet?", p.Subnet, dst, p.Attrs.PublicIP))
		case under.Replied:
			out = append(out, fail(c, h.unreachableFix(p),
				"peer %s: %s does not answer through the overlay, though the host %s answers on the underlay", p.Subnet, dst, p.Attrs.PublicIP))
		case p.Reserved() && h.in.Kube == nil: // a node's lease has no etcd ID, yet is no reservation
			// untyped leases carry no backend data, so an untaken
			// reservation looks like a taken one until probed.
			out = append(out, skip(c, "peer %s: reserved for %s, which does not answer: not up yet?", p.Subnet, p.Attrs.PublicIP))
		default:
			gone := "`flannelctl leases release " + p.Subnet.String() + "`"
			if h.in.Kube != nil {
				gone = "delete its Node (`flannelctl leases show " + p.Subnet.String() + "` names it)"
			}
			out = append(out, fail(c, "check that the host is up and reachable from here (routing, firewalls); if it is gone for good, "+gone,
				"peer %s: neither %s (overlay) nor the host %s (underlay) answers", p.Subnet, dst, p.Attrs.PublicIP))
		}
	}
	passed := 0
	if len(big) > 0 {
		bres := h.sys.Probe(ctx, big, h.in.ProbeTimeout)
		for i, p := range bigPeers {
			r := bres[i]
			path := fmt.Sprintf("this host → %s → %s", p.Attrs.PublicIP, big[i].Dst)
			if h.ext != nil {
				path = fmt.Sprintf("%s (%s, MTU %d) → %s → %s", h.devOr("overlay"), h.ext.Name, h.ext.MTU, p.Attrs.PublicIP, big[i].Dst)
			}
			fix := "find the hop with the smaller MTU (switch port, tunnel, VPN, cloud network) and raise it, or lower the overlay MTU (vxlan: Backend.MTU in the config) and restart flanneld and the containers"
			switch {
			case r.Err != nil:
				out = append(out, skip(c, "peer %s: cannot send a %d-byte probe: %v", p.Subnet, mtu, r.Err))
			case r.Replied:
				passed++
			case r.TooBig && r.RouteMTU > 0 && h.dev != nil && r.RouteMTU < h.dev.MTU:
				out = append(out, fail(c, "find and fix the hop with the smaller MTU; once fixed, the cached value expires within 10 minutes or `ip route flush cache` drops it at once. Or lower the overlay MTU (vxlan: Backend.MTU in the config) and restart flanneld and the containers",
					"peer %s: a %d-byte packet (FLANNEL_MTU) does not fit: the kernel caches a path MTU of %d for %s (`ip route get %s`), learnt from a smaller MTU on the path %s",
					p.Subnet, mtu, r.RouteMTU, big[i].Dst, big[i].Dst, path))
			case r.TooBig:
				out = append(out, fail(c, fix, "peer %s: a %d-byte packet (FLANNEL_MTU) does not fit the local route on %s", p.Subnet, mtu, path))
			case r.PathMTU > 0:
				out = append(out, fail(c, fix, "peer %s: a %d-byte packet (FLANNEL_MTU) is too big for the path %s: a router reported MTU %d", p.Subnet, mtu, path, r.PathMTU))
			default:
				out = append(out, fail(c, fix, "peer %s: small packets pass but %d-byte ones (FLANNEL_MTU, don't fragment) are lost on the path %s: a hop has a smaller MTU", p.Subnet, mtu, path))
			}
		}
	}
	if passed > 0 {
		out = append(out, ok(c, "%d of %d peers reachable through the overlay with %d-byte packets (FLANNEL_MTU)", passed, len(peers), mtu))
	}
	return out
}

func (h *host) devOr(def string) string {
	if h.dev != nil {
		return h.dev.Name
	}
	return def
}

func (h *host) unreachableFix(p lease.Lease) string {
	switch h.backend {
	case "vxlan":
		return fmt.Sprintf("check on %s that flanneld runs and its %s exists, and that UDP port 8472 (VXLAN) is allowed between the hosts (firewalls, security groups)", p.Attrs.PublicIP, h.devOr("flannel.1"))
	case "udp":
		return fmt.Sprintf("check on %s that flanneld runs, and that UDP port 8285 is allowed between the hosts", p.Attrs.PublicIP)
	case "wireguard":
		return fmt.Sprintf("check on %s that flanneld runs, that every host has the same PSK, and that the WireGuard port (51820 unless ListenPort says otherwise) is allowed between the hosts; the wireguard findings below say more", p.Attrs.PublicIP)
	}
	return fmt.Sprintf("check on %s that flanneld runs and the hosts share an L2 segment (host-gw needs it); `ip route get %s` shows the route used", p.Attrs.PublicIP, p.Subnet.Addr())
}

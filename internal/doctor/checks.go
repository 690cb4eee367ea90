package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/backend/alloc"
	"github.com/flannel-go/flannel/internal/backend/hostgw"
	"github.com/flannel-go/flannel/internal/backend/udp"
	"github.com/flannel-go/flannel/internal/backend/vxlan"
	"github.com/flannel-go/flannel/internal/backend/wireguard"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

func (h *host) envOK() bool { return h.in.EnvErr == nil && h.in.Env.Subnet.IsValid() }

func (h *host) checkSubnetEnv() Finding {
	const c = "subnet.env"
	e := h.in.Env
	switch {
	case errors.Is(h.in.EnvErr, fs.ErrNotExist):
		return fail(c, "start flanneld (or see its log for why it has no lease yet); CNI and Docker fail with \"subnet.env: no such file\" until it exists",
			"%s does not exist: flanneld is not running or has not acquired a lease yet", h.in.SubnetFile)
	case h.in.EnvErr != nil:
		return fail(c, "restart flanneld; it rewrites the file", "%s cannot be read: %v", h.in.SubnetFile, h.in.EnvErr)
	case !e.Subnet.IsValid():
		return fail(c, "restart flanneld; it rewrites the file", "%s has no FLANNEL_SUBNET", h.in.SubnetFile)
	case e.MTU <= 0:
		return fail(c, "restart flanneld; it rewrites the file", "%s has no FLANNEL_MTU", h.in.SubnetFile)
	}
	return ok(c, "%s: FLANNEL_SUBNET=%s FLANNEL_MTU=%d", h.in.SubnetFile, e.Subnet, e.MTU)
}

func (h *host) checkLease() []Finding {
	const c = "lease"
	if h.in.EtcdErr != nil {
		return []Finding{fail(c, "check --etcd-endpoints and the TLS/auth flags (or the FLANNELD_ETCD_* variables), and that etcd is up",
			"cannot read the leases from etcd: %v", h.in.EtcdErr)}
	}
	h.backend = backendOf(h.in.Config, nil)
	if !h.envOK() {
		return []Finding{skip(c, "no subnet.env, so this host's lease is unknown")}
	}
	var out []Finding
	cfg := h.in.Config
	e := h.in.Env
	if cfg != nil && cfg.EnableIPv4 && e.Network.IsValid() && e.Network != cfg.Network {
		out = append(out, fail(c, "restart flanneld so it leases a subnet of the new network, then restart the containers",
			"subnet.env has FLANNEL_NETWORK=%s but the config in etcd says Network %s: the config changed after flanneld started", e.Network, cfg.Network))
	}
	sn := e.Subnet.Masked()
	for i, l := range h.in.Leases {
		if l.Subnet == sn {
			h.own = &h.in.Leases[i]
			break
		}
	}
	if h.own == nil {
		return append(out, fail(c, "restart flanneld: it leases a subnet again (the same one if it is free) and rewrites subnet.env; `flannelctl leases list` shows the current leases",
			"no lease for %s (this host's FLANNEL_SUBNET) in etcd: the lease expired or was deleted, or subnet.env is stale", sn))
	}
	h.backend = backendOf(h.in.Config, h.own)
	if _, err := h.sys.LinkWithAddr(h.own.Attrs.PublicIP); err != nil {
		h.natted = true
	}
	what := fmt.Sprintf("leased by %s", h.own.Attrs.PublicIP)
	switch {
	case h.own.Reserved():
		what = fmt.Sprintf("reserved for %s (no expiry)", h.own.Attrs.PublicIP)
	case !h.own.Expires.IsZero():
		left := time.Until(h.own.Expires)
		if left < time.Minute {
			out = append(out, warn(c, "check that flanneld runs and reaches etcd; it renews the lease well before it expires",
				"the lease of %s expires in %s and has not been renewed", sn, roughly(left)))
		}
		what += ", expires in " + roughly(left)
	}
	note := ""
	if h.natted {
		note = "; that address is not on this host (NAT or --public-ip)"
	}
	return append(out, ok(c, "%s %s, backend %s%s", sn, what, h.backend, note))
}

// roughly formats a duration to the minute (23h59m, 5m), or to the
// second below one.
func roughly(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Minute:
		return d.Round(time.Second).String()
	}
	m := int(d.Round(time.Minute).Minutes())
	if m < 60 {
		return fmt.Sprintf("%dm", m)
	}
	return fmt.Sprintf("%dh%02dm", m/60, m%60)
}

// backendOf is the backend a host runs: the config's type, which is what
// every flanneld of the network uses. The lease's type is the fallback
// (untyped backends' leases carry none).
func backendOf(cfg *netconf.Config, own *lease.Lease) string {
	if cfg != nil && cfg.BackendType != "" {
		return cfg.BackendType
	}
	if own != nil && own.Attrs.BackendType != "" {
		return own.Attrs.BackendType
	}
	return ""
}

// backends are the facts of every backend the doctor can diagnose, from
// the backend packages themselves.
var backends = map[string]backend.Info{
	vxlan.Type:     vxlan.Info,
	hostgw.Type:    hostgw.Info,
	udp.Type:       udp.Info,
	alloc.Type:     alloc.Info,
	wireguard.Type: wireguard.Info,
}

// DeviceName is the overlay device of a backend, "" for none or an unknown
// backend: for vxlan flannel.<VNI>, the VNI from the own lease, else from
// the config, else 1; flannel0 for udp.
func DeviceName(name string, cfg *netconf.Config, own *lease.Lease) string {
	info, ok := backends[name]
	if !ok || info.Device == nil {
		return ""
	}
	var opts, data json.RawMessage
	ipv4 := true
	if cfg != nil {
		opts, ipv4 = cfg.Backend, cfg.EnableIPv4
	}
	if own != nil {
		data = own.Attrs.BackendData
	}
	return info.Device(opts, data, ipv4)
}

// overhead is what the backend adds to each packet on the underlay.
func overhead(name string) int { return backends[name].Overhead }

// typedLeases says whether the backend's leases carry a BackendType; an
// unknown backend is assumed to be typed, the common case.
func typedLeases(name string) bool {
	info, ok := backends[name]
	return !ok || info.TypedLeases
}

func (h *host) checkDevice() []Finding {
	const c = "device"
	h.devName = DeviceName(h.backend, h.in.Config, h.own)
	if h.devName == "" {
		if h.backend == "" {
			return []Finding{skip(c, "backend unknown (no network config)")}
		}
		return []Finding{ok(c, "backend %s uses no overlay device", h.backend)}
	}
	l, err := h.sys.Link(h.devName)
	if errors.Is(err, ErrNoLink) {
		return []Finding{fail(c, "start flanneld (it creates the device) and see its log if it does not",
			"%s does not exist: no overlay traffic leaves or reaches this host", h.devName)}
	}
	if err != nil {
		return []Finding{skip(c, "cannot read %s: %v", h.devName, err)}
	}
	h.dev = &l
	var out []Finding
	if !l.Up {
		out = append(out, fail(c, fmt.Sprintf("ip link set %s up, or restart flanneld", l.Name), "%s is down", l.Name))
	}
	if h.envOK() && l.MTU != h.in.Env.MTU {
		out = append(out, fail(c, "restart flanneld so the device and subnet.env agree, then restart the containers so they take the MTU",
			"%s has MTU %d but subnet.env says FLANNEL_MTU=%d: containers send packets of a size the device does not carry", l.Name, l.MTU, h.in.Env.MTU))
	}
	if h.own != nil {
		want := netip.PrefixFrom(h.own.Subnet.Addr(), 32)
		if !slices.Contains(l.Addrs, want) {
			out = append(out, fail(c, "restart flanneld; it puts the address back",
				"%s lacks its address %s: peers' replies to this host's overlay address are lost", l.Name, want))
		}
	}
	if len(out) == 0 {
		out = append(out, ok(c, "%s is up, MTU %d", l.Name, l.MTU))
	}
	return out
}

// bridges are where containers sit: Docker's and the CNI plugin's.
var bridges = []string{"cni0", "docker0"}

func (h *host) checkBridge() []Finding {
	const c = "bridge"
	if !h.envOK() {
		return nil
	}
	var out []Finding
	for _, name := range bridges {
		l, err := h.sys.Link(name)
		if err != nil {
			continue
		}
		bad := false
		if l.MTU > h.in.Env.MTU {
			bad = true
			out = append(out, fail(c, fmt.Sprintf("give %s and the containers FLANNEL_MTU=%d (Docker: --mtu; CNI: delete %s, the flannel plugin recreates it from subnet.env)", name, h.in.Env.MTU, name),
				"%s has MTU %d, more than FLANNEL_MTU=%d: large packets from containers do not fit the overlay", name, l.MTU, h.in.Env.MTU))
		}
		lease := h.in.Env.Subnet.Masked()
		for _, a := range l.Addrs {
			if a.Addr().Is4() && !lease.Contains(a.Addr()) {
				bad = true
				out = append(out, fail(c, fmt.Sprintf("ip link delete %s and restart the containers (Docker: set --bip from subnet.env); it was set up for an earlier lease", name),
					"%s has address %s, outside this host's subnet %s", name, a, lease))
			}
		}
		if !bad {
			out = append(out, ok(c, "%s: MTU %d, inside %s", name, l.MTU, lease))
		}
	}
	return out
}

// findExt finds the external interface: the VXLAN device's parent, else the
// interface holding our public IP, else the one routing to a peer.
func (h *host) findExt() {
	if h.dev != nil && h.dev.Parent > 0 {
		if l, err := h.sys.LinkByIndex(h.dev.Parent); err == nil {
			h.ext = &l
			return
		}
	}
	if h.own != nil {
		if l, err := h.sys.LinkWithAddr(h.own.Attrs.PublicIP); err == nil {
			h.ext = &l
			return
		}
	}
	for _, p := range h.peers() {
		if l, err := h.sys.RouteLink(p.Attrs.PublicIP); err == nil {
			h.ext = &l
			return
		}
	}
}

func (h *host) checkMTU() []Finding {
	const c = "mtu"
	if !h.envOK() || h.backend == "" {
		return nil
	}
	h.findExt()
	if h.ext == nil {
		return []Finding{skip(c, "external interface not found (public IP not local and no route to a peer)")}
	}
	oh := overhead(h.backend)
	mtu := h.in.Env.MTU
	if mtu+oh > h.ext.MTU {
		return []Finding{fail(c, fmt.Sprintf("restore the MTU of %s, or set a smaller one for the overlay (vxlan: Backend.MTU in the config), then restart flanneld and the containers", h.ext.Name),
			"FLANNEL_MTU=%d needs %d bytes on %s (%d bytes of %s overhead) but %s has MTU %d: full-size packets are dropped or fragmented",
			mtu, mtu+oh, h.ext.Name, oh, h.backend, h.ext.Name, h.ext.MTU)}
	}
	return []Finding{ok(c, "FLANNEL_MTU=%d + %d (%s) fits %s MTU %d", mtu, oh, h.backend, h.ext.Name, h.ext.MTU)}
}

func (h *host) checkForwarding() Finding {
	const c = "ip_forward"
	v, err := h.sys.Sysctl("net/ipv4/ip_forward")
	if err != nil {
		return skip(c, "cannot read net.ipv4.ip_forward: %v", err)
	}
	if v != "1" {
		return fail(c, "sysctl -w net.ipv4.ip_forward=1, and set it in /etc/sysctl.d/ so it survives a reboot",
			"net.ipv4.ip_forward is %s: this host does not route overlay traffic to or from its containers", v)
	}
	return ok(c, "net.ipv4.ip_forward is 1")
}

func (h *host) checkFirewall(ctx context.Context) Finding {
	const c = "forward"
	cfg := h.in.Config
	if cfg == nil || !cfg.EnableIPv4 {
		return skip(c, "network unknown (no network config)")
	}
	out, err := h.sys.IPTablesSave(ctx, "filter")
	if err != nil {
		return skip(c, "cannot read the iptables filter table: %v", err)
	}
	v := EvalForward(out, cfg.Network)
	if v.Dropped() {
		fix := fmt.Sprintf("run flanneld with --iptables-forward-rules=true (the default), or add: iptables -A FORWARD -s %s -j ACCEPT; iptables -A FORWARD -d %s -j ACCEPT", cfg.Network, cfg.Network)
		if cfg.EnableNFTables {
			fix = fmt.Sprintf("flannel's nftables forward chain cannot override a drop in iptables' FORWARD chain: add iptables -A FORWARD -s %s -j ACCEPT; iptables -A FORWARD -d %s -j ACCEPT (or set its policy to ACCEPT)", cfg.Network, cfg.Network)
		}
		return fail(c, fix, "iptables FORWARD drops overlay traffic: %s", v.Reason)
	}
	return ok(c, "iptables FORWARD accepts %s: %s", cfg.Network, v.Reason)
}

func (h *host) checkRPFilter() Finding {
	const c = "rp_filter"
	all, err := h.sys.Sysctl("net/ipv4/conf/all/rp_filter")
	if err != nil {
		return skip(c, "cannot read net.ipv4.conf.all.rp_filter: %v", err)
	}
	// The kernel applies the larger of "all" and the interface's value.
	eff, where := all, "all"
	if h.ext != nil {
		if v, err := h.sys.Sysctl("net/ipv4/conf/" + h.ext.Name + "/rp_filter"); err == nil && v > eff {
			eff, where = v, h.ext.Name
		}
	}
	if eff == "1" {
		ext := "<ext>"
		if h.ext != nil {
			ext = h.ext.Name
		}
		return warn(c, fmt.Sprintf("use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.%s.rp_filter=2", ext),
			"strict reverse-path filtering (rp_filter=1 on %s) drops packets that arrive on another interface than the route back to their source: multi-homed hosts and asymmetric host-gw paths lose traffic", where)
	}
	return ok(c, "rp_filter is %s (%s)", eff, map[string]string{"0": "off", "2": "loose"}[eff])
}

func (h *host) checkBrNetfilter() Finding {
	const c = "br_netfilter"
	v, err := h.sys.Sysctl("net/bridge/bridge-nf-call-iptables")
	if errors.Is(err, fs.ErrNotExist) {
		return warn(c, "modprobe br_netfilter, and list it in /etc/modules-load.d/ so it is loaded at boot",
			"br_netfilter is not loaded: traffic between containers on the same bridge bypasses iptables, so Kubernetes Services (kube-proxy) fail when client and backend pod share a node")
	}
	if err != nil {
		return skip(c, "cannot read net.bridge.bridge-nf-call-iptables: %v", err)
	}
	if v != "1" {
		return warn(c, "sysctl -w net.bridge.bridge-nf-call-iptables=1, and set it in /etc/sysctl.d/",
			"net.bridge.bridge-nf-call-iptables is %s: bridged container traffic bypasses iptables, so Kubernetes Services fail when client and backend pod share a node", v)
	}
	return ok(c, "bridged traffic passes iptables (bridge-nf-call-iptables=1)")
}

func (h *host) checkOffload(ctx context.Context) []Finding {
	const c = "offload"
	if h.backend != "vxlan" || h.dev == nil {
		return nil
	}
	on, err := h.sys.TxChecksumOffload(h.dev.Name)
	if err != nil {
		return []Finding{skip(c, "cannot read the offload features of %s: %v", h.dev.Name, err)}
	}
	if !on {
		return []Finding{ok(c, "tx-checksum-ip-generic is off on %s", h.dev.Name)}
	}
	var risks []string
	if h.natted {
		risks = append(risks, "this host's public IP is behind NAT")
	}
	if _, err := h.sys.Link("kube-ipvs0"); err == nil {
		risks = append(risks, "kube-proxy runs in IPVS mode")
	} else if b, err := h.sys.IPTablesSave(ctx, "nat"); err == nil && strings.Contains(string(b), ":KUBE-SERVICES ") {
		risks = append(risks, "kube-proxy NATs Service traffic")
	}
	fix := fmt.Sprintf("ethtool -K %s tx-checksum-ip-generic off (again after each flanneld restart that recreates the device)", h.dev.Name)
	if len(risks) > 0 {
		return []Finding{warn(c, fix,
			"tx-checksum-ip-generic is on for %s and %s: with some kernels VXLAN packets leave with bad checksums (\"UDP: bad checksum\" on peers, Service IPs unreachable, upstream issue #1279)",
			h.dev.Name, strings.Join(risks, " and "))}
	}
	return []Finding{ok(c, "tx-checksum-ip-generic is on for %s, fine without NAT or kube-proxy (should peers log \"UDP: bad checksum\": ethtool -K %s tx-checksum-ip-generic off)", h.dev.Name, h.dev.Name)}
}

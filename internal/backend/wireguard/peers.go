package wireguard

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/lease"
)

// devPlan is what one device carries: which families' subnets become
// AllowedIPs, and how a peer's endpoint is chosen.
type devPlan struct {
	name string
	port int
	v4   bool // IPv4 subnets as AllowedIPs
	v6   bool // IPv6 subnets as AllowedIPs
	// endpoint is the family of peer endpoints: 4 or 6, or 0 to choose
	// per peer (auto mode).
	endpoint int
	// separate: the device is one family's of a pair, and reads its
	// peers' port and key from that family's BackendData.
	separate bool
}

// plans returns the devices of a mode, IPv4's first. own6 says whether
// this host has an IPv6 underlay address (auto mode never picks an
// endpoint family it cannot send from).
func plans(c Config, v4, v6, own6 bool) []devPlan {
	if c.Mode == ModeSeparate {
		var out []devPlan
		if v4 {
			out = append(out, devPlan{name: DeviceV4, port: c.ListenPort, v4: true, endpoint: 4, separate: true})
		}
		if v6 {
			out = append(out, devPlan{name: DeviceV6, port: c.ListenPortV6, v6: true, endpoint: 6, separate: true})
		}
		return out
	}
	p := devPlan{name: DeviceV4, port: c.ListenPort, v4: v4, v6: v6}
	switch {
	case c.Mode == ModeIPv4:
		p.endpoint = 4
	case c.Mode == ModeIPv6:
		p.endpoint = 6
	case !own6 || !v6:
		p.endpoint = 4 // auto without IPv6 underlay
	case !v4:
		p.endpoint = 6
	}
	return []devPlan{p}
}

// peerSpec is one WireGuard peer as this backend configures it.
type peerSpec struct {
	endpoint  netip.AddrPort
	allowed   []netip.Prefix // sorted
	psk       wgtypes.Key    // zero: none
	keepalive time.Duration
	subnet    netip.Prefix // the lease it came from, for messages
}

func (p peerSpec) equal(q peerSpec) bool {
	return p.endpoint == q.endpoint && slices.Equal(p.allowed, q.allowed) && p.psk == q.psk && p.keepalive == q.keepalive
}

// skipFunc records that a lease gets no peer, and why.
type skipFunc func(l lease.Lease, problem string)

// desired turns the peer leases into the peers of the device of plan d.
// own is this host's public key: a lease announcing it is skipped. A key
// that two leases announce with the same endpoint gets both subnets (a
// host's old lease, not yet expired, next to its new one); with different
// endpoints the later lease is skipped, since one key has one endpoint.
func desired(d devPlan, c Config, peers []lease.Lease, own wgtypes.Key, skip skipFunc) map[wgtypes.Key]peerSpec {
	out := make(map[wgtypes.Key]peerSpec, len(peers))
	var psk wgtypes.Key
	if c.PSK != nil {
		psk = *c.PSK
	}
	for _, p := range peers {
		key, port, err := keyAndPort(d, p)
		if err != nil {
			skip(p, err.Error())
			continue
		}
		if port == 0 {
			port = d.port // upstream before 2025 did not say: assume ours
		}
		var ep netip.Addr
		switch fam := endpointFamily(d, p); {
		case fam == 4 && p.Attrs.PublicIP.Is4() && !p.Attrs.PublicIP.IsUnspecified():
			ep = p.Attrs.PublicIP
		case fam == 6 && p.Attrs.PublicIPv6.Is6() && !p.Attrs.PublicIPv6.IsUnspecified():
			ep = p.Attrs.PublicIPv6
		default:
			skip(p, fmt.Sprintf("no IPv%d PublicIP for the endpoint", fam))
			continue
		}
		var allowed []netip.Prefix
		if d.v4 && p.Subnet.IsValid() && p.Subnet.Addr().Is4() {
			allowed = append(allowed, p.Subnet.Masked())
		}
		if d.v6 && p.Subnet6.IsValid() && p.Subnet6.Addr().Is6() {
			allowed = append(allowed, p.Subnet6.Masked())
		}
		if len(allowed) == 0 {
			skip(p, "no subnet of the device's address family")
			continue
		}
		if key == own {
			skip(p, "announces this host's own public key (a copied key file?)")
			continue
		}
		spec := peerSpec{endpoint: netip.AddrPortFrom(ep, uint16(port)), allowed: allowed, psk: psk, keepalive: c.Keepalive, subnet: p.Subnet}
		if prev, dup := out[key]; dup {
			if prev.endpoint != spec.endpoint {
				skip(p, fmt.Sprintf("PublicKey is also announced by %s at %s", prev.subnet, prev.endpoint))
				continue
			}
			spec.allowed = append(prev.allowed, spec.allowed...)
			spec.subnet = prev.subnet
		}
		slices.SortFunc(spec.allowed, comparePrefix)
		spec.allowed = slices.Compact(spec.allowed)
		out[key] = spec
	}
	return out
}

// keyAndPort reads the peer's key and port for device d. A separate
// device reads its own family's data. One device reads the IPv4 data
// first: upstream's one-device modes advertise the port they listen on
// there and ListenPortV6, where they do not listen, in the IPv6 data.
func keyAndPort(d devPlan, p lease.Lease) (wgtypes.Key, int, error) {
	first, second := p.Attrs.BackendData, p.Attrs.BackendV6Data
	if d.separate && d.v6 {
		first, second = second, first
	}
	raw := first
	if len(raw) == 0 || string(raw) == "null" {
		raw = second
	}
	ld, err := DecodeLeaseData(raw)
	if err != nil {
		return wgtypes.Key{}, 0, err
	}
	return ld.PublicKey, ld.Port, nil
}

// endpointFamily is 4 or 6: the plan's, or in auto mode the family of the
// peer's public (not private, not link-local) address, IPv4 when both or
// neither are.
func endpointFamily(d devPlan, p lease.Lease) int {
	if d.endpoint != 0 {
		return d.endpoint
	}
	v4, v6 := p.Attrs.PublicIP, p.Attrs.PublicIPv6
	switch {
	case !v6.IsValid():
		return 4
	case !v4.IsValid():
		return 6
	case !public(v4) && public(v6):
		return 6
	}
	return 4
}

func public(a netip.Addr) bool {
	return a.IsGlobalUnicast() && !a.IsPrivate()
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// diff returns the configuration that turns have into want: changed and
// new peers first, then removals, so a subnet that moves from an old key
// to a new one is never without a peer. added lists the new keys.
func diff(have, want map[wgtypes.Key]peerSpec) (cfgs []wgtypes.PeerConfig, added []wgtypes.Key) {
	keys := make([]wgtypes.Key, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKey)
	for _, k := range keys {
		w := want[k]
		h, ok := have[k]
		if ok && h.equal(w) {
			continue
		}
		if !ok {
			added = append(added, k)
		}
		cfgs = append(cfgs, peerConfig(k, w))
	}
	var gone []wgtypes.Key
	for k := range have {
		if _, ok := want[k]; !ok {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, compareKey)
	for _, k := range gone {
		cfgs = append(cfgs, wgtypes.PeerConfig{PublicKey: k, Remove: true})
	}
	return cfgs, added
}

func compareKey(a, b wgtypes.Key) int {
	for i := range a {
		if a[i] != b[i] {
			return int(a[i]) - int(b[i])
		}
	}
	return 0
}

func peerConfig(k wgtypes.Key, s peerSpec) wgtypes.PeerConfig {
	psk, ka := s.psk, s.keepalive
	pc := wgtypes.PeerConfig{
		PublicKey:                   k,
		PresharedKey:                &psk,
		Endpoint:                    net.UDPAddrFromAddrPort(s.endpoint),
		PersistentKeepaliveInterval: &ka,
		ReplaceAllowedIPs:           true,
	}
	for _, a := range s.allowed {
		pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
	}
	return pc
}

// fromDevice reads the peers a device holds into the form desired builds.
func fromDevice(ps []wgtypes.Peer) map[wgtypes.Key]peerSpec {
	out := make(map[wgtypes.Key]peerSpec, len(ps))
	for _, p := range ps {
		s := peerSpec{psk: p.PresharedKey, keepalive: p.PersistentKeepaliveInterval}
		if p.Endpoint != nil {
			ap := p.Endpoint.AddrPort()
			s.endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		for _, a := range p.AllowedIPs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			ones, _ := a.Mask.Size()
			s.allowed = append(s.allowed, netip.PrefixFrom(ip.Unmap(), ones).Masked())
		}
		slices.SortFunc(s.allowed, comparePrefix)
		out[p.PublicKey] = s
	}
	return out
}

package doctor

import (
	"net/netip"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/backend/wireguard"
)

var _ WireGuardSystem = linuxSystem{}

// WireGuard reads dev like `wg show`: the kernel's over netlink, a
// userspace one over its UAPI socket.
func (linuxSystem) WireGuard(dev string) (WGDevice, error) {
	d, err := wireguard.ReadDevice(dev)
	if err != nil {
		return WGDevice{}, err
	}
	out := WGDevice{PublicKey: d.PublicKey.String(), ListenPort: d.ListenPort}
	for _, p := range d.Peers {
		wp := WGPeer{PublicKey: p.PublicKey.String(), LastHandshake: p.LastHandshakeTime}
		if p.PresharedKey != (wgtypes.Key{}) {
			wp.PresharedKey = p.PresharedKey.String()
		}
		if p.Endpoint != nil {
			ap := p.Endpoint.AddrPort()
			wp.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		for _, a := range p.AllowedIPs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				ones, _ := a.Mask.Size()
				wp.AllowedIPs = append(wp.AllowedIPs, netip.PrefixFrom(ip.Unmap(), ones))
			}
		}
		out.Peers = append(out.Peers, wp)
	}
	return out, nil
}

package doctor

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/backend/wireguard"
	"github.com/flannel-go/flannel/internal/lease"
)

// WGDevice is a WireGuard device as `wg show` prints it.
type WGDevice struct {
	PublicKey  string // base64
	ListenPort int
	Peers      []WGPeer
}

// WGPeer is one peer of a WGDevice.
type WGPeer struct {
	PublicKey     string
	Endpoint      netip.AddrPort // where its packets last came from (or were configured to go)
	AllowedIPs    []netip.Prefix
	LastHandshake time.Time // zero: never
	// PresharedKey is the base64 PSK, "" for none. It is compared,
	// never printed.
	PresharedKey string
}

// WireGuardSystem is the optional part of a System that reads WireGuard
// devices (kernel or userspace, like `wg show`); the checks find it by
// type assertion.
type WireGuardSystem interface {
	WireGuard(dev string) (WGDevice, error)
}

// rejectAfter is WireGuard's session lifetime: with traffic, a handshake
// is renewed every 2 minutes, so an older one means no successful
// handshake since.
const rejectAfter = 180 * time.Second

// checkWireGuard compares each WireGuard device with the leases: our key
// and port as announced, one peer with a recent handshake per lease, and
// no peer nobody leases. It runs after the peer probes, which give every
// working peer a fresh handshake.
func (h *host) checkWireGuard(now time.Time) []Finding {
	const c = "wireguard"
	if h.backend != wireguard.Type || h.own == nil || h.in.Config == nil {
		return nil
	}
	ws, ok := h.sys.(WireGuardSystem)
	if !ok {
		return []Finding{skip(c, "cannot read WireGuard devices here")}
	}
	cfg, err := wireguard.ParseConfig(h.in.Config.Backend)
	if err != nil {
		return []Finding{fail(c, "fix the Backend object of the network config (`flannelctl config validate`), then restart flanneld", "%v", err)}
	}
	var out []Finding
	for _, dev := range wireguard.Devices(cfg.Mode, h.in.Config.EnableIPv4, h.in.Config.EnableIPv6) {
		v6 := dev == wireguard.DeviceV6
		out = append(out, h.checkWGDevice(ws, dev, v6, cfg.PSK, now)...)
	}
	return out
}

func (h *host) checkWGDevice(ws WireGuardSystem, dev string, v6 bool, psk *wgtypes.Key, now time.Time) []Finding {
	const c = "wireguard"
	d, err := ws.WireGuard(dev)
	if err != nil {
		return []Finding{fail(c, "start flanneld (it creates the device) and see its log if it does not",
			"cannot read WireGuard device %s: %v", dev, err)}
	}
	dataOf := func(l lease.Lease) json.RawMessage {
		first, second := l.Attrs.BackendData, l.Attrs.BackendV6Data
		if v6 {
			first, second = second, first
		}
		if len(first) == 0 {
			return second
		}
		return first
	}
	var out []Finding
	if own, err := wireguard.DecodeLeaseData(dataOf(*h.own)); err != nil {
		out = append(out, fail(c, "restart flanneld; it writes its lease again", "this host's lease %s: %v", h.own.Subnet, err))
	} else {
		if own.PublicKey.String() != d.PublicKey {
			out = append(out, fail(c, "restart flanneld so device and lease agree again (was the key file replaced?)",
				"%s has public key %s but this host's lease announces %s: peers encrypt to a key this host does not hold", dev, d.PublicKey, own.PublicKey))
		}
		if own.Port != 0 && own.Port != d.ListenPort {
			out = append(out, fail(c, "restart flanneld so device and lease agree again",
				"%s listens on port %d but this host's lease announces port %d: peers send to a port nothing listens on", dev, d.ListenPort, own.Port))
		}
	}

	byKey := make(map[string]*WGPeer, len(d.Peers))
	for i := range d.Peers {
		byKey[d.Peers[i].PublicKey] = &d.Peers[i]
	}
	leased := map[string]bool{}
	fresh, idle := 0, 0
	for _, p := range h.peers() {
		if p.Attrs.BackendType != wireguard.Type {
			continue // checkPeers reports other types
		}
		ld, err := wireguard.DecodeLeaseData(dataOf(p))
		if err != nil {
			out = append(out, warn(c, "the host with this lease runs a broken or foreign flanneld; restart it, or release the lease if it is gone",
				"peer %s (%s): %v; flanneld ignores it", p.Subnet, p.Attrs.PublicIP, err))
			continue
		}
		k := ld.PublicKey.String()
		leased[k] = true
		wp, ok := byKey[k]
		switch {
		case !ok:
			out = append(out, fail(c, "see flanneld's log for \"skipping peer\" with this lease; restart flanneld",
				"peer %s (%s): %s has no peer with its key %s", p.Subnet, p.Attrs.PublicIP, dev, k))
			continue
		case wp.LastHandshake.IsZero():
			out = append(out, fail(c, fmt.Sprintf("make the PSK in the config the same for every host and restart the flanneld started with another one; check that UDP port %d is open between the hosts and that the peer's flanneld runs", d.ListenPort),
				"peer %s (%s, endpoint %s): no handshake ever completed: the hosts disagree on the PSK or a key, or the UDP port is blocked", p.Subnet, p.Attrs.PublicIP, wp.Endpoint))
			continue
		case now.Sub(wp.LastHandshake) > rejectAfter:
			idle++
			out = append(out, warn(c, "if the overlay to it fails, check that both hosts have the same PSK and that UDP is open between them",
				"peer %s (%s): last handshake %s ago; none since, though sessions last 3 minutes", p.Subnet, p.Attrs.PublicIP, roughly(now.Sub(wp.LastHandshake))))
		default:
			fresh++
		}
		if ld.Port != 0 && wp.Endpoint.IsValid() && int(wp.Endpoint.Port()) != ld.Port {
			out = append(out, warn(c, "set ListenPortV6 equal to ListenPort in the config (upstream's auto and ipv6 modes advertise ListenPortV6 but listen on ListenPort), or check for NAT",
				"peer %s: its lease announces port %d but its packets come from %s", p.Subnet, ld.Port, wp.Endpoint))
		}
	}
	wantPSK := ""
	if psk != nil {
		wantPSK = psk.String()
	}
	otherPSK := 0
	for _, wp := range d.Peers {
		if wp.PresharedKey != wantPSK {
			otherPSK++
		}
	}
	if otherPSK > 0 {
		out = append(out, fail(c, "restart this flanneld so it takes the config's PSK (flanneld reads the config once, at start); every host must use the same",
			"%d of %d peers of %s use a PSK other than the one in the network config: flanneld started with an older config", otherPSK, len(d.Peers), dev))
	}
	var stale []string
	for _, wp := range d.Peers {
		if !leased[wp.PublicKey] {
			stale = append(stale, fmt.Sprintf("%s (AllowedIPs %v)", wp.PublicKey, wp.AllowedIPs))
		}
	}
	if len(stale) > 0 {
		out = append(out, warn(c, fmt.Sprintf("flanneld removes peers nobody leases within seconds; if they stay, check that it runs, or remove them: wg set %s peer KEY remove", dev),
			"%s has %d stale peer(s) no lease announces: %s", dev, len(stale), strings.Join(stale, ", ")))
	}
	if len(out) == 0 {
		out = append(out, ok(c, "%s: key and port %d as announced, %d of %d peers with a handshake in the last 3 minutes", dev, d.ListenPort, fresh, fresh+idle))
	}
	return out
}

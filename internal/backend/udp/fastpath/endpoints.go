package fastpath

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// Endpoint is a local container the ingress program delivers to straight
// into its namespace (bpf_redirect_peer), bypassing flannel0, routing
// and the bridge.
type Endpoint struct {
	// Port is the ifindex of the host side of the container's veth, the
	// bridge port its MAC was learned on.
	Port int
	// MAC is the container's, BridgeMAC the bridge's: the frame's
	// destination and source, as the bridge would have sent it.
	MAC, BridgeMAC [6]byte
}

// Layout of the endpoints map's value: the host side of the container's
// veth, the container's MAC and the bridge's (the source of the frame,
// as the bridge would have sent it).
const (
	epIfindex = 0  // uint32
	epMAC     = 4  // [6]byte
	epSrcMAC  = 10 // [6]byte
	epSize    = 16
)

// marshalEndpoint renders e as the endpoints map's value.
func marshalEndpoint(e Endpoint) []byte {
	b := make([]byte, epSize)
	binary.NativeEndian.PutUint32(b[epIfindex:], uint32(e.Port))
	copy(b[epMAC:], e.MAC[:])
	copy(b[epSrcMAC:], e.BridgeMAC[:])
	return b
}

func parseEndpoint(b []byte) (Endpoint, bool) {
	if len(b) != epSize {
		return Endpoint{}, false
	}
	return Endpoint{
		Port:      int(binary.NativeEndian.Uint32(b[epIfindex:])),
		MAC:       [6]byte(b[epMAC : epMAC+6]),
		BridgeMAC: [6]byte(b[epSrcMAC : epSrcMAC+6]),
	}, true
}

// Kernel state the endpoints are derived from, reduced to what matters.
type (
	// bridgeInfo is a bridge holding (part of) our subnet.
	bridgeInfo struct {
		Index int
		MAC   [6]byte
	}
	// portInfo is a link enslaved to a bridge.
	portInfo struct {
		Index, Master int
		Kind          string // rtnetlink's kind: "veth", "tuntap", …
	}
	// neighInfo is an IPv4 neighbour entry with a link-layer address.
	neighInfo struct {
		IP    netip.Addr
		MAC   [6]byte
		Link  int
		Valid bool // a usable state: not incomplete or failed
	}
	// fdbInfo is a bridge FDB entry learned on a port (not the port's
	// own, local, address).
	fdbInfo struct {
		MAC  [6]byte
		Port int
	}
)

// peerKinds are the ports bpf_redirect_peer can deliver through: devices
// with a peer in another namespace.
var peerKinds = map[string]bool{"veth": true, "netkit": true}

// desiredEndpoints is what the endpoints map should hold: every
// neighbour of a bridge holding our subnet whose address is in the subnet
// and whose MAC the bridge learned behind a veth (or netkit) port of that
// same bridge.
func desiredEndpoints(own netip.Prefix, bridges []bridgeInfo, ports []portInfo, neighs []neighInfo, fdb []fdbInfo) map[netip.Addr]Endpoint {
	want := make(map[netip.Addr]Endpoint)
	if !own.IsValid() || !own.Addr().Is4() {
		return want
	}
	br := make(map[int]bridgeInfo, len(bridges))
	for _, b := range bridges {
		br[b.Index] = b
	}
	// port ifindex → its bridge, for the ports that qualify.
	master := make(map[int]int)
	for _, p := range ports {
		if _, ok := br[p.Master]; ok && peerKinds[p.Kind] {
			master[p.Index] = p.Master
		}
	}
	type key struct {
		bridge int
		mac    [6]byte
	}
	behind := make(map[key]int)
	for _, f := range fdb {
		if b, ok := master[f.Port]; ok {
			behind[key{b, f.MAC}] = f.Port
		}
	}
	for _, n := range neighs {
		b, ok := br[n.Link]
		if !ok || !n.Valid || !n.IP.Is4() || !own.Contains(n.IP) {
			continue
		}
		port, ok := behind[key{b.Index, n.MAC}]
		if !ok {
			continue
		}
		want[n.IP] = Endpoint{Port: port, MAC: n.MAC, BridgeMAC: b.MAC}
	}
	return want
}

// String formats e as ip(8) would describe the delivery.
func (e Endpoint) String() string {
	return fmt.Sprintf("lladdr %s dev #%d from %s", net.HardwareAddr(e.MAC[:]), e.Port, net.HardwareAddr(e.BridgeMAC[:]))
}

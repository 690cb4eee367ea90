// Package fastpath is the udp backend's in-kernel datapath: three eBPF
// programs that forward known peers' traffic in upstream flannel's udp
// wire format (one raw inner IPv4 packet per UDP datagram, from our public
// IP and port to the peer's, checksum 0) without crossing into userspace.
// The programs are written with cilium/ebpf's asm package, so building
// needs no C toolchain.
//
// # Where the programs sit, and why
//
//	container ─▶ bridge/veth ─▶ ip_forward ─▶ route 10.5.0.0/16 dev flannel0
//	  ─▶ tcx egress on flannel0: peer known? encapsulate, redirect_neigh ─▶ eth0
//	                                   unknown? pass ─▶ TUN ─▶ userspace (ICMP net-unreachable)
//	eth0 ─▶ XDP (driver mode, where the device runs GRO): datagram to our
//	  IP:port from a known peer, for our subnet? decapsulate, mark ─▶ GRO
//	eth0 ─▶ tcx ingress: marked? deliver. Datagram to our IP:port from a
//	  known peer, for our subnet? decapsulate and deliver:
//	                                   direct (opt-in), to a container on our bridge behind a veth:
//	                                   redirect_peer ─▶ the container's eth0
//	                                   otherwise: redirect into flannel0's ingress ─▶ ip_forward ─▶ container
//	                                   anything else? pass ─▶ stack ─▶ userspace socket
//
// The egress program sits on the TUN device flannel0, not on the host side
// of each container's veth (where the prototype sat). flanneld owns
// flannel0 but not the veths, which CNI plugins and Docker create and
// delete at any time. Every packet for the overlay, from any container or
// from the host itself, is routed to flannel0, so the kernel has already
// done what encapsulation would otherwise have to redo: the FORWARD chain
// and masquerade rules, the inner TTL decrement, fragmentation or ICMP
// frag-needed against flannel0's MTU (external MTU − 28). A GSO
// super-packet whose segments fit flannel0's MTU gets segments that fit
// the external MTU once encapsulated with BPF_F_ADJ_ROOM_FIXED_GSO. What
// the program passes on reaches the TUN exactly as before, so the
// userspace path is the fallback for free. Decapsulated packets enter the
// stack on flannel0, as those the userspace path writes into the TUN do,
// so reverse-path filtering, accept_local and firewall rules that name the
// device see the same thing in both datapaths.
//
// The XDP program is what makes the datapath as fast as the kernel's
// vxlan on a NIC: it strips the outer headers before GRO, so GRO merges
// the inner TCP segments into super-packets and the host forwards those,
// as vxlan's GRO handler arranges for its device. After GRO (the tcx
// ingress program alone) a NIC's datagrams for port 8285 reach the
// forwarding one by one. The XDP program gives each inner packet an
// Ethernet header from a random address of this host's (the mark in the
// config map) and the tcx program tells them by it. It runs only in
// driver mode (generic XDP comes after GRO) and only where the device
// runs GRO: a veth does not by default, and there XDP would only force
// the sender to segment.
//
// The ingress program leaves batches of datagrams that GRO or a peer's
// UDP_SEGMENT coalesced to the socket (the backend turns UDP GRO off on it
// while this datapath runs, so a NIC's datagrams arrive one by one). A TCP
// super-packet of our own egress program that crossed a virtual wire
// (veth) whole is taken apart like a single datagram: its outer and inner
// lengths both cover all of it, which no batch of datagrams satisfies.
// On this kernel bpf_skb_adjust_room cannot clear such a packet's
// encapsulation mark (BPF_F_ADJ_ROOM_DECAP_L4_UDP came later); that is
// harmless for a packet delivered to a local container through veths,
// which is the only place the program sends it. An upstream peer cannot
// read such super-packets, so on a virtual underlay the backend uses this
// datapath only when told to.
//
// # Maps
//
// "config" (array, one entry) holds our public IP, the port, the two
// ifindexes, our subnet and the mark; the programs pass everything until
// it is written. "peers" (LPM trie) maps a peer's subnet to its public IP, and
// "peer_ips" (hash) holds the public IPs the ingress program accepts
// datagrams from. The peer maps are kept as a desired state by SetPeers
// without reloading the programs. "endpoints" (hash, not pinned) maps a
// local container's IPv4 address to its veth and MACs for direct
// delivery; a goroutine of the Datapath keeps it from the kernel's
// neighbour and FDB tables (endpoints_linux.go). Maps and links are pinned under the pin
// directory, so a restarted flanneld adopts them: it loads new programs
// against the same maps and swaps them into the existing links.
package fastpath

import (
	"crypto/rand"
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// Config is what the programs need to know about this host.
type Config struct {
	// PublicIP is the source of our datagrams and the destination the
	// ingress program accepts: the external interface's address, where
	// the userspace path's socket is bound (behind NAT, not the address
	// peers are told).
	PublicIP netip.Addr
	// Port is Backend.Port: both the source and the destination port of
	// our datagrams, as upstream's socket sends from the port it listens on.
	Port uint16
	// ExtIndex is the external interface (tcx ingress; egress target).
	ExtIndex int
	// TUNIndex is flannel0 (tcx egress; ingress target).
	TUNIndex int
	// Own is our subnet: only datagrams for it, and not from it, are
	// decapsulated in the kernel. Invalid before Configure: then nothing
	// is decapsulated in the kernel.
	Own netip.Prefix
	// BridgeOnly turns direct delivery to local containers off: every
	// decapsulated packet enters the stack on flannel0 and reaches the
	// container through routing and the bridge, past the host's
	// netfilter hooks (see endpoints_linux.go for what direct delivery
	// bypasses).
	BridgeOnly bool
	// NoXDP leaves the external interface without the XDP program, so
	// that the ingress program decapsulates alone, after GRO.
	NoXDP bool
	// PinDir is where maps and links are pinned, a directory on a bpf
	// filesystem; "" pins nothing (a restart then reloads everything).
	PinDir string

	// mark is the Ethernet source address the XDP program gives the
	// packets it decapsulates, by which the ingress program knows them
	// (see xdpInsns); Open sets it.
	mark [6]byte
}

// Layout of the config map's value; offsets are used by the programs.
const (
	cfgPublicIP = 0  // [4]byte, network order
	cfgPort     = 4  // uint16, network order
	cfgExtIndex = 8  // uint32
	cfgTUNIndex = 12 // uint32
	cfgOwnNet   = 16 // [4]byte, network order
	cfgOwnMask  = 20 // [4]byte, network order
	cfgMark     = 24 // [6]byte, an Ethernet address
	cfgSize     = 32
)

// marshalConfig renders c as the config map's value. An invalid Own gives
// a mask and network that no IPv4 address matches (0.0.0.0/32 with the
// network 255.255.255.255), so nothing is decapsulated.
func marshalConfig(c Config) []byte {
	b := make([]byte, cfgSize)
	if c.PublicIP.Is4() {
		a := c.PublicIP.As4()
		copy(b[cfgPublicIP:], a[:])
	}
	binary.BigEndian.PutUint16(b[cfgPort:], c.Port)
	copy(b[cfgMark:], c.mark[:])
	binary.NativeEndian.PutUint32(b[cfgExtIndex:], uint32(c.ExtIndex))
	binary.NativeEndian.PutUint32(b[cfgTUNIndex:], uint32(c.TUNIndex))
	if c.Own.IsValid() && c.Own.Addr().Is4() {
		p := c.Own.Masked()
		a := p.Addr().As4()
		copy(b[cfgOwnNet:], a[:])
		var m uint32
		if p.Bits() > 0 {
			m = ^uint32(0) << (32 - p.Bits())
		}
		binary.BigEndian.PutUint32(b[cfgOwnMask:], m)
	} else {
		binary.BigEndian.PutUint32(b[cfgOwnNet:], ^uint32(0))
		binary.BigEndian.PutUint32(b[cfgOwnMask:], 0)
	}
	return b
}

// markFromConfig reads the mark back from a config map value; false if
// it holds none.
func markFromConfig(b []byte) ([6]byte, bool) {
	var m [6]byte
	if len(b) != cfgSize {
		return m, false
	}
	copy(m[:], b[cfgMark:])
	return m, m != [6]byte{}
}

// newMark returns a random locally administered unicast Ethernet address:
// one that no device on the wire has and no sender can know, so a frame
// from the wire cannot pass for a packet the XDP program decapsulated.
func newMark() [6]byte {
	var m [6]byte
	_, _ = rand.Read(m[:]) // never fails (crypto/rand)
	m[0] = m[0]&^0x01 | 0x02
	return m
}

// ownFromConfig reads our subnet back from a config map value; invalid
// if it holds none.
func ownFromConfig(b []byte) netip.Prefix {
	if len(b) != cfgSize {
		return netip.Prefix{}
	}
	m := binary.BigEndian.Uint32(b[cfgOwnMask:])
	ones := bits.LeadingZeros32(^m)
	if ones < 32 && m<<ones != 0 || m == 0 && binary.BigEndian.Uint32(b[cfgOwnNet:]) == ^uint32(0) {
		return netip.Prefix{} // not a prefix mask, or the "none" marker
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte(b[cfgOwnNet:cfgOwnNet+4])), ones).Masked()
}

// lpmKey is the peers map's key: a prefix length (host order) and the
// address bytes, as the kernel's struct bpf_lpm_trie_key_u8 lays it out.
func lpmKey(p netip.Prefix) []byte {
	b := make([]byte, 8)
	binary.NativeEndian.PutUint32(b, uint32(p.Bits()))
	a := p.Masked().Addr().As4()
	copy(b[4:], a[:])
	return b
}

func parseLPMKey(b []byte) (netip.Prefix, bool) {
	if len(b) != 8 {
		return netip.Prefix{}, false
	}
	bits := int(binary.NativeEndian.Uint32(b))
	return netip.PrefixFrom(netip.AddrFrom4([4]byte(b[4:])), bits).Masked(), bits <= 32
}

// Byte values as a little- or big-endian host loads them. The programs
// compare packet fields loaded with native loads against these, so both
// sides have the same byte order; multi-byte constants are built from
// their wire bytes here rather than written as integers.
func wireHalf(b0, b1 byte) int32 {
	return int32(binary.NativeEndian.Uint16([]byte{b0, b1}))
}

// ethPIP is ETH_P_IP (0x0800) as a native load of the wire bytes sees it.
var ethPIP = wireHalf(0x08, 0x00)

// fragMask selects the MF flag and the fragment offset of the 16-bit
// flags/offset field as a native load sees it.
var fragMask = wireHalf(0x3f, 0xff)

// ipDF is the flags/offset field with only DF set, as a native store
// writes it.
var ipDF = wireHalf(0x40, 0x00)

// ttlCheckDelta is what the IPv4 checksum, as a native load sees it,
// grows by when the TTL drops by one: htons(0x0100).
var ttlCheckDelta = wireHalf(0x01, 0x00)

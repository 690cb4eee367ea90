package udp

import "encoding/binary"

// IPv4 header layout (RFC 791) and the few protocol numbers we look at.
const (
	ipv4HeaderLen = 20 // without options
	ipOffLen      = 2
	ipOffID       = 4
	ipOffFrag     = 6
	ipOffTTL      = 8
	ipOffProto    = 9
	ipOffCsum     = 10
	ipOffSrc      = 12
	ipOffDst      = 16

	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17

	ipFlagMF   = 0x2000
	ipFragMask = 0x1fff

	// icmpTTL is what upstream's proxy puts in its unreachables.
	icmpTTL = 8
	// maxICMPLen bounds an unreachable: IP header, ICMP header, the
	// quoted header with options and 8 bytes of its payload.
	maxICMPLen = ipv4HeaderLen + 8 + 60 + 8
)

// ipv4Header checks that pkt starts with a plausible IPv4 header and
// returns its header length and total length. The total length may be
// smaller than len(pkt) (link padding); it may not be larger.
func ipv4Header(pkt []byte) (ihl, total int, ok bool) {
	if len(pkt) < ipv4HeaderLen || pkt[0]>>4 != 4 {
		return 0, 0, false
	}
	ihl = int(pkt[0]&0x0f) * 4
	total = int(binary.BigEndian.Uint16(pkt[ipOffLen:]))
	if ihl < ipv4HeaderLen || total < ihl || total > len(pkt) {
		return 0, 0, false
	}
	return ihl, total, true
}

func dstAddr(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[ipOffDst:]) }
func srcAddr(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[ipOffSrc:]) }

// decTTL decrements the TTL of an IPv4 header and patches its checksum
// incrementally (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), m being the
// 16-bit word holding TTL and protocol). It reports false and leaves the
// header alone when the TTL would reach zero: the packet must be dropped.
func decTTL(h []byte) bool {
	ttl := h[ipOffTTL]
	if ttl <= 1 {
		return false
	}
	m := uint32(ttl)<<8 | uint32(h[ipOffProto])
	h[ipOffTTL] = ttl - 1
	hc := uint32(binary.BigEndian.Uint16(h[ipOffCsum:]))
	s := (^hc & 0xffff) + (^m & 0xffff) + (m - 0x100)
	s = (s & 0xffff) + (s >> 16)
	s = (s & 0xffff) + (s >> 16)
	binary.BigEndian.PutUint16(h[ipOffCsum:], ^uint16(s))
	return true
}

// setIPChecksum recomputes the header checksum from scratch.
func setIPChecksum(h []byte) {
	h[ipOffCsum], h[ipOffCsum+1] = 0, 0
	binary.BigEndian.PutUint16(h[ipOffCsum:], checksum(h))
}

// netUnreachable writes into out (at least maxICMPLen bytes) an ICMP
// destination net unreachable (type 3, code 0) from src answering pkt, a
// packet with a valid header of length ihl, and returns its length. It
// returns 0 when no error may be sent: for ICMP (upstream never answers ICMP
// with ICMP, so errors about errors cannot loop), for non-first fragments
// (RFC 1812 §4.3.2.7), and for sources that are not unicast hosts.
func netUnreachable(out, pkt []byte, ihl int, src [4]byte) int {
	if pkt[ipOffProto] == protoICMP {
		return 0
	}
	if binary.BigEndian.Uint16(pkt[ipOffFrag:])&ipFragMask != 0 {
		return 0
	}
	s := pkt[ipOffSrc : ipOffSrc+4]
	if s[0] == 0 || s[0] >= 224 || s[0] == 127 {
		return 0 // unspecified, multicast, class E/broadcast, loopback
	}
	quote := ihl + 8
	if quote > len(pkt) {
		quote = len(pkt)
	}
	n := ipv4HeaderLen + 8 + quote
	h := out[:ipv4HeaderLen]
	h[0] = 0x45
	h[1] = 0xc0 // internetwork control precedence, as Linux uses for ICMP errors
	binary.BigEndian.PutUint16(h[ipOffLen:], uint16(n))
	binary.BigEndian.PutUint32(h[ipOffID:], 0) // id 0, no flags, offset 0
	h[ipOffTTL] = icmpTTL
	h[ipOffProto] = protoICMP
	copy(h[ipOffSrc:], src[:])
	copy(h[ipOffDst:], s)
	setIPChecksum(h)

	m := out[ipv4HeaderLen:n]
	m[0], m[1] = 3, 0 // destination unreachable, net unreachable
	m[2], m[3] = 0, 0
	binary.BigEndian.PutUint32(m[4:], 0)
	copy(m[8:], pkt[:quote])
	binary.BigEndian.PutUint16(m[2:], checksum(m))
	return n
}

package udp

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// refChecksum is RFC 1071 the slow, obvious way: big-endian 16-bit words,
// end-around carry. Tests compare the fast code against it.
func refChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// refL4Checksum is the TCP/UDP checksum of pkt (IPv4 with header length
// ihl) the slow way; it is 0 for a packet whose checksum field is right.
func refL4Verify(pkt []byte, ihl int) uint16 {
	l4 := pkt[ihl:]
	ph := make([]byte, 0, 12+len(l4))
	ph = append(ph, pkt[12:20]...)
	ph = append(ph, 0, pkt[9])
	ph = binary.BigEndian.AppendUint16(ph, uint16(len(l4)))
	ph = append(ph, l4...)
	return refChecksum(ph)
}

type tcpSpec struct {
	src, dst     netip.Addr
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	ttl          uint8
	id           uint16
	tos          uint8
	df           bool
	opts         []byte // TCP options, multiple of 4
	ipOpts       []byte // IP options, multiple of 4
	payload      []byte
}

// build returns a complete IPv4/TCP packet with correct checksums.
func (s tcpSpec) build() []byte {
	ihl := 20 + len(s.ipOpts)
	thl := 20 + len(s.opts)
	n := ihl + thl + len(s.payload)
	p := make([]byte, n)
	p[0] = 0x40 | byte(ihl/4)
	p[1] = s.tos
	binary.BigEndian.PutUint16(p[2:], uint16(n))
	binary.BigEndian.PutUint16(p[4:], s.id)
	if s.df {
		p[6] = 0x40
	}
	p[8] = s.ttl
	p[9] = protoTCP
	copy(p[12:16], s.src.AsSlice())
	copy(p[16:20], s.dst.AsSlice())
	copy(p[20:ihl], s.ipOpts)
	binary.BigEndian.PutUint16(p[10:], refChecksum(p[:ihl]))
	t := p[ihl:]
	binary.BigEndian.PutUint16(t[0:], s.sport)
	binary.BigEndian.PutUint16(t[2:], s.dport)
	binary.BigEndian.PutUint32(t[4:], s.seq)
	binary.BigEndian.PutUint32(t[8:], s.ack)
	t[12] = byte(thl/4) << 4
	t[13] = s.flags
	binary.BigEndian.PutUint16(t[14:], 502)
	copy(t[20:thl], s.opts)
	copy(t[thl:], s.payload)
	binary.BigEndian.PutUint16(t[16:], refL4Verify(p, ihl))
	return p
}

// udpPacket returns an IPv4/UDP packet with correct checksums.
func udpPacket(src, dst netip.Addr, ttl uint8, payload []byte) []byte {
	n := 20 + 8 + len(payload)
	p := make([]byte, n)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(n))
	p[8] = ttl
	p[9] = protoUDP
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(p[10:], refChecksum(p[:20]))
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], 53)
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	c := refL4Verify(p, 20)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(p[26:], c)
	return p
}

// tsoFrame wraps a TCP super-packet (as built, with correct checksums; the
// kernel would leave the TCP checksum partial, which we overwrite anyway)
// in a virtio-net header asking for segmentation at mss.
func tsoFrame(pkt []byte, mss int) []byte {
	ihl := int(pkt[0]&0xf) * 4
	thl := int(pkt[ihl+12]>>4) * 4
	f := make([]byte, vnetHdrLen+len(pkt))
	vnetHdr{
		flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, hdrLen: uint16(ihl + thl),
		gsoSize: uint16(mss), csumStart: uint16(ihl), csumOffset: 16,
	}.encode(f)
	copy(f[vnetHdrLen:], pkt)
	return f
}

func plainFrame(pkt []byte) []byte {
	f := make([]byte, vnetHdrLen+len(pkt))
	copy(f[vnetHdrLen:], pkt)
	return f
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

var (
	network  = netip.MustParsePrefix("10.77.0.0/16")
	ownNet   = netip.MustParsePrefix("10.77.1.0/24")
	peerNet  = netip.MustParsePrefix("10.77.2.0/24")
	peerIP   = netip.MustParseAddr("192.168.77.2")
	srcCtr   = netip.MustParseAddr("10.77.1.2") // our container, sending
	ownCtr   = srcCtr                           // our container, receiving
	dstCtr   = netip.MustParseAddr("10.77.2.2") // a peer's container, receiving
	peerCtr  = dstCtr                           // a peer's container, sending
	noPeerIP = netip.MustParseAddr("10.77.9.9")
)

// datagram is one UDP datagram as it would appear on the wire.
type datagram struct {
	to   netip.AddrPort
	data []byte
}

// wire flattens a batch into the datagrams the kernel would put on the
// wire, cutting GSO messages at segSize, and checks the batch's structure
// against the GSO rules.
func wire(t testing.TB, b *batch) []datagram {
	var out []datagram
	for _, m := range b.msgs {
		if m.n > maxGSOSegs || (m.n > 1 && m.bytes > maxGSOBytes) {
			t.Errorf("message of %d segments, %d bytes exceeds GSO limits", m.n, m.bytes)
		}
		var payload []byte
		for i, s := range b.segs[m.first : m.first+m.n] {
			sz := s.size()
			if sz > m.segSize || (i < m.n-1 && sz != m.segSize) {
				t.Errorf("segment %d of %d is %d bytes; gso size %d", i, m.n, sz, m.segSize)
			}
			payload = append(payload, s.hdr...)
			payload = append(payload, s.data...)
		}
		if len(payload) != m.bytes {
			t.Errorf("message bytes %d, segments hold %d", m.bytes, len(payload))
		}
		for len(payload) > 0 {
			n := min(m.segSize, len(payload))
			out = append(out, datagram{to: m.peer.endpoint(), data: payload[:n:n]})
			payload = payload[n:]
		}
	}
	return out
}

// newTestOutbound returns an outbound with one peer (10.77.2.0/24 at
// 192.168.77.2:8285) whose sends and TUN writes are recorded.
func newTestOutbound(t testing.TB, vnet, gso bool) (*outbound, *[]datagram, *[][]byte) {
	sh := &shared{}
	sh.own.Store(newOwnState(ownNet))
	sh.peers.Store(newTable([]peer{{subnet: peerNet, ip: peerIP.As4(), port: DefaultPort}}, network))
	var sent []datagram
	var tunOut [][]byte
	o := &outbound{sh: sh, stats: &counters{}, vnet: vnet, gso: gso, b: newBatch()}
	o.send = func(b *batch) {
		for _, d := range wire(t, b) {
			sent = append(sent, datagram{to: d.to, data: append([]byte(nil), d.data...)})
		}
	}
	o.writeTUN = func(f []byte) { tunOut = append(tunOut, append([]byte(nil), f...)) }
	return o, &sent, &tunOut
}

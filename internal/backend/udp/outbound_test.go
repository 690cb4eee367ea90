package udp

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/net/ipv4"
)

var peerEndpoint = netip.AddrPortFrom(peerIP, DefaultPort)

// checkWirePacket asserts d is exactly one valid IPv4 packet with valid
// header and transport checksums, and returns its header.
func checkWirePacket(t testing.TB, d []byte) *ipv4.Header {
	t.Helper()
	h, err := ipv4.ParseHeader(d)
	if err != nil {
		t.Fatalf("datagram is not IPv4: %v", err)
	}
	if h.TotalLen != len(d) {
		t.Fatalf("datagram of %d bytes holds a %d-byte packet; want exactly one packet", len(d), h.TotalLen)
	}
	if c := refChecksum(d[:h.Len]); c != 0 {
		t.Fatalf("IP header checksum wrong")
	}
	if h.Protocol == protoTCP || h.Protocol == protoUDP {
		if c := refL4Verify(d, h.Len); c != 0 {
			t.Fatalf("transport checksum wrong")
		}
	}
	return h
}

func TestOutboundSplitsTSO(t *testing.T) {
	opts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2} // NOP NOP timestamps
	for _, tc := range []struct {
		name    string
		gso     bool
		dataLen int
		mss     int
		ipOpts  []byte
	}{
		{"gso", true, 60000, 1408, nil},
		{"ip options", true, 30000, 1400, []byte{1, 1, 1, 0}},
		{"gso exact multiple", true, 1408 * 10, 1408, nil},
		{"gso too many segments for one message", true, 65000, 500, nil},
		{"gso odd mss", true, 5001, 333, nil},
		{"no gso", false, 20000, 1408, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, sent, _ := newTestOutbound(t, true, tc.gso)
			data := pattern(tc.dataLen, 9)
			sp := tcpSpec{src: srcCtr, dst: dstCtr, sport: 40000, dport: 5201, seq: 0xfffff000, ack: 77,
				flags: tcpFlagACK | tcpFlagPSH | tcpFlagFIN | tcpFlagCWR, ttl: 63, id: 0xfffe, df: true, opts: opts, ipOpts: tc.ipOpts, payload: data}
			o.packet(tsoFrame(sp.build(), tc.mss))
			o.flush()

			want := (tc.dataLen + tc.mss - 1) / tc.mss
			if len(*sent) != want {
				t.Fatalf("%d datagrams, want %d", len(*sent), want)
			}
			var got []byte
			for i, d := range *sent {
				if d.to != peerEndpoint {
					t.Fatalf("datagram %d to %s, want %s", i, d.to, peerEndpoint)
				}
				h := checkWirePacket(t, d.data)
				if h.TTL != 62 || h.ID != int(uint16(0xfffe+i)) || h.Flags != ipv4.DontFragment {
					t.Errorf("segment %d: ttl %d id %#x flags %v", i, h.TTL, h.ID, h.Flags)
				}
				tcp := d.data[h.Len:]
				if seq := binary.BigEndian.Uint32(tcp[4:]); seq != 0xfffff000+uint32(len(got)) {
					t.Errorf("segment %d: seq %#x, want %#x", i, seq, 0xfffff000+uint32(len(got)))
				}
				flags := tcp[13]
				last := i == len(*sent)-1
				if (flags&(tcpFlagFIN|tcpFlagPSH) != 0) != last || (flags&tcpFlagCWR != 0) != (i == 0) || flags&tcpFlagACK == 0 {
					t.Errorf("segment %d: flags %#x", i, flags)
				}
				if !bytes.Equal(tcp[20:32], opts) {
					t.Errorf("segment %d: options % x", i, tcp[20:32])
				}
				payload := tcp[32:]
				if !last && len(payload) != tc.mss {
					t.Errorf("segment %d: %d bytes of data, want mss %d", i, len(payload), tc.mss)
				}
				got = append(got, payload...)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("the segments' data is not the super-packet's data")
			}
			st := o.stats.snapshot()
			if st.Drops != (Drops{}) {
				t.Errorf("drops %+v", st.Drops)
			}
		})
	}
}

func TestOutboundGSOBatching(t *testing.T) {
	o, _, _ := newTestOutbound(t, false, true)
	var msgs []message
	o.send = func(b *batch) {
		wire(t, b) // checks the GSO rules
		msgs = append(msgs, b.msgs...)
	}
	mk := func(n int) []byte { return udpPacket(srcCtr, dstCtr, 64, pattern(n-28, 0)) }
	// Equal sizes share a message; a shorter one ends it; a larger one
	// starts a new one.
	for _, n := range []int{1000, 1000, 1000, 600, 1000, 1200, 1200} {
		o.packet(mk(n))
	}
	o.flush()
	var shape [][2]int
	for _, m := range msgs {
		shape = append(shape, [2]int{m.n, m.segSize})
	}
	want := [][2]int{{4, 1000}, {1, 1000}, {2, 1200}}
	if len(shape) != len(want) {
		t.Fatalf("messages (n, size) %v, want %v", shape, want)
	}
	for i := range want {
		if shape[i] != want[i] {
			t.Fatalf("messages (n, size) %v, want %v", shape, want)
		}
	}
}

func TestOutboundPlainPacket(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		o, sent, _ := newTestOutbound(t, vnet, true)
		pkt := udpPacket(srcCtr, dstCtr, 64, pattern(100, 3))
		frame := pkt
		if vnet {
			frame = plainFrame(pkt)
		}
		o.packet(frame)
		o.flush()
		if len(*sent) != 1 {
			t.Fatalf("vnet %v: %d datagrams", vnet, len(*sent))
		}
		d := (*sent)[0].data
		h := checkWirePacket(t, d)
		if h.TTL != 63 || !bytes.Equal(d[20:], pkt[20:]) {
			t.Errorf("vnet %v: ttl %d or payload changed", vnet, h.TTL)
		}
		if s := o.stats.snapshot(); s.Packets != 0 {
			t.Errorf("the portable path counted %d sent packets; only the sender may", s.Packets)
		}
	}
}

func TestOutboundCompletesPartialChecksum(t *testing.T) {
	o, sent, _ := newTestOutbound(t, true, true)
	pkt := udpPacket(srcCtr, dstCtr, 64, pattern(333, 4))
	// What the kernel hands over with CHECKSUM_PARTIAL: the pseudo-header
	// sum in the field, the rest to be done.
	ps := addBE16(pseudoSum(pkt, protoUDP), uint16(len(pkt)-20))
	binary.BigEndian.PutUint16(pkt[26:], fold(ps))
	f := plainFrame(pkt)
	vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 20, csumOffset: 6}.encode(f)
	o.packet(f)
	o.flush()
	if len(*sent) != 1 {
		t.Fatalf("%d datagrams", len(*sent))
	}
	checkWirePacket(t, (*sent)[0].data)
}

func TestOutboundDrops(t *testing.T) {
	tcp := func(dst netip.Addr, ttl uint8) []byte {
		return tcpSpec{src: srcCtr, dst: dst, sport: 1, dport: 2, flags: tcpFlagSYN, ttl: ttl, payload: pattern(20, 0)}.build()
	}
	ping := udpPacket(srcCtr, noPeerIP, 64, pattern(20, 0))
	ping[9] = protoICMP
	badGSO := tsoFrame(tcp(dstCtr, 64), 0) // gso size 0
	for _, tc := range []struct {
		name   string
		frame  []byte
		drops  Drops
		icmpTo netip.Addr
	}{
		{"no peer", plainFrame(tcp(noPeerIP, 64)), Drops{NoRoute: 1}, srcCtr},
		{"no peer, tso", tsoFrame(tcpSpec{src: srcCtr, dst: noPeerIP, ttl: 64, payload: pattern(3000, 0)}.build(), 1000), Drops{NoRoute: 3}, srcCtr},
		{"no peer, icmp", plainFrame(ping), Drops{NoRoute: 1}, netip.Addr{}},
		{"ttl", plainFrame(tcp(dstCtr, 1)), Drops{TTL: 1}, netip.Addr{}},
		{"garbage", plainFrame([]byte{0x45, 1, 2, 3}), Drops{Malformed: 1}, netip.Addr{}},
		{"ipv6", plainFrame(append([]byte{0x60}, make([]byte, 60)...)), Drops{Malformed: 1}, netip.Addr{}},
		{"short vnet header", []byte{1, 2, 3}, Drops{Malformed: 1}, netip.Addr{}},
		{"gso size 0", badGSO, Drops{Malformed: 1}, netip.Addr{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, sent, tunOut := newTestOutbound(t, true, true)
			o.packet(tc.frame)
			o.flush()
			if len(*sent) != 0 {
				t.Errorf("sent %d datagrams", len(*sent))
			}
			if got := o.stats.snapshot().Drops; got != tc.drops {
				t.Errorf("drops %+v, want %+v", got, tc.drops)
			}
			if !tc.icmpTo.IsValid() {
				if len(*tunOut) != 0 {
					t.Errorf("wrote %d frames back into the TUN", len(*tunOut))
				}
				return
			}
			if len(*tunOut) != 1 {
				t.Fatalf("wrote %d frames back into the TUN, want one ICMP error", len(*tunOut))
			}
			f := (*tunOut)[0]
			if !bytes.Equal(f[:vnetHdrLen], make([]byte, vnetHdrLen)) {
				t.Errorf("vnet header % x, want zero", f[:vnetHdrLen])
			}
			h := checkWirePacket(t, f[vnetHdrLen:])
			if h.Protocol != protoICMP || h.Dst.String() != tc.icmpTo.String() || f[vnetHdrLen+20] != 3 || f[vnetHdrLen+21] != 0 {
				t.Errorf("not a net unreachable to %s: % x", tc.icmpTo, f)
			}
		})
	}
}

func TestOutboundLongestPrefixPeer(t *testing.T) {
	o, sent, _ := newTestOutbound(t, false, true)
	other := netip.MustParseAddr("192.168.77.3")
	o.sh.peers.Store(newTable([]peer{
		{subnet: netip.MustParsePrefix("10.77.0.0/16"), ip: other.As4(), port: 9},
		{subnet: peerNet, ip: peerIP.As4(), port: DefaultPort},
	}, network))
	o.packet(udpPacket(srcCtr, dstCtr, 64, nil))
	o.packet(udpPacket(srcCtr, netip.MustParseAddr("10.77.3.3"), 64, nil))
	o.flush()
	if len(*sent) != 2 || (*sent)[0].to != peerEndpoint || (*sent)[1].to != netip.AddrPortFrom(other, 9) {
		t.Fatalf("sent %v", *sent)
	}
}

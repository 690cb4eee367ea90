package udp

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

func TestDecTTLMatchesFullRecompute(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := range 200000 {
		h := make([]byte, 20+4*(i%3))
		for j := range h {
			h[j] = byte(r.Uint32())
		}
		h[0] = 0x40 | byte(len(h)/4)
		// Cover every TTL and protocol, including the 0xff/0x00 bytes
		// where a naive carry goes wrong.
		h[ipOffTTL] = byte(i % 256)
		h[ipOffProto] = byte(i / 256 % 256)
		setIPChecksum(h)
		before := append([]byte(nil), h...)
		ok := decTTL(h)
		if before[ipOffTTL] <= 1 {
			if ok || !bytes.Equal(h, before) {
				t.Fatalf("TTL %d: decTTL = %v and changed the header; want false and untouched", before[ipOffTTL], ok)
			}
			continue
		}
		if !ok || h[ipOffTTL] != before[ipOffTTL]-1 {
			t.Fatalf("TTL %d: decTTL = %v, TTL now %d", before[ipOffTTL], ok, h[ipOffTTL])
		}
		got := binary.BigEndian.Uint16(h[ipOffCsum:])
		h[ipOffCsum], h[ipOffCsum+1] = 0, 0
		if want := refChecksum(h); got != want {
			t.Fatalf("header % x: incremental checksum %#04x, recomputed %#04x", before, got, want)
		}
	}
}

func TestNetUnreachable(t *testing.T) {
	own := [4]byte{10, 77, 1, 0}
	tcp := tcpSpec{src: srcCtr, dst: noPeerIP, sport: 1234, dport: 80, seq: 1, flags: tcpFlagSYN, ttl: 63, id: 7, payload: pattern(100, 1)}.build()
	withOpts := tcpSpec{src: srcCtr, dst: noPeerIP, sport: 1, dport: 2, ttl: 9, ipOpts: []byte{1, 1, 1, 0}, payload: pattern(10, 2)}.build()
	short := udpPacket(srcCtr, noPeerIP, 64, []byte{1, 2, 3, 4})[:20+4] // header + 4 bytes only
	binary.BigEndian.PutUint16(short[2:], 24)
	setIPChecksum(short[:20])
	ping := make([]byte, 28)
	copy(ping, udpPacket(srcCtr, noPeerIP, 64, nil))
	ping[9] = protoICMP
	firstFrag := udpPacket(srcCtr, noPeerIP, 64, pattern(40, 3))
	binary.BigEndian.PutUint16(firstFrag[6:], ipFlagMF)
	laterFrag := udpPacket(srcCtr, noPeerIP, 64, pattern(40, 3))
	binary.BigEndian.PutUint16(laterFrag[6:], 185)
	mcast := udpPacket(netip.MustParseAddr("224.0.0.5"), noPeerIP, 64, pattern(20, 4))

	for _, tc := range []struct {
		name  string
		pkt   []byte
		quote int // 0: no error due
	}{
		{"tcp", tcp, 28},
		{"ip options", withOpts, 32},
		{"shorter than header+8", short, 24},
		{"first fragment", firstFrag, 28},
		{"icmp", ping, 0},
		{"later fragment", laterFrag, 0},
		{"multicast source", mcast, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := make([]byte, maxICMPLen)
			ihl := int(tc.pkt[0]&0xf) * 4
			n := netUnreachable(out, tc.pkt, ihl, own)
			if tc.quote == 0 {
				if n != 0 {
					t.Fatalf("got a %d-byte ICMP error; want none", n)
				}
				return
			}
			if n == 0 {
				t.Fatal("no ICMP error")
			}
			msg := out[:n]
			h, err := ipv4.ParseHeader(msg)
			if err != nil {
				t.Fatal(err)
			}
			if h.TotalLen != n || h.Protocol != 1 || h.TTL != icmpTTL ||
				h.Src.String() != "10.77.1.0" || !bytes.Equal(h.Dst.To4(), tc.pkt[12:16]) {
				t.Errorf("header %+v", h)
			}
			if c := refChecksum(msg[:20]); c != 0 {
				t.Errorf("IP header checksum does not verify (%#04x)", c)
			}
			if c := refChecksum(msg[20:]); c != 0 {
				t.Errorf("ICMP checksum does not verify (%#04x)", c)
			}
			m, err := icmp.ParseMessage(1, msg[20:])
			if err != nil {
				t.Fatal(err)
			}
			du, ok := m.Body.(*icmp.DstUnreach)
			if m.Type != ipv4.ICMPTypeDestinationUnreachable || m.Code != 0 || !ok {
				t.Fatalf("type %v code %d body %T; want destination unreachable, net (0)", m.Type, m.Code, m.Body)
			}
			if !bytes.Equal(du.Data, tc.pkt[:tc.quote]) {
				t.Errorf("quoted % x; want the header and 8 bytes: % x", du.Data, tc.pkt[:tc.quote])
			}
		})
	}
}

func TestIPv4Header(t *testing.T) {
	good := udpPacket(srcCtr, dstCtr, 64, pattern(30, 0))
	padded := append(append([]byte(nil), good...), 0, 0, 0, 0)
	for _, tc := range []struct {
		name  string
		pkt   []byte
		ok    bool
		total int
	}{
		{"good", good, true, len(good)},
		{"padded", padded, true, len(good)},
		{"empty", nil, false, 0},
		{"short", good[:19], false, 0},
		{"ipv6", append([]byte{0x60}, good[1:]...), false, 0},
		{"ihl 4", append([]byte{0x44}, good[1:]...), false, 0},
		{"ihl beyond total", func() []byte { p := append([]byte(nil), good...); p[0] = 0x4f; return p }(), false, 0},
		{"total beyond data", good[:len(good)-1], false, 0},
		{"total below header", func() []byte { p := append([]byte(nil), good...); binary.BigEndian.PutUint16(p[2:], 19); return p }(), false, 0},
	} {
		_, total, ok := ipv4Header(tc.pkt)
		if ok != tc.ok || total != tc.total {
			t.Errorf("%s: ok %v total %d; want %v %d", tc.name, ok, total, tc.ok, tc.total)
		}
	}
}

package udp

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

func FuzzOutbound(f *testing.F) {
	tcp := tcpSpec{src: srcCtr, dst: dstCtr, sport: 1, dport: 2, seq: 3, flags: tcpFlagACK, ttl: 64, payload: pattern(3000, 1)}.build()
	f.Add(plainFrame(udpPacket(srcCtr, dstCtr, 64, pattern(50, 0))), true)
	f.Add(udpPacket(srcCtr, noPeerIP, 64, pattern(50, 0)), false)
	f.Add(tsoFrame(tcp, 1000), true)
	f.Add(tsoFrame(tcp, 1), true)
	f.Add([]byte{0x45, 0, 0, 20}, false)
	f.Fuzz(func(t *testing.T, frame []byte, vnet bool) {
		o, _, _ := newTestOutbound(t, vnet, true)
		o.sh.peers.Store(newTable([]peer{
			{subnet: peerNet, ip: peerIP.As4(), port: DefaultPort},
			{subnet: netip.MustParsePrefix("128.0.0.0/1"), ip: peerIP.As4(), port: 1},
		}, network))
		o.send = func(b *batch) {
			for _, d := range wire(t, b) {
				if len(d.data) < 20 || d.data[0]>>4 != 4 || int(binary.BigEndian.Uint16(d.data[2:])) != len(d.data) {
					t.Fatalf("datagram is not exactly one IPv4 packet: % x", d.data[:min(len(d.data), 20)])
				}
			}
		}
		o.writeTUN = func(f []byte) {
			if vnet {
				f = f[vnetHdrLen:]
			}
			if refChecksum(f[:20]) != 0 || refChecksum(f[20:]) != 0 || f[9] != protoICMP {
				t.Fatalf("bad ICMP error % x", f)
			}
		}
		o.packet(append([]byte(nil), frame...))
		o.flush()
	})
}

func FuzzInbound(f *testing.F) {
	segs := segmentsOf(f, tcpSpec{src: peerCtr, flags: tcpFlagACK, ttl: 64, payload: pattern(5000, 0)}, 1000)
	gro, _, gso := groBuffer(f, segs)
	f.Add(gro[rxHeadroom:], uint16(gso), true)
	f.Add(gro[rxHeadroom:], uint16(0), false)
	f.Add(udpPacket(peerCtr, ownCtr, 64, pattern(10, 0)), uint16(0), true)
	f.Add([]byte{0x45, 0, 0, 0x20, 1, 2, 3}, uint16(3), true)
	f.Fuzz(func(t *testing.T, data []byte, gso uint16, vnet bool) {
		in, _ := newTestInbound(vnet)
		in.write = func(pieces [][]byte) error {
			f := bytes.Join(pieces, nil)
			var vh vnetHdr
			if vnet {
				vh = decodeVnet(f)
				f = f[vnetHdrLen:]
			}
			if len(f) < 20 || f[0]>>4 != 4 || int(binary.BigEndian.Uint16(f[2:])) != len(f) {
				t.Fatalf("TUN write is not one IPv4 packet: % x", f[:min(len(f), 20)])
			}
			// Header checksums are the kernel's to check, except on
			// packets we merged and so rewrote.
			if vh.gsoType != vnetGSONone && (vh.gsoType != vnetGSOTCPv4 || vh.gsoSize == 0 ||
				int(vh.hdrLen) >= len(f) || refChecksum(f[:20]) != 0) {
				t.Fatalf("bad merged packet: vnet header %+v, %d bytes, header % x", vh, len(f), f[:20])
			}
			return nil
		}
		buf := append(make([]byte, rxHeadroom), data...)
		in.datagram(buf, rxHeadroom, len(data), int(gso))
		in.done()
	})
}

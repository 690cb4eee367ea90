package udp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/net/ipv4"
)

// tunFrame is one write into the TUN, decoded.
type tunFrame struct {
	vh  vnetHdr
	pkt []byte
}

func newTestInbound(vnet bool) (*inbound, *[]tunFrame) {
	sh := &shared{}
	sh.own.Store(newOwnState(ownNet))
	var frames []tunFrame
	in := newInbound(sh, &counters{}, vnet, nil)
	in.write = func(pieces [][]byte) error {
		f := bytes.Join(pieces, nil)
		var fr tunFrame
		if vnet {
			fr.vh = decodeVnet(f)
			f = f[vnetHdrLen:]
		}
		fr.pkt = append([]byte(nil), f...)
		frames = append(frames, fr)
		return nil
	}
	return in, &frames
}

// groBuffer lays datagrams out as UDP GRO delivers them: back to back
// after the headroom, all but the last of one size.
func groBuffer(t testing.TB, ds [][]byte) (buf []byte, n, gso int) {
	gso = len(ds[0])
	buf = make([]byte, rxHeadroom)
	for i, d := range ds {
		if len(d) > gso || (i < len(ds)-1 && len(d) != gso) {
			t.Fatalf("datagram %d of %d bytes cannot follow gso size %d", i, len(d), gso)
		}
		buf = append(buf, d...)
	}
	n = len(buf) - rxHeadroom
	// A receive buffer is always this long, whatever it holds.
	return append(buf, make([]byte, max(0, rxBufLen-len(buf)))...), n, gso
}

// segmentsOf splits a TCP super-packet with our outbound path.
func segmentsOf(t testing.TB, sp tcpSpec, mss int) [][]byte {
	o, sent, _ := newTestOutbound(t, true, true)
	sp.dst = netip.MustParseAddr("10.77.2.7") // via the outbound's peer
	o.packet(tsoFrame(sp.build(), mss))
	o.flush()
	var out [][]byte
	for _, d := range *sent {
		p := d.data
		copy(p[16:20], ownCtr.AsSlice()) // arrives for our container
		setIPChecksum(p[:20])
		binary.BigEndian.PutUint16(p[20+16:], 0)
		binary.BigEndian.PutUint16(p[20+16:], refL4Verify(p, 20))
		out = append(out, p)
	}
	return out
}

func TestInboundCoalescesGRO(t *testing.T) {
	opts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	for _, tc := range []struct {
		name    string
		dataLen int
		mss     int
	}{
		{"full", 60000, 1408},
		{"short last", 10*1408 + 5, 1408},
		{"one segment", 700, 1408},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, frames := newTestInbound(true)
			data := pattern(tc.dataLen, 5)
			sp := tcpSpec{src: peerCtr, sport: 5201, dport: 40000, seq: 100, ack: 9, flags: tcpFlagACK | tcpFlagPSH,
				ttl: 64, id: 1, df: true, opts: opts, payload: data}
			segs := segmentsOf(t, sp, tc.mss)
			buf, n, gso := groBuffer(t, segs)
			in.datagram(buf, rxHeadroom, n, gso)
			in.done()

			if len(*frames) != 1 {
				t.Fatalf("%d TUN writes, want 1", len(*frames))
			}
			f := (*frames)[0]
			h, err := ipv4.ParseHeader(f.pkt)
			if err != nil || h.TotalLen != len(f.pkt) || refChecksum(f.pkt[:20]) != 0 {
				t.Fatalf("header %+v err %v, or bad header checksum", h, err)
			}
			if h.TTL != 62 { // decremented by the sender and by us
				t.Errorf("ttl %d, want 62", h.TTL)
			}
			tcp := f.pkt[20:]
			if !bytes.Equal(tcp[32:], data) || binary.BigEndian.Uint32(tcp[4:]) != 100 || tcp[13] != tcpFlagACK|tcpFlagPSH {
				t.Fatalf("merged packet: seq %d flags %#x, data equal %v", binary.BigEndian.Uint32(tcp[4:]), tcp[13], bytes.Equal(tcp[32:], data))
			}
			if len(segs) == 1 {
				if f.vh != (vnetHdr{}) || refL4Verify(f.pkt, 20) != 0 {
					t.Errorf("single packet: vnet %+v, TCP checksum must verify", f.vh)
				}
				return
			}
			want := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, hdrLen: 52, gsoSize: uint16(tc.mss), csumStart: 20, csumOffset: 16}
			if f.vh != want {
				t.Errorf("vnet header %+v, want %+v", f.vh, want)
			}
			// The kernel finishes CHECKSUM_PARTIAL by summing from
			// csumStart over a field holding the pseudo-header sum.
			done := append([]byte(nil), f.pkt...)
			if !completeChecksum(done, 20, 16) || refL4Verify(done, 20) != 0 {
				t.Error("partial checksum does not complete to a valid one")
			}
			st := in.stats.snapshot()
			if st.Packets != uint64(len(segs)) || st.Bytes != uint64(n) || st.Drops != (Drops{}) {
				t.Errorf("stats %+v; want %d packets, %d bytes", st, len(segs), n)
			}
		})
	}
}

func TestInboundDoesNotMergeAcrossBoundaries(t *testing.T) {
	base := tcpSpec{src: peerCtr, sport: 5201, dport: 40000, seq: 1000, ack: 1, flags: tcpFlagACK, ttl: 64, df: true}
	mk := func(mod func(*tcpSpec)) []byte {
		s := base
		s.dst = ownCtr
		mod(&s)
		s.payload = pattern(1000-len(s.opts), 1) // every packet 1040 bytes
		return s.build()
	}
	for _, tc := range []struct {
		name   string
		second func(*tcpSpec)
	}{
		{"seq gap", func(s *tcpSpec) { s.seq = 3000 }},
		{"other flow", func(s *tcpSpec) { s.seq = 2000; s.sport = 5202 }},
		{"other ack", func(s *tcpSpec) { s.seq = 2000; s.ack = 2 }},
		{"syn", func(s *tcpSpec) { s.seq = 2000; s.flags |= tcpFlagSYN }},
		{"other options", func(s *tcpSpec) { s.seq = 2000; s.opts = []byte{1, 1, 1, 1} }},
		{"other tos", func(s *tcpSpec) { s.seq = 2000; s.tos = 4 }},
		{"no df", func(s *tcpSpec) { s.seq = 2000; s.df = false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, frames := newTestInbound(true)
			buf, n, gso := groBuffer(t, [][]byte{mk(func(*tcpSpec) {}), mk(tc.second)})
			in.datagram(buf, rxHeadroom, n, gso)
			in.done()
			if len(*frames) != 2 {
				t.Fatalf("%d TUN writes, want 2 separate packets", len(*frames))
			}
			for i, f := range *frames {
				if f.vh != (vnetHdr{}) || refL4Verify(f.pkt, 20) != 0 {
					t.Errorf("packet %d: vnet %+v or bad checksum", i, f.vh)
				}
			}
			if got := binary.BigEndian.Uint32((*frames)[0].pkt[24:]); got != 1000 {
				t.Errorf("order: first packet has seq %d", got)
			}
		})
	}
	t.Run("next segment merges", func(t *testing.T) {
		in, frames := newTestInbound(true)
		buf, n, gso := groBuffer(t, [][]byte{mk(func(*tcpSpec) {}), mk(func(s *tcpSpec) { s.seq = 2000 })})
		in.datagram(buf, rxHeadroom, n, gso)
		in.done()
		if len(*frames) != 1 {
			t.Fatalf("%d TUN writes, want 1 (the control case must merge)", len(*frames))
		}
	})
}

func TestInboundDrops(t *testing.T) {
	good := udpPacket(peerCtr, ownCtr, 64, pattern(100, 0))
	foreign := udpPacket(peerCtr, netip.MustParseAddr("192.168.1.1"), 64, pattern(100, 0))
	ttl1 := udpPacket(peerCtr, ownCtr, 1, pattern(100, 0))
	longer := append(append([]byte(nil), good...), 9, 9) // trailing bytes are tolerated
	spoofed := udpPacket(netip.MustParseAddr("10.77.1.3"), ownCtr, 64, pattern(100, 0))
	for _, tc := range []struct {
		name    string
		data    []byte
		gso     int
		written int
		drops   Drops
	}{
		{"good", good, 0, 1, Drops{}},
		{"trailing bytes", longer, 0, 1, Drops{}},
		{"not our subnet", foreign, 0, 0, Drops{NoRoute: 1}},
		{"source in our subnet", spoofed, 0, 0, Drops{NoRoute: 1}},
		{"ttl", ttl1, 0, 0, Drops{TTL: 1}},
		{"truncated", good[:50], 0, 0, Drops{Malformed: 1}},
		{"garbage", []byte("hello, world, this is not a packet"), 0, 0, Drops{Malformed: 1}},
		{"empty", nil, 0, 0, Drops{}},
		{"gro mix", append(append(append([]byte(nil), good...), ttl1...), foreign...), len(good), 1, Drops{TTL: 1, NoRoute: 1}},
	} {
		for _, vnet := range []bool{true, false} {
			in, frames := newTestInbound(vnet)
			buf := append(make([]byte, rxHeadroom), tc.data...)
			in.datagram(buf, rxHeadroom, len(tc.data), tc.gso)
			in.done()
			if len(*frames) != tc.written {
				t.Errorf("%s (vnet %v): %d TUN writes, want %d", tc.name, vnet, len(*frames), tc.written)
			}
			if got := in.stats.snapshot().Drops; got != tc.drops {
				t.Errorf("%s (vnet %v): drops %+v, want %+v", tc.name, vnet, got, tc.drops)
			}
			for _, f := range *frames {
				if h := checkWirePacket(t, f.pkt); h.TTL != 63 {
					t.Errorf("%s: ttl %d", tc.name, h.TTL)
				}
			}
		}
	}
}

func TestInboundBeforeConfigure(t *testing.T) {
	in, frames := newTestInbound(true)
	in.sh.own.Store(nil)
	good := udpPacket(peerCtr, ownCtr, 64, pattern(100, 0))
	in.datagram(append(make([]byte, rxHeadroom), good...), rxHeadroom, len(good), 0)
	in.done()
	if len(*frames) != 0 || in.stats.snapshot().Drops.NoRoute != 1 {
		t.Fatalf("without a lease: %d writes, drops %+v", len(*frames), in.stats.snapshot().Drops)
	}
}

func TestInboundWriteErrorCounted(t *testing.T) {
	in, _ := newTestInbound(true)
	in.write = func([][]byte) error { return errors.New("EIO") }
	segs := segmentsOf(t, tcpSpec{src: peerCtr, flags: tcpFlagACK, ttl: 64, payload: pattern(5000, 0)}, 1000)
	buf, n, gso := groBuffer(t, segs)
	in.datagram(buf, rxHeadroom, n, gso)
	in.done()
	if st := in.stats.snapshot(); st.Drops.WriteError != 5 || st.Packets != 0 {
		t.Fatalf("stats %+v; want 5 write errors", st)
	}
}

// TestInboundUnmergesRefusedWrite: when the kernel refuses a merged
// super-packet, its segments go in one by one, intact, and after EINVAL
// merging stops.
func TestInboundUnmergesRefusedWrite(t *testing.T) {
	in, frames := newTestInbound(true)
	record := in.write
	in.write = func(p [][]byte) error {
		if decodeVnet(p[0]).gsoType != vnetGSONone {
			return syscall.EINVAL
		}
		return record(p)
	}
	data := pattern(5000, 7)
	segs := segmentsOf(t, tcpSpec{src: peerCtr, sport: 1, dport: 2, seq: 10, flags: tcpFlagACK, ttl: 64, df: true, payload: data}, 1000)
	want := make([][]byte, len(segs))
	for i, s := range segs {
		want[i] = append([]byte(nil), s...)
		decTTL(want[i])
	}
	buf, n, gso := groBuffer(t, segs)
	in.datagram(buf, rxHeadroom, n, gso)
	in.done()
	if len(*frames) != len(segs) {
		t.Fatalf("%d packets written, want %d", len(*frames), len(segs))
	}
	for i, f := range *frames {
		if !bytes.Equal(f.pkt, want[i]) {
			t.Errorf("packet %d differs from what arrived", i)
		}
	}
	if st := in.stats.snapshot(); st.Packets != uint64(len(segs)) || st.Drops != (Drops{}) || in.coalesce {
		t.Errorf("stats %+v, still merging %v", st, in.coalesce)
	}
}

// TestInboundMergesAcrossDatagrams: a 64 KiB super-packet arrives as two
// GRO datagrams (with every segment's headers it no longer fits one).
func TestInboundMergesAcrossDatagrams(t *testing.T) {
	data := pattern(64000, 3)
	segs := segmentsOf(t, tcpSpec{src: peerCtr, sport: 1, dport: 2, seq: 1, flags: tcpFlagACK, ttl: 64, df: true, payload: data}, 1400)
	in, frames := newTestInbound(true)
	for _, part := range [][][]byte{segs[:40], segs[40:]} {
		buf, n, gso := groBuffer(t, part)
		in.datagram(buf, rxHeadroom, n, gso)
	}
	if len(*frames) != 0 {
		t.Fatalf("%d writes before done; the run should wait for the next batch's end", len(*frames))
	}
	in.done()
	if len(*frames) != 1 {
		t.Fatalf("%d TUN writes, want 1", len(*frames))
	}
	f := (*frames)[0]
	if !bytes.Equal(f.pkt[40:], data) || f.vh.gsoType != vnetGSOTCPv4 || in.stats.snapshot().Packets != uint64(len(segs)) {
		t.Fatalf("merged packet wrong: vnet %+v, %d bytes, stats %+v", f.vh, len(f.pkt), in.stats.snapshot())
	}
}

// TestRoundTrip sends super-packets of many shapes through the outbound
// split and the inbound merge and checks that the data and header fields
// survive.
func TestRoundTrip(t *testing.T) {
	for _, mss := range []int{1, 7, 536, 1000, 1448} {
		for _, size := range []int{1, 999, 1000, 1001, 30000, 65535 - 52} {
			if (size+mss-1)/mss > 3000 {
				continue
			}
			data := pattern(size, byte(mss))
			sp := tcpSpec{src: peerCtr, sport: 1, dport: 2, seq: 5, ack: 6, flags: tcpFlagACK, ttl: 64, df: true,
				opts: []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, payload: data}
			segs := segmentsOf(t, sp, mss)
			in, frames := newTestInbound(true)
			// GRO hands at most 64 KiB per buffer.
			for len(segs) > 0 {
				k := 0
				for tot := 0; k < len(segs) && tot+len(segs[k]) <= 65535; k++ {
					tot += len(segs[k])
				}
				buf, n, gso := groBuffer(t, segs[:k])
				in.datagram(buf, rxHeadroom, n, gso)
				segs = segs[k:]
			}
			in.done()
			var got []byte
			for _, f := range *frames {
				got = append(got, f.pkt[52:]...)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("mss %d size %d: data differs after split and merge (%d frames)", mss, size, len(*frames))
			}
		}
	}
}

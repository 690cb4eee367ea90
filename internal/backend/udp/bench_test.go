package udp

import (
	"testing"
)

// benchFrames returns a TSO frame of about 64 KiB and a plain 1400-byte
// frame, both for dstCtr, and a GRO buffer of about 64 KiB for ownCtr.
func benchFrames(tb testing.TB) (tso, small, gro []byte, groN, groSize int) {
	opts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}
	sp := tcpSpec{src: srcCtr, dst: dstCtr, sport: 1, dport: 2, seq: 1, ack: 1, flags: tcpFlagACK, ttl: 64, df: true,
		opts: opts, payload: pattern(44*1408, 0)}
	tso = tsoFrame(sp.build(), 1408)
	small = plainFrame(udpPacket(srcCtr, dstCtr, 64, pattern(1400-28, 0)))
	sp.src = peerCtr
	segs := segmentsOf(tb, sp, 1408)
	gro, groN, groSize = groBuffer(tb, segs)
	return
}

func TestZeroAllocsPerPacket(t *testing.T) {
	tso, small, gro, groN, groSize := benchFrames(t)
	o, _, _ := newTestOutbound(t, true, true)
	o.send = func(*batch) {}
	frame := make([]byte, len(tso))
	if a := testing.AllocsPerRun(200, func() {
		copy(frame, tso)
		o.packet(frame)
		copy(frame, small)
		o.packet(frame[:len(small)])
		o.flush()
	}); a != 0 {
		t.Errorf("outbound: %v allocations per run, want 0", a)
	}
	if o.stats.snapshot().Drops != (Drops{}) {
		t.Fatalf("outbound dropped: %+v", o.stats.snapshot().Drops)
	}

	in, _ := newTestInbound(true)
	in.write = func([][]byte) error { return nil }
	buf := make([]byte, len(gro))
	if a := testing.AllocsPerRun(200, func() {
		copy(buf, gro)
		in.datagram(buf, rxHeadroom, groN, groSize)
		in.done()
	}); a != 0 {
		t.Errorf("inbound: %v allocations per run, want 0", a)
	}
	if st := in.stats.snapshot(); st.Drops != (Drops{}) || st.Packets == 0 {
		t.Fatalf("inbound: %+v", st)
	}
}

// The packet path per core: header work, lookup, segmentation and merging,
// without syscalls.
func BenchmarkOutbound(b *testing.B) {
	tso, small, _, _, _ := benchFrames(b)
	for _, tc := range []struct {
		name  string
		frame []byte
		segs  int
	}{{"small1400", small, 1}, {"tso64k", tso, 44}} {
		b.Run(tc.name, func(b *testing.B) {
			o, _, _ := newTestOutbound(b, true, true)
			o.send = func(*batch) {}
			frame := append([]byte(nil), tc.frame...)
			b.SetBytes(int64(len(tc.frame) - vnetHdrLen))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				copy(frame, tc.frame[:vnetHdrLen+20]) // restore the TTL
				o.packet(frame)
				if i++; i%64 == 0 {
					o.flush()
				}
			}
			if st := o.stats.snapshot(); st.Drops != (Drops{}) {
				b.Fatalf("drops %+v", st.Drops)
			}
			b.ReportMetric(float64(b.N*tc.segs)/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}

func BenchmarkInbound(b *testing.B) {
	_, small, gro, groN, groSize := benchFrames(b)
	single := append(make([]byte, rxHeadroom), small[vnetHdrLen:]...)
	copy(single[rxHeadroom+12:], peerCtr.AsSlice())
	copy(single[rxHeadroom+16:], ownCtr.AsSlice())
	setIPChecksum(single[rxHeadroom : rxHeadroom+20])
	for _, tc := range []struct {
		name     string
		buf      []byte
		n, gso   int
		segments int
	}{{"single1400", single, len(single) - rxHeadroom, 0, 1}, {"gro64k", gro, groN, groSize, 44}} {
		b.Run(tc.name, func(b *testing.B) {
			in, _ := newTestInbound(true)
			in.write = func([][]byte) error { return nil }
			buf := make([]byte, len(tc.buf))
			b.SetBytes(int64(tc.n))
			b.ReportAllocs()
			for b.Loop() {
				copy(buf, tc.buf)
				in.datagram(buf, rxHeadroom, tc.n, tc.gso)
				in.done()
			}
			if st := in.stats.snapshot(); st.Drops != (Drops{}) {
				b.Fatalf("drops %+v", st.Drops)
			}
			b.ReportMetric(float64(b.N*tc.segments)/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}

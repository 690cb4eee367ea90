package udp

import (
	"context"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// TestSyscallPathZeroAllocs checks that the datapath's syscall wrappers
// (sendmmsg with GSO, recvmmsg with GRO, TUN reads and writes) allocate
// nothing in steady state, in a namespace of its own.
func TestSyscallPathZeroAllocs(t *testing.T) {
	n := netnstest.New(t, labPrefix+"a")
	var tun *tunDev
	var tx, rx *udpSock
	rxAddr := netip.MustParseAddrPort("127.0.0.1:8285")
	if err := n.Do(func() error {
		var err error
		if tun, err = openTUN(tunPattern, true); err != nil {
			return err
		}
		if tx, err = openUDP(context.Background(), netip.MustParseAddrPort("127.0.0.1:8286"), true, true); err != nil {
			return err
		}
		rx, err = openUDP(context.Background(), rxAddr, true, true)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	defer tx.Close()
	defer rx.Close()
	if !tx.gso || !rx.gro {
		t.Skip("kernel without UDP GSO/GRO")
	}

	o, _, _ := newTestOutbound(t, true, true)
	o.sh.peers.Store(newTable([]peer{{subnet: peerNet, ip: rxAddr.Addr().As4(), port: rxAddr.Port()}}, network))
	out := &counters{}
	s := newSender(tx.conn(), o, out, testLogger(t), func(bool) {})
	o.send = s.send
	tso, _, _, _, _ := benchFrames(t)
	frame := make([]byte, len(tso))

	in := &counters{}
	ib := newInbound(&shared{}, in, true, func([][]byte) error { return nil })
	r := newReceiver(rx.conn(), ib, in, 8)
	tw := newTunWriter(tun.conn())
	tr := newTunReader(tun.conn(), func() bool { return true })
	rbuf := make([]byte, vnetHdrLen+65535)
	ping := plainFrame(udpPacket(srcCtr, dstCtr, 64, pattern(100, 0)))

	allocs := testing.AllocsPerRun(50, func() {
		copy(frame, tso)
		o.packet(frame)
		o.flush()
		if err := r.rc.Read(r.fn); err != nil || r.errno != 0 {
			t.Fatalf("recvmmsg: %v %v", err, r.errno)
		}
		_ = tw.writev([][]byte{ping[:vnetHdrLen], ping[vnetHdrLen:]}) // EIO: the device is down; the path is the same
		if _, err := tr.read(rbuf); err != unix.EAGAIN {
			t.Fatalf("tun read: %v", err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per round trip, want 0", allocs)
	}
	if st := out.snapshot(); st.Packets == 0 || st.Drops.WriteError != 0 {
		t.Errorf("sender counters %+v", st)
	}
}

// udpPair opens two UDP sockets on loopback in a fresh namespace.
func udpPair(t *testing.T) (tx, rx *udpSock, rxAddr netip.AddrPort, n *ns.NS) {
	t.Helper()
	n = netnstest.New(t, labPrefix+"g")
	rxAddr = netip.MustParseAddrPort("127.0.0.1:8285")
	if err := n.Do(func() error {
		var err error
		if tx, err = openUDP(context.Background(), netip.MustParseAddrPort("127.0.0.1:8286"), true, true); err != nil {
			return err
		}
		rx, err = openUDP(context.Background(), rxAddr, true, true)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Close(); rx.Close() })
	if !tx.gso || !rx.gro {
		t.Skip("kernel without UDP GSO/GRO")
	}
	return tx, rx, rxAddr, n
}

// recvAll reads datagrams until n inner packets arrived (GRO buffers are
// cut at their segment size) and returns their sizes.
func recvAll(t *testing.T, rx *udpSock, n int) []int {
	t.Helper()
	var sizes []int
	in := newInbound(&shared{}, &counters{}, false, nil)
	r := newReceiver(rx.conn(), in, &counters{}, 8)
	for len(sizes) < n {
		if err := r.rc.Read(r.fn); err != nil {
			t.Fatal(err)
		}
		for i := range r.n {
			h := &r.mm[i]
			l, gso := int(h.Len), groSize(r.oob[i*rxOOBLen:i*rxOOBLen+int(h.Hdr.Controllen)])
			if gso == 0 {
				gso = l
			}
			for off := 0; off < l; off += gso {
				sizes = append(sizes, min(gso, l-off))
			}
			h.Hdr.SetControllen(rxOOBLen)
		}
	}
	return sizes
}

// TestGSOFallback: a GSO message the kernel refuses goes out one datagram
// at a time; after EIO (a device that cannot checksum GSO packets) GSO is
// switched off for good, and nothing is lost either way.
func TestGSOFallback(t *testing.T) {
	for _, tc := range []struct {
		name       string
		errno      unix.Errno
		gsoStaysOn bool
	}{
		{"EINVAL", unix.EINVAL, true},
		{"EIO", unix.EIO, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, rx, rxAddr, _ := udpPair(t)
			o, _, _ := newTestOutbound(t, false, true)
			o.sh.peers.Store(newTable([]peer{{subnet: peerNet, ip: rxAddr.Addr().As4(), port: rxAddr.Port()}}, network))
			out := &counters{}
			gsoOn := true
			s := newSender(tx.conn(), o, out, testLogger(t), func(on bool) { gsoOn = on })
			var failed bool
			o.send = func(b *batch) {
				if failed {
					s.send(b)
					return
				}
				// Build the messages as send would, then fail the
				// first one as the kernel would have.
				failed = true
				if len(b.msgs) != 1 || b.msgs[0].n != 10 {
					t.Fatalf("batch of %d messages, first of %d segments; want one GSO message of 10", len(b.msgs), b.msgs[0].n)
				}
				s.build(b)
				lost, _ := s.failed(b, 0, tc.errno)
				if lost != 0 {
					t.Errorf("%d packets lost", lost)
				}
			}
			for range 10 {
				o.packet(udpPacket(srcCtr, dstCtr, 64, pattern(1000, 0)))
			}
			o.flush()
			if got := recvAll(t, rx, 10); len(got) != 10 {
				t.Fatalf("received %d datagrams, want 10", len(got))
			}
			if o.gso != tc.gsoStaysOn || gsoOn != tc.gsoStaysOn {
				t.Errorf("after %s: gso %v (reported %v), want %v", tc.errno, o.gso, gsoOn, tc.gsoStaysOn)
			}
			// Later batches still arrive, as GSO messages or one by one.
			for range 5 {
				o.packet(udpPacket(srcCtr, dstCtr, 64, pattern(1000, 0)))
			}
			o.flush()
			if got := recvAll(t, rx, 5); len(got) != 5 {
				t.Fatalf("received %d datagrams, want 5", len(got))
			}
			if st := out.snapshot(); st.Packets != 5 || st.Drops.WriteError != 0 {
				t.Errorf("counters %+v", st)
			}
		})
	}
}

// TestGSOSegmentTooLarge makes the kernel itself refuse a GSO message
// (segments larger than the path MTU) and checks the datagrams still go out.
func TestGSOSegmentTooLarge(t *testing.T) {
	tx, rx, rxAddr, h := udpPair(t)
	netnstest.Run(t, "ip", "-n", h.Name, "link", "set", "lo", "mtu", "1200")
	o, _, _ := newTestOutbound(t, false, true)
	o.sh.peers.Store(newTable([]peer{{subnet: peerNet, ip: rxAddr.Addr().As4(), port: rxAddr.Port()}}, network))
	out := &counters{}
	s := newSender(tx.conn(), o, out, testLogger(t), func(bool) {})
	o.send = s.send
	for range 8 {
		o.packet(udpPacket(srcCtr, dstCtr, 64, pattern(1400, 0)))
	}
	o.flush()
	if got := recvAll(t, rx, 8); len(got) != 8 {
		t.Fatalf("received %d datagrams, want 8", len(got))
	}
	if st := out.snapshot(); st.Packets != 8 || st.Drops.WriteError != 0 || !o.gso || s.fallbacks != 1 {
		t.Errorf("counters %+v, gso %v, %d fallbacks; want 8 sent, GSO still on, 1 fallback", st, o.gso, s.fallbacks)
	}
}

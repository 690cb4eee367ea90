package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/flannel-go/flannel/internal/netnstest"
)

// The ingress program runs here through BPF_PROG_TEST_RUN on made-up
// frames, against a reference written in Go: it must decapsulate exactly
// the datagrams the reference accepts and leave every other frame as it
// was.

var testCfg = Config{
	PublicIP: netip.MustParseAddr("192.168.77.2"), Port: 8285, ExtIndex: 2, TUNIndex: 5,
	Own:  netip.MustParsePrefix("10.77.2.0/24"),
	mark: [6]byte{0x02, 0x5a, 0x11, 0x22, 0x33, 0x44},
}

var testPeer = netip.MustParseAddr("192.168.77.1")

const (
	retRedirect = 7          // TC_ACT_REDIRECT
	retNext     = 0xffffffff // TCX_NEXT (-1)
)

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// frame builds Ethernet + IPv4 + UDP + an inner IPv4/ICMP packet, as a
// peer sends it to us.
func frame() []byte {
	inner := make([]byte, 20+16)
	inner[0], inner[8], inner[9] = 0x45, 62, 1
	binary.BigEndian.PutUint16(inner[2:], uint16(len(inner)))
	copy(inner[12:], []byte{10, 77, 1, 2})
	copy(inner[16:], []byte{10, 77, 2, 2})
	binary.BigEndian.PutUint16(inner[10:], csum(inner[:20]))
	f := make([]byte, 14+28+len(inner))
	copy(f[0:], []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00})
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(28+len(inner)))
	ip[6] = 0x40
	copy(ip[12:], testPeer.AsSlice())
	copy(ip[16:], testCfg.PublicIP.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], csum(ip[:20]))
	binary.BigEndian.PutUint16(ip[20:], 8285)
	binary.BigEndian.PutUint16(ip[22:], 8285)
	binary.BigEndian.PutUint16(ip[24:], uint16(8+len(inner)))
	copy(ip[28:], inner)
	return f
}

// wantDecap is the reference: whether the program must decapsulate f.
func wantDecap(f []byte) bool {
	if len(f) < inInner+20 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return false
	}
	ip := f[inIP:]
	if ip[0] != 0x45 || ip[9] != 17 || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return false
	}
	if netip.AddrFrom4([4]byte(ip[16:20])) != testCfg.PublicIP || binary.BigEndian.Uint16(ip[22:]) != testCfg.Port {
		return false
	}
	inner := f[inInner:]
	if binary.BigEndian.Uint16(ip[2:]) != binary.BigEndian.Uint16(inner[2:])+28 || inner[0]>>4 != 4 {
		return false
	}
	if !testCfg.Own.Contains(netip.AddrFrom4([4]byte(inner[16:20]))) || testCfg.Own.Contains(netip.AddrFrom4([4]byte(inner[12:16]))) {
		return false
	}
	return netip.AddrFrom4([4]byte(ip[12:16])) == testPeer
}

// wantMarked is the reference for frames the XDP program decapsulated
// (Ethernet source the mark): whether the program must deliver f as it is.
func wantMarked(f []byte) bool {
	if len(f) < ethLen+20 || !bytes.Equal(f[6:12], testCfg.mark[:]) || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[ethLen]>>4 != 4 {
		return false
	}
	inner := f[ethLen:]
	return testCfg.Own.Contains(netip.AddrFrom4([4]byte(inner[16:20]))) && !testCfg.Own.Contains(netip.AddrFrom4([4]byte(inner[12:16])))
}

// marked is frame() as the XDP program leaves it.
func marked() []byte {
	f := frame()
	return append(append(append(f[:6:6], testCfg.mark[:]...), 0x08, 0x00), f[inInner:]...)
}

// runProg runs prog once on frame f (BPF_PROG_TEST_RUN) and returns its
// verdict and the frame as it left, with room to grow by 64 bytes.
func runProg(t *testing.T, prog *ebpf.Program, f []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(f)+64)
	ret, err := prog.Run(&ebpf.RunOptions{Data: f, DataOut: out})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret, out
}

// checkIngress runs the program on f and compares with the reference.
func checkIngress(t *testing.T, prog *ebpf.Program, f []byte) {
	t.Helper()
	ret, out := runProg(t, prog, f)
	if bytes.Equal(f[6:12], testCfg.mark[:]) {
		switch want := wantMarked(f); {
		case want && (ret != retRedirect || !bytes.Equal(out[:len(f)], f)):
			t.Errorf("marked frame % x: returned %#x with % x, want a redirect of it unchanged", f, ret, out[:len(f)])
		case !want && (ret != retNext || !bytes.Equal(out[:len(f)], f)):
			t.Errorf("marked frame % x: returned %#x with % x, want it passed on unchanged", f, ret, out[:len(f)])
		}
		return
	}
	want := wantDecap(f)
	switch {
	case want && ret != retRedirect:
		t.Errorf("frame % x: returned %#x, want a redirect", f, ret)
	case want && !bytes.Equal(out[:len(f)-28], append(append([]byte(nil), f[:14]...), f[inInner:]...)):
		t.Errorf("frame % x: decapsulated to % x", f, out[:len(f)-28])
	case !want && ret != retNext:
		t.Errorf("frame % x: returned %#x, want it passed on", f, ret)
	case !want && !bytes.Equal(out[:len(f)], f):
		t.Errorf("frame % x: passed on changed: % x", f, out[:len(f)])
	}
}

// mutations turn a valid frame into each case the programs must tell
// apart.
var mutations = map[string]func(f []byte) []byte{
	"valid":              func(f []byte) []byte { return f },
	"not IPv4":           func(f []byte) []byte { f[12] = 0x86; return f },
	"IP options":         func(f []byte) []byte { f[inIP] = 0x46; return f },
	"TCP, not UDP":       func(f []byte) []byte { f[inIP+9] = 6; return f },
	"fragment":           func(f []byte) []byte { f[inIP+6] |= 0x20; return f },
	"fragment offset":    func(f []byte) []byte { f[inIP+7] = 1; return f },
	"other destination":  func(f []byte) []byte { f[inIP+19]++; return f },
	"other port":         func(f []byte) []byte { f[inUDP+3]++; return f },
	"unknown peer":       func(f []byte) []byte { f[inIP+15]++; return f },
	"two packets":        func(f []byte) []byte { f[inIP+3]++; return append(f, 0) },
	"inner not IPv4":     func(f []byte) []byte { f[inInner] = 0x65; return f },
	"not for our subnet": func(f []byte) []byte { f[inInner+18] = 3; return f },
	"from our subnet":    func(f []byte) []byte { f[inInner+14] = 2; return f },
	"truncated":          func(f []byte) []byte { return f[:inInner+10] },
	// A 64 KiB inner packet: the outer length wraps, as our egress
	// program writes it for such a super-packet.
	"wrapped length": func(f []byte) []byte {
		binary.BigEndian.PutUint16(f[inInner+2:], 65530)
		binary.BigEndian.PutUint16(f[inIP+2:], (65530+28)&0xffff)
		return f
	},
}

func TestIngressProgram(t *testing.T) {
	prog := loadOnce(t, progIngress)
	for name, mut := range mutations {
		t.Run(name, func(t *testing.T) { checkIngress(t, prog, mut(frame())) })
	}
	// What the XDP program decapsulated is only delivered; a frame
	// needs the whole mark, and its packet must be for our subnet.
	for name, mut := range map[string]func(f []byte) []byte{
		"marked":             func(f []byte) []byte { return f },
		"mark differs":       func(f []byte) []byte { f[11]++; return f },
		"not IPv4":           func(f []byte) []byte { f[12] = 0x86; return f },
		"inner not IPv4":     func(f []byte) []byte { f[ethLen] = 0x65; return f },
		"not for our subnet": func(f []byte) []byte { f[ethLen+18] = 3; return f },
		"from our subnet":    func(f []byte) []byte { f[ethLen+14] = 2; return f },
	} {
		t.Run(name, func(t *testing.T) {
			f := mut(marked())
			if name == "marked" && !wantMarked(f) || name != "marked" && wantMarked(f) {
				t.Fatalf("the reference disagrees with the case")
			}
			checkIngress(t, prog, f)
		})
	}
}

// checkXDP runs the XDP program on f and compares with the reference: a
// frame to decapsulate leaves as the inner packet behind an Ethernet
// header from the mark to the frame's destination; any other leaves as it
// came. Both pass on to the stack.
func checkXDP(t *testing.T, prog *ebpf.Program, f []byte) {
	t.Helper()
	ret, out := runProg(t, prog, f)
	if ret != xdpPass {
		t.Fatalf("frame % x: returned %d, want XDP_PASS", f, ret)
	}
	if wantDecap(f) {
		want := append(append(append(append([]byte(nil), f[:6]...), testCfg.mark[:]...), 0x08, 0x00), f[inInner:]...)
		if got := out[:len(want)]; !bytes.Equal(got, want) {
			t.Errorf("frame % x: decapsulated to % x, want % x", f, got, want)
		}
	} else if !bytes.Equal(out[:len(f)], f) {
		t.Errorf("frame % x: passed on changed: % x", f, out[:len(f)])
	}
}

func TestXDPProgram(t *testing.T) {
	prog := loadOnce(t, progXDP)
	for name, mut := range mutations {
		if name == "wrapped length" {
			continue // a super-packet never reaches XDP
		}
		t.Run(name, func(t *testing.T) { checkXDP(t, prog, mut(frame())) })
	}
}

// FuzzXDP is FuzzIngress for the XDP program.
func FuzzXDP(f *testing.F) {
	f.Add(0, byte(0), 0)
	f.Add(inIP+9, byte(6), 0)
	f.Add(inInner+2, byte(1), 3)
	f.Fuzz(func(t *testing.T, at int, v byte, cut int) {
		checkXDP(t, loadOnce(t, progXDP), mutate(frame(), at, v, cut, ethLen))
	})
}

// mutate flips bits v of f's byte at (if there is one) and cuts cut bytes
// off its end, leaving at least keep.
func mutate(f []byte, at int, v byte, cut, keep int) []byte {
	if at >= 0 && at < len(f) {
		f[at] ^= v
	}
	if cut > 0 && cut <= len(f)-keep {
		f = f[:len(f)-cut]
	}
	return f
}

// FuzzIngress mutates a valid frame anywhere; the program must agree with
// the reference on every result.
func FuzzIngress(f *testing.F) {
	f.Add(0, byte(0), 0)
	f.Add(inIP+9, byte(6), 0)
	f.Add(inInner+2, byte(1), 3)
	f.Add(-1, byte(0), 0)
	f.Add(-ethLen-20, byte(3), 0)
	f.Fuzz(func(t *testing.T, at int, v byte, cut int) {
		fr := frame()
		if at < 0 { // a negative offset mutates a marked frame
			fr, at = marked(), -at-1
		}
		// The kernel refuses to run on a frame that claims IPv4 but is
		// shorter than an IPv4 header.
		checkIngress(t, loadOnce(t, progIngress), mutate(fr, at, v, cut, inIP+20))
	})
}

// loaded holds the programs loadOnce loaded, for the fuzzing process's
// lifetime.
var loaded *ebpf.Collection

// loadOnce returns the named program of the collection loadIngress
// loads, loading it on first use.
func loadOnce(t *testing.T, name string) *ebpf.Program {
	if loaded == nil {
		loaded = loadIngress(t)
	}
	return loaded.Programs[name]
}

// loadIngress loads the programs unpinned, configured for testCfg with
// testPeer as the one known peer.
func loadIngress(t *testing.T) *ebpf.Collection {
	netnstest.SkipUnlessRoot(t)
	s := spec()
	for _, m := range s.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := coll.Maps[mapConfig].Put(uint32(0), marshalConfig(testCfg)); err != nil {
		t.Fatal(err)
	}
	if err := coll.Maps[mapPeerIPs].Put(testPeer.As4(), uint32(1)); err != nil {
		t.Fatal(err)
	}
	return coll
}

// TestIngressToEndpoint: a datagram for a known local container leaves
// decapsulated with the bridge's Ethernet header to the container and the
// TTL decremented (checksum still valid); a TTL of 1 is left to flannel0,
// whose forwarding answers it.
func TestIngressToEndpoint(t *testing.T) {
	coll := loadIngress(t)
	defer coll.Close()
	ep := Endpoint{Port: 42, MAC: [6]byte{0x0a, 1, 2, 3, 4, 5}, BridgeMAC: [6]byte{0x02, 0x42, 9, 8, 7, 6}}
	if err := coll.Maps[mapEndpoints].Put([4]byte{10, 77, 2, 2}, marshalEndpoint(ep)); err != nil {
		t.Fatal(err)
	}
	prog := coll.Programs[progIngress]
	run := func(f []byte) (uint32, []byte) {
		ret, out := runProg(t, prog, f)
		return ret, out[:len(f)-encapLen]
	}

	f := frame()
	ret, out := run(f)
	if ret != retRedirect {
		t.Fatalf("returned %#x, want a redirect", ret)
	}
	want := append(append(append(append([]byte(nil), ep.MAC[:]...), ep.BridgeMAC[:]...), 0x08, 0x00), f[inInner:]...)
	want[ethLen+8]--
	binary.BigEndian.PutUint16(want[ethLen+10:], 0)
	binary.BigEndian.PutUint16(want[ethLen+10:], csum(want[ethLen:ethLen+20]))
	if !bytes.Equal(out, want) {
		t.Errorf("delivered\n% x\nwant\n% x", out, want)
	}
	var per []struct{ Packets, Bytes uint64 }
	if err := coll.Maps[mapStats].Lookup(uint32(statPeer), &per); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, p := range per {
		n += p.Packets
	}
	if n != 1 {
		t.Errorf("direct delivery counted %d packets, want 1", n)
	}

	// TTL 1: decapsulated as before, for flannel0, header untouched.
	f = frame()
	f[inInner+8] = 1
	binary.BigEndian.PutUint16(f[inInner+10:], 0)
	binary.BigEndian.PutUint16(f[inInner+10:], csum(f[inInner:inInner+20]))
	ret, out = run(f)
	if want := append(append([]byte(nil), f[:ethLen]...), f[inInner:]...); ret != retRedirect || !bytes.Equal(out, want) {
		t.Errorf("TTL 1: returned %#x with % x, want a redirect of % x", ret, out, want)
	}
}

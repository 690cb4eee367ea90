package udp

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// bruteLPM is longest-prefix match by scanning every peer.
func bruteLPM(peers []peer, a netip.Addr) *peer {
	var best *peer
	for i := range peers {
		p := &peers[i]
		if p.subnet.Contains(a) && (best == nil || p.subnet.Bits() > best.subnet.Bits()) {
			best = p
		}
	}
	return best
}

func TestTableLongestPrefixMatch(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	net16 := netip.MustParsePrefix("10.5.0.0/16")
	for round := range 50 {
		var peers []peer
		seen := map[netip.Prefix]bool{}
		add := func(p netip.Prefix) {
			p = p.Masked()
			if seen[p] {
				return
			}
			seen[p] = true
			peers = append(peers, peer{subnet: p, ip: [4]byte{192, 168, byte(len(peers) >> 8), byte(len(peers))}, port: 8285})
		}
		// Leases of the network (dense levels), plus odd lengths, a
		// prefix shorter than the network, and subnets outside it (sparse).
		for range 1 + r.IntN(300) {
			add(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(r.IntN(256)), 0}), 24))
		}
		for range r.IntN(20) {
			add(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(r.IntN(256)), byte(r.IntN(256))}), 25+r.IntN(8)))
		}
		if round%2 == 0 {
			add(netip.MustParsePrefix("10.0.0.0/8"))
			add(netip.MustParsePrefix("172.16.4.0/24"))
			add(netip.MustParsePrefix("0.0.0.0/0"))
		}
		tb := newTable(peers, net16)
		for range 5000 {
			var a netip.Addr
			switch r.IntN(3) {
			case 0:
				a = netip.AddrFrom4([4]byte{10, 5, byte(r.IntN(256)), byte(r.IntN(256))})
			case 1:
				a = peers[r.IntN(len(peers))].subnet.Addr()
			default:
				a = netip.AddrFrom4([4]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
			}
			got, want := tb.lookup(addrBits(a)), bruteLPM(tb.peers, a)
			if got != want {
				t.Fatalf("round %d: lookup(%s) = %v, want %v", round, a, got, want)
			}
		}
	}
}

func TestTableEmpty(t *testing.T) {
	tb := newTable(nil, network)
	if p := tb.lookup(addrBits(dstCtr)); p != nil {
		t.Fatalf("empty table found %v", p)
	}
}

func BenchmarkLookup(b *testing.B) {
	var peers []peer
	for i := range 1000 {
		peers = append(peers, peer{subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)})
	}
	dsts := make([]uint32, 1024)
	for i := range dsts {
		dsts[i] = addrBits(peers[i*7%len(peers)].subnet.Addr()) | 9
	}
	for _, tc := range []struct {
		name string
		net  netip.Prefix
	}{{"dense", netip.MustParsePrefix("10.0.0.0/8")}, {"map", netip.Prefix{}}} {
		tb := newTable(peers, tc.net)
		b.Run(tc.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				if tb.lookup(dsts[i&1023]) == nil {
					b.Fatal("miss")
				}
				i++
			}
		})
	}
}

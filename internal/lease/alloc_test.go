package lease_test

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

var (
	equateNetip = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})
	pfx         = netip.MustParsePrefix
	addr        = netip.MustParseAddr
)

func mustConfig(t testing.TB, s string) *netconf.Config {
	t.Helper()
	c, err := netconf.Parse([]byte(s))
	if err != nil {
		t.Fatalf("config %s: %v", s, err)
	}
	return c
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = pfx(s)
	}
	return out
}

func TestFits(t *testing.T) {
	dual := mustConfig(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.20.0",
		"EnableIPv6":true,"IPv6Network":"fc00::/48"}`)
	v4only := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
	tests := []struct {
		name      string
		cfg       *netconf.Config
		sn        string
		fit, fit6 bool
	}{
		{"SubnetMin itself", dual, "10.5.10.0/24", true, false},
		{"SubnetMax itself", dual, "10.5.20.0/24", true, false},
		{"between", dual, "10.5.15.0/24", true, false},
		{"below SubnetMin", dual, "10.5.9.0/24", false, false},
		{"above SubnetMax", dual, "10.5.21.0/24", false, false},
		{"wrong length", dual, "10.5.10.0/25", false, false},
		{"host bits", dual, "10.5.10.7/24", false, false},
		{"outside Network", dual, "10.6.10.0/24", false, false},
		{"whole network", dual, "10.5.0.0/16", false, false},
		{"v6 first subnet skipped", dual, "fc00::/64", false, false},
		{"v6 default SubnetMin", dual, "fc00:0:0:1::/64", false, true},
		{"v6 default SubnetMax", dual, "fc00:0:0:ffff::/64", false, true},
		{"v6 outside", dual, "fc00:0:1::/64", false, false},
		{"v6 wrong length", dual, "fc00:0:0:1::/65", false, false},
		{"v6 host bits", dual, "fc00:0:0:1::1/64", false, false},
		{"v4-mapped", dual, "::ffff:10.5.10.0/120", false, false},
		{"v6 with IPv6 off", v4only, "fc00:0:0:1::/64", false, false},
		{"default range", v4only, "10.5.255.0/24", true, false},
		{"first subnet reserved by default", v4only, "10.5.0.0/24", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sn := pfx(tt.sn)
			if got := lease.Fits(tt.cfg, sn); got != tt.fit {
				t.Errorf("Fits(%s) = %v, want %v", sn, got, tt.fit)
			}
			if got := lease.Fits6(tt.cfg, sn); got != tt.fit6 {
				t.Errorf("Fits6(%s) = %v, want %v", sn, got, tt.fit6)
			}
		})
	}
	if lease.Fits(dual, netip.Prefix{}) || lease.Fits6(dual, netip.Prefix{}) || lease.Fits(nil, pfx("10.5.10.0/24")) {
		t.Error("an invalid prefix or a nil config fits")
	}
	v6only := mustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fc00::/48"}`)
	if lease.Fits(v6only, pfx("10.5.10.0/24")) {
		t.Error("Fits with IPv4 disabled")
	}
}

func TestFreeSubnets(t *testing.T) {
	tests := []struct {
		name      string
		network   string
		subnetLen int
		lo, hi    string
		taken     []string
		limit     int
		want      []string
	}{{
		name: "SubnetMin and SubnetMax bound the walk", network: "10.5.0.0/16", subnetLen: 24,
		lo: "10.5.10.0", hi: "10.5.12.0", limit: 100,
		want: []string{"10.5.10.0/24", "10.5.11.0/24", "10.5.12.0/24"},
	}, {
		name: "taken leases skipped, limit respected", network: "10.5.0.0/16", subnetLen: 24,
		lo: "10.5.1.0", hi: "10.5.255.0", taken: []string{"10.5.1.0/24", "10.5.3.0/24", "10.5.2.0/24", "10.5.5.0/24"}, limit: 3,
		want: []string{"10.5.4.0/24", "10.5.6.0/24", "10.5.7.0/24"},
	}, {
		name: "a /16 reservation blocks every subnet inside it", network: "10.0.0.0/14", subnetLen: 24,
		lo: "10.0.254.0", hi: "10.3.255.0", taken: []string{"10.1.0.0/16"}, limit: 4,
		want: []string{"10.0.254.0/24", "10.0.255.0/24", "10.2.0.0/24", "10.2.1.0/24"},
	}, {
		name: "a /32 or /26 inside a subnet blocks it", network: "10.5.0.0/16", subnetLen: 24,
		lo: "10.5.1.0", hi: "10.5.255.0", taken: []string{"10.5.1.77/32", "10.5.2.64/26"}, limit: 2,
		want: []string{"10.5.3.0/24", "10.5.4.0/24"},
	}, {
		name: "a single address at either edge of a subnet blocks it", network: "10.5.0.0/16", subnetLen: 24,
		lo: "10.5.1.0", hi: "10.5.255.0", taken: []string{"10.5.1.255/32", "10.5.2.0/32", "fc00::/128"}, limit: 2,
		want: []string{"10.5.3.0/24", "10.5.4.0/24"},
	}, {
		name: "a taken prefix with host bits counts as its network", network: "10.5.0.0/16", subnetLen: 24,
		lo: "10.5.1.0", hi: "10.5.255.0", taken: []string{"10.5.1.9/24"}, limit: 1,
		want: []string{"10.5.2.0/24"},
	}, {
		name: "nested, overlapping and unsorted taken", network: "10.5.0.0/16", subnetLen: 24,
		lo: "10.5.1.0", hi: "10.5.255.0",
		taken: []string{"10.5.8.0/21", "10.5.0.0/22", "10.5.1.0/24", "10.5.4.0/24", "10.5.9.0/24", "10.5.16.0/23"}, limit: 5,
		want: []string{"10.5.5.0/24", "10.5.6.0/24", "10.5.7.0/24", "10.5.18.0/24", "10.5.19.0/24"},
	}, {
		name: "other family and other networks ignored", network: "10.5.0.0/16", subnetLen: 24,
		lo: "10.5.1.0", hi: "10.5.255.0", taken: []string{"fc00::/8", "10.6.1.0/24", "::ffff:10.5.1.0/120"}, limit: 1,
		want: []string{"10.5.1.0/24"},
	}, {
		name: "unaligned bounds round inwards", network: "10.5.0.0/16", subnetLen: 24,
		lo: "10.5.1.5", hi: "10.5.4.255", limit: 10,
		want: []string{"10.5.2.0/24", "10.5.3.0/24", "10.5.4.0/24"},
	}, {
		name: "bounds outside the network are clipped", network: "10.5.0.0/23", subnetLen: 25,
		lo: "10.4.0.0", hi: "10.9.0.0", limit: 10,
		want: []string{"10.5.0.0/25", "10.5.0.128/25", "10.5.1.0/25", "10.5.1.128/25"},
	}, {
		name: "top of the IPv4 space does not wrap", network: "255.255.255.0/24", subnetLen: 26,
		lo: "255.255.255.0", hi: "255.255.255.192", taken: []string{"255.255.255.64/26"}, limit: 10,
		want: []string{"255.255.255.0/26", "255.255.255.128/26", "255.255.255.192/26"},
	}, {
		name: "taken reaching the top of the IPv4 space", network: "255.255.255.0/24", subnetLen: 26,
		lo: "255.255.255.0", hi: "255.255.255.192", taken: []string{"255.255.255.128/25"}, limit: 10,
		want: []string{"255.255.255.0/26", "255.255.255.64/26"},
	}, {
		name: "everything taken", network: "10.5.0.0/16", subnetLen: 24,
		lo: "10.5.1.0", hi: "10.5.255.0", taken: []string{"0.0.0.0/0"}, limit: 10,
	}, {
		name: "limit zero", network: "10.5.0.0/16", subnetLen: 24, lo: "10.5.1.0", hi: "10.5.255.0", limit: 0,
	}, {
		name: "SubnetMin above SubnetMax", network: "10.5.0.0/16", subnetLen: 24, lo: "10.5.9.0", hi: "10.5.8.0", limit: 10,
	}, {
		name: "mixed families", network: "10.5.0.0/16", subnetLen: 24, lo: "fc00::", hi: "10.5.8.0", limit: 10,
	}, {
		name: "subnet longer than the address", network: "10.5.0.0/16", subnetLen: 33, lo: "10.5.0.0", hi: "10.5.8.0", limit: 10,
	}, {
		name: "subnet shorter than the network", network: "10.5.0.0/16", subnetLen: 15, lo: "10.5.0.0", hi: "10.5.8.0", limit: 10,
	}, {
		name: "IPv6", network: "fc00::/48", subnetLen: 64,
		lo: "fc00:0:0:1::", hi: "fc00:0:0:ffff::", taken: []string{"fc00:0:0:1::/64", "fc00:0:0:2::/63", "10.5.0.0/16"}, limit: 3,
		want: []string{"fc00:0:0:4::/64", "fc00:0:0:5::/64", "fc00:0:0:6::/64"},
	}, {
		name: "IPv6 reservation of half the network", network: "fc00::/48", subnetLen: 64,
		lo: "fc00:0:0:1::", hi: "fc00:0:0:ffff::", taken: []string{"fc00::/49"}, limit: 2,
		want: []string{"fc00:0:0:8000::/64", "fc00:0:0:8001::/64"},
	}, {
		name: "IPv6 subnets across the 64-bit boundary", network: "fc00:0:0:ff00::/56", subnetLen: 66,
		lo: "fc00:0:0:ff00::", hi: "fc00:0:0:ffff:c000::", taken: []string{"fc00:0:0:ff00::/65"}, limit: 3,
		want: []string{"fc00:0:0:ff00:8000::/66", "fc00:0:0:ff00:c000::/66", "fc00:0:0:ff01::/66"},
	}, {
		name: "top of the IPv6 space does not wrap", network: "ffff:ffff:ffff:fffc::/62", subnetLen: 64,
		lo: "ffff:ffff:ffff:fffc::", hi: "ffff:ffff:ffff:ffff::", taken: []string{"ffff:ffff:ffff:fffd::/64", "ffff:ffff:ffff:ffff::/64"}, limit: 10,
		want: []string{"ffff:ffff:ffff:fffc::/64", "ffff:ffff:ffff:fffe::/64"},
	}, {
		name: "IPv6 all taken", network: "fc00::/48", subnetLen: 64,
		lo: "fc00:0:0:1::", hi: "fc00:0:0:ffff::", taken: []string{"::/0"}, limit: 10,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := lease.FreeSubnets(pfx(tt.network), tt.subnetLen, addr(tt.lo), addr(tt.hi), prefixes(tt.taken...), tt.limit)
			if diff := cmp.Diff(prefixes(tt.want...), got, equateNetip, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("FreeSubnets mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// Upstream's worked example: 10.5.0.0/16 has 255 leases to give out.
func TestFreeSubnetsWorkedExample(t *testing.T) {
	c := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
	free := lease.FreeSubnets(c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, nil, 1000)
	if len(free) != 255 || free[0] != pfx("10.5.1.0/24") || free[254] != pfx("10.5.255.0/24") {
		t.Errorf("got %d subnets %v…, want the 255 from 10.5.1.0/24 to 10.5.255.0/24", len(free), free[:min(3, len(free))])
	}
}

// randomPrefix returns a prefix of any length near network, so that taken
// sets mix leases, reservations that cover several subnets, single hosts
// and prefixes outside the network. Addresses favour the first and last
// address of a subnet, where off-by-one errors live.
func randomPrefix(rng *rand.Rand, network netip.Prefix, subnetLen int) netip.Prefix {
	b := network.Addr().As16()
	bitLen := network.Addr().BitLen()
	off := 128 - bitLen
	from := max(0, network.Bits()-2) // a few bits above the network too
	edge := rng.IntN(3)              // 0: random, 1: subnet's first, 2: subnet's last
	for i := from; i < bitLen; i++ {
		one := rng.IntN(2) == 1
		if i >= subnetLen && edge != 0 {
			one = edge == 2
		}
		pos := off + i
		if one {
			b[pos/8] |= 0x80 >> (pos % 8)
		} else {
			b[pos/8] &^= 0x80 >> (pos % 8)
		}
	}
	a := netip.AddrFrom16(b)
	if network.Addr().Is4() {
		a = a.Unmap()
	}
	if rng.IntN(3) == 0 {
		return netip.PrefixFrom(a, bitLen)
	}
	return netip.PrefixFrom(a, from+rng.IntN(bitLen-from+1))
}

// FreeSubnets against a brute force walk over every candidate, for random
// bounds and random taken sets in both families.
func TestFreeSubnetsMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		network   netip.Prefix
		subnetLen int
	}{
		{pfx("10.5.0.0/20"), 26},
		{pfx("10.5.0.0/22"), 24},
		{pfx("fc00:0:0:ff00::/56"), 62},
		{pfx("fc00:0:0:ff00::/60"), 66}, // subnets straddle the 64-bit halves
	} {
		all := subnetsOf(tc.network, tc.subnetLen)
		for range 2000 {
			lo := all[rng.IntN(len(all))].Addr()
			hi := all[rng.IntN(len(all))].Addr()
			var taken []netip.Prefix
			for range rng.IntN(12) {
				taken = append(taken, randomPrefix(rng, tc.network, tc.subnetLen))
			}
			var want []netip.Prefix
			for _, c := range all {
				if c.Addr().Compare(lo) < 0 || c.Addr().Compare(hi) > 0 {
					continue
				}
				free := true
				for _, p := range taken {
					free = free && !p.Masked().Overlaps(c)
				}
				if free {
					want = append(want, c)
				}
			}
			limit := 1 + rng.IntN(len(all))
			want = want[:min(limit, len(want))]
			got := lease.FreeSubnets(tc.network, tc.subnetLen, lo, hi, taken, limit)
			if diff := cmp.Diff(want, got, equateNetip, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("FreeSubnets(%s, /%d, %s, %s, %v, %d) mismatch (-want +got):\n%s",
					tc.network, tc.subnetLen, lo, hi, taken, limit, diff)
			}
		}
	}
}

// subnetsOf lists every subnet of length n in network, by writing the
// subnet index into the bits between the two prefix lengths.
func subnetsOf(network netip.Prefix, n int) []netip.Prefix {
	var out []netip.Prefix
	for i := 0; i < 1<<(n-network.Bits()); i++ {
		b := network.Addr().As16()
		off := 128 - network.Addr().BitLen()
		for bit := n - 1; bit >= network.Bits(); bit-- {
			if i>>(n-1-bit)&1 == 1 {
				pos := off + bit
				b[pos/8] |= 0x80 >> (pos % 8)
			}
		}
		a := netip.AddrFrom16(b)
		if network.Addr().Is4() {
			a = a.Unmap()
		}
		out = append(out, netip.PrefixFrom(a, n))
	}
	return out
}

func TestPickFreeExhausted(t *testing.T) {
	c := mustConfig(t, `{"Network":"10.5.0.0/28"}`) // /30 subnets 10.5.0.4, .8, .12
	taken := prefixes("10.5.0.4/30", "10.5.0.8/30")
	sn, err := lease.PickFree(nil, c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, taken)
	if err != nil || sn != pfx("10.5.0.12/30") {
		t.Fatalf("PickFree with one subnet left = %s, %v; want 10.5.0.12/30", sn, err)
	}
	taken = append(taken, sn)
	sn, err = lease.PickFree(nil, c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, taken)
	if !errors.Is(err, lease.ErrNoFreeSubnet) {
		t.Fatalf("PickFree with every subnet taken = %s, %v; want ErrNoFreeSubnet", sn, err)
	}
	if !strings.Contains(err.Error(), "10.5.0.0/28") {
		t.Errorf("error %q does not name the network", err)
	}
}

// Upstream picks uniformly among the first 100 free subnets: every one of
// them comes up, nothing beyond them, and never a taken one.
func TestPickFreeChoosesAmongFirst100(t *testing.T) {
	c := mustConfig(t, `{"Network":"10.0.0.0/8"}`)
	var taken []netip.Prefix
	for i := 0; i < 50; i++ { // every other subnet from 10.0.1.0
		taken = append(taken, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(1 + 2*i), 0}), 24))
	}
	first100 := lease.FreeSubnets(c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, taken, 100)
	allowed := map[netip.Prefix]int{}
	for _, p := range first100 {
		allowed[p] = 0
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 5000 {
		sn, err := lease.PickFree(rng, c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, taken)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := allowed[sn]; !ok {
			t.Fatalf("picked %s, which is not among the first 100 free subnets", sn)
		}
		allowed[sn]++
	}
	for p, n := range allowed {
		// Expect 50 each; 15 is far outside any plausible deviation.
		if n < 15 {
			t.Errorf("%s picked %d times out of 5000", p, n)
		}
	}
}

func TestPick(t *testing.T) {
	dual := mustConfig(t, `{"Network":"10.5.0.0/28","EnableIPv6":true,"IPv6Network":"fc00::/62"}`)
	taken := []lease.Lease{
		{Subnet: pfx("10.5.0.4/30"), Subnet6: pfx("fc00:0:0:1::/64")},
		{Subnet: pfx("10.5.0.8/30")},
		{Subnet: pfx("10.5.0.0/30"), Subnet6: pfx("fc00:0:0:3::/64")}, // outside the range; harmless
	}
	sn, sn6, err := lease.Pick(nil, dual, taken)
	if err != nil || sn != pfx("10.5.0.12/30") || sn6 != pfx("fc00:0:0:2::/64") {
		t.Fatalf("Pick = %s, %s, %v; want the one free subnet of each family", sn, sn6, err)
	}
	if !lease.Fits(dual, sn) || !lease.Fits6(dual, sn6) {
		t.Errorf("picked subnets do not fit the config")
	}

	v4 := mustConfig(t, `{"Network":"10.5.0.0/28"}`)
	sn, sn6, err = lease.Pick(nil, v4, taken)
	if err != nil || sn != pfx("10.5.0.12/30") || sn6.IsValid() {
		t.Errorf("Pick with IPv6 off = %s, %s, %v; want 10.5.0.12/30 and no IPv6 subnet", sn, sn6, err)
	}

	// IPv6 exhausted by a reservation of the whole network, IPv4 not.
	taken = []lease.Lease{{Subnet: pfx("10.5.0.4/30"), Subnet6: pfx("fc00::/62")}}
	sn, sn6, err = lease.Pick(nil, dual, taken)
	if !errors.Is(err, lease.ErrNoFreeSubnet) || !strings.Contains(err.Error(), "fc00::/62") {
		t.Errorf("Pick with IPv6 exhausted = %s, %s, %v; want ErrNoFreeSubnet naming fc00::/62", sn, sn6, err)
	}
}

// The case upstream's issue tracker worries about: a big cluster. A /8 of
// /24s with 5,000 hosts, the taken ones in random order.
func BenchmarkPickFree5000Taken(b *testing.B) {
	c := mustConfig(b, `{"Network":"10.0.0.0/8"}`)
	rng := rand.New(rand.NewPCG(1, 1))
	all := lease.FreeSubnets(c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, nil, 1<<20)
	// The first 4,000 subnets (the worst case for a walk from SubnetMin)
	// plus 1,000 scattered ones.
	taken := append([]netip.Prefix(nil), all[:4000]...)
	for _, i := range rng.Perm(len(all) - 4000)[:1000] {
		taken = append(taken, all[4000+i])
	}
	rng.Shuffle(len(taken), func(i, j int) { taken[i], taken[j] = taken[j], taken[i] })
	b.ReportAllocs()
	for b.Loop() {
		if _, err := lease.PickFree(rng, c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, taken); err != nil {
			b.Fatal(err)
		}
	}
}

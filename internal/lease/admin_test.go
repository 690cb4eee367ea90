package lease_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
	"github.com/flannel-go/flannel/internal/netconf"
)

func TestParseSubnet(t *testing.T) {
	for _, s := range []string{"10.5.34.0/24", "10.5.34.0-24"} {
		sn, sn6, err := lease.ParseSubnet(s)
		if err != nil || sn != netip.MustParsePrefix("10.5.34.0/24") || sn6.IsValid() {
			t.Errorf("%s: %v %v %v", s, sn, sn6, err)
		}
	}
	if _, sn6, err := lease.ParseSubnet("10.5.34.0-24&fc00:0:0:1::-64"); err != nil || sn6 != netip.MustParsePrefix("fc00:0:0:1::/64") {
		t.Errorf("dual-stack key: %v %v", sn6, err)
	}
	for _, bad := range []string{"10.5.34.1/24", "fc00::/64", "10.5.34.0", "banana"} {
		if _, _, err := lease.ParseSubnet(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestFormatLeft(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "expired", -time.Second: "expired", 9 * time.Second: "9s",
		4*time.Minute + 5*time.Second: "4m05s", 23*time.Hour + 59*time.Minute: "23h59m",
	} {
		if got := lease.FormatLeft(d); got != want {
			t.Errorf("FormatLeft(%v) = %q, want %q", d, got, want)
		}
	}
}

func attrs(ip string) lease.Attrs {
	return lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan"}
}

func TestListAndFind(t *testing.T) {
	ctx := context.Background()
	s := leasetest.New(nil)
	for _, sn := range []string{"10.5.3.0/24", "10.5.1.0/24", "10.5.2.0/24"} {
		if _, err := s.Create(ctx, lease.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: attrs("192.168.0.1")}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	ls, err := lease.List(ctx, s)
	if err != nil || len(ls) != 3 || ls[0].Subnet.String() != "10.5.1.0/24" || ls[2].Subnet.String() != "10.5.3.0/24" || ls[0].Expires.IsZero() {
		t.Fatalf("List = %v, %v; want three in subnet order, with expiries", ls, err)
	}
	if l, err := lease.Find(ctx, s, netip.MustParsePrefix("10.5.2.0/24"), netip.Prefix{}); err != nil || l.Subnet.String() != "10.5.2.0/24" {
		t.Errorf("Find = %v, %v", l, err)
	}
	if _, err := lease.Find(ctx, s, netip.MustParsePrefix("10.5.9.0/24"), netip.Prefix{}); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("Find of a free subnet: %v, want ErrNotFound", err)
	}
}

func TestReserveSubnet(t *testing.T) {
	ctx := context.Background()
	cfg, err := netconf.Parse([]byte(`{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.4.0","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	s := leasetest.New(nil)
	p := netip.MustParsePrefix
	ip := netip.MustParseAddr
	own, err := s.Create(ctx, lease.Lease{Subnet: p("10.5.1.0/24"), Attrs: attrs("192.168.1.11")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, lease.Lease{Subnet: p("10.5.2.0/24"), Attrs: attrs("192.168.1.12")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sn, ip  string
		overlap bool
	}{
		{"10.5.9.0/24", "192.168.1.20", false}, // beyond SubnetMax
		{"10.5.3.0/25", "192.168.1.20", false}, // wrong length
		{"10.5.3.0/24", "10.5.7.7", false},     // inside the overlay
		{"10.5.2.0/24", "192.168.1.20", true},  // another host's lease
	} {
		_, err := lease.ReserveSubnet(ctx, s, cfg, p(tc.sn), netip.Prefix{}, ip(tc.ip))
		var oe *lease.OverlapError
		if err == nil || errors.As(err, &oe) != tc.overlap {
			t.Errorf("reserve %s for %s: %v (overlap %v)", tc.sn, tc.ip, err, tc.overlap)
		}
	}

	r, err := lease.ReserveSubnet(ctx, s, cfg, p("10.5.3.0/24"), netip.Prefix{}, ip("192.168.1.11"))
	if err != nil || !r.Lease.Reserved() || r.Converted || r.Already || len(r.Elsewhere) != 1 || r.Elsewhere[0] != p("10.5.1.0/24") {
		t.Fatalf("new reservation: %+v, %v", r, err)
	}
	if r, err := lease.ReserveSubnet(ctx, s, cfg, p("10.5.3.0/24"), netip.Prefix{}, ip("192.168.1.11")); err != nil || !r.Already {
		t.Errorf("reserving twice: %+v, %v", r, err)
	}
	r, err = lease.ReserveSubnet(ctx, s, cfg, p("10.5.1.0/24"), netip.Prefix{}, ip("192.168.1.11"))
	if err != nil || !r.Converted || !r.Lease.Reserved() {
		t.Fatalf("converting the host's own lease: %+v, %v", r, err)
	}
	if _, err := s.Renew(ctx, own, time.Hour); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("the converted lease can still be renewed: %v", err)
	}
	got, err := s.Lookup(ctx, own.Key())
	if err != nil || !got.Reserved() || got.Attrs.BackendType != "vxlan" {
		t.Errorf("converted key: %+v, %v; want a reservation keeping the value", got, err)
	}
}

// An accepted subnet argument names a masked IPv4 subnet (and IPv6 one)
// that reads back the same, as CIDR and as its key.
func FuzzParseSubnet(f *testing.F) {
	for _, s := range []string{"10.5.34.0/24", "10.5.34.0-24", "10.5.34.0-24&fc00:0:0:1::-64", "fc00::/64", "10.5.34.1/24", "", "/", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sn, sn6, err := lease.ParseSubnet(s)
		if err != nil {
			return
		}
		if !sn.Addr().Is4() || sn.Masked() != sn || (sn6.IsValid() && (!sn6.Addr().Is6() || sn6.Masked() != sn6)) {
			t.Fatalf("%q: accepted %v %v", s, sn, sn6)
		}
		key := lease.MakeKey(sn, sn6)
		if a, b, err := lease.ParseSubnet(key); err != nil || a != sn || b != sn6 {
			t.Fatalf("%q: key %q reads back as %v %v %v", s, key, a, b, err)
		}
	})
}

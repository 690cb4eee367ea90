package daemon

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

func TestOverlaps(t *testing.T) {
	leases := func(subnets ...string) map[string]lease.Lease {
		m := map[string]lease.Lease{}
		for _, s := range subnets {
			l := lease.Lease{Subnet: netip.MustParsePrefix(s)}
			m[l.Key()] = l
		}
		return m
	}
	cases := []struct {
		name    string
		leases  map[string]lease.Lease
		ignored []string // keys
	}{
		{"all of SubnetLen", leases("10.5.1.0/24", "10.5.2.0/24", "10.5.3.0/24"), nil},
		{"odd length alone", leases("10.5.1.0/24", "10.5.8.0/23"), nil},
		{"half of a peer's subnet", leases("10.5.1.0/24", "10.5.1.128/25", "10.5.2.0/24"), []string{"10.5.1.128-25"}},
		{"wider than peers", leases("10.5.1.0/24", "10.5.2.0/24", "10.5.0.0/22", "10.5.9.0/24"), []string{"10.5.0.0-22"}},
		{"two odd ones nested", leases("10.5.0.0/22", "10.5.1.128/25"), []string{"10.5.0.0-22", "10.5.1.128-25"}},
		{"odd one after a nested pair", leases("10.5.0.0/23", "10.5.1.0/24", "10.5.2.0/25"), []string{"10.5.0.0-23"}},
	}
	for _, c := range cases {
		got := slices.Sorted(maps.Keys(overlaps(24, c.leases)))
		if !slices.Equal(got, c.ignored) {
			t.Errorf("%s: ignored %v, want %v", c.name, got, c.ignored)
		}
	}
}

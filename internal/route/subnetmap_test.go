package route

import (
	"maps"
	"net/netip"
	"testing"
)

func TestSubnetMapKeepsEveryPrefixApart(t *testing.T) {
	sns := []netip.Prefix{
		netip.MustParsePrefix("10.0.3.0/24"), netip.MustParsePrefix("10.0.3.0/25"),
		netip.MustParsePrefix("10.0.3.1/24"), // not masked: another key, as in a map by netip.Prefix
		netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("255.255.255.255/32"),
		netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("::ffff:10.0.3.0/120"),
	}
	m := newSubnetMap[int](0)
	for i, sn := range sns {
		m.set(sn, i)
	}
	if m.len() != len(sns) {
		t.Fatalf("len %d, want %d", m.len(), len(sns))
	}
	got := maps.Collect(m.all())
	for i, sn := range sns {
		if v, ok := m.get(sn); !ok || v != i || got[sn] != i {
			t.Errorf("%s: get %d %v, all %d; want %d", sn, v, ok, got[sn], i)
		}
	}
	for _, sn := range sns {
		m.del(sn)
		if _, ok := m.get(sn); ok {
			t.Errorf("%s still there", sn)
		}
	}
	if m.len() != 0 {
		t.Errorf("len %d after deleting all", m.len())
	}
}

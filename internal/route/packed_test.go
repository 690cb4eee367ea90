package route

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// TestPackedWant: a Want packed as a Frame keeps it reads back the same,
// for either family, device routes, metrics and no entries at all.
func TestPackedWant(t *testing.T) {
	mac := MAC{2, 0, 0, 0, 1, 2}
	for _, w := range []Want{
		{},
		{Problem: "VNI 2, ours is 1"},
		{
			Claims: []string{"VtepMAC " + mac.String(), "address 10.5.1.0"},
			State: State{
				Routes: []Route{
					{Dst: netip.MustParsePrefix("10.5.1.0/24"), Gw: netip.MustParseAddr("10.5.1.0"), LinkIndex: 7, OnLink: true},
					{Dst: netip.MustParsePrefix("fd00:5:1::/64"), Gw: netip.MustParseAddr("fd00::1"), LinkIndex: 1 << 20, Metric: 1 << 31},
					{Dst: netip.MustParsePrefix("10.6.0.0/16"), LinkIndex: 3},
					{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("::ffff:10.0.0.1")},
				},
				Neighs: []Neigh{{IP: netip.MustParseAddr("10.5.1.0"), MAC: mac, LinkIndex: 7}},
				FDB:    []FDB{{MAC: mac, Dst: netip.MustParseAddr("192.168.0.2"), LinkIndex: 7}},
			},
		},
	} {
		p := packWant(w)
		if got := p.problem(); got != w.Problem {
			t.Errorf("%+v: problem %q", w, got)
		}
		if got := slices.Collect(p.claims()); !slices.Equal(got, w.Claims) {
			t.Errorf("%+v: claims %q", w, got)
		}
		if got := p.state(); !reflect.DeepEqual(got, w.State) {
			t.Errorf("packed and read back:\n%+v\nwant\n%+v", got, w.State)
		}
	}
}

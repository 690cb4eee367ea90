package lab

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

func TestFakeLeasesAndExpectedEntries(t *testing.T) {
	own := netip.MustParsePrefix("10.0.2.0/24")
	ls := FakeLeases("vxlan", own, 3)
	if len(ls) != 3 {
		t.Fatalf("%d leases, want 3", len(ls))
	}
	seen := map[string]bool{}
	for _, l := range ls {
		if l.Subnet == own || !ScaleNetwork.Contains(l.Subnet.Addr()) || !ScaleUnderlay.Contains(l.Attrs.PublicIP) || seen[l.Key()] {
			t.Errorf("lease %+v: own, outside the scale networks, or repeated", l)
		}
		seen[l.Key()] = true
		// The value decodes as upstream's.
		if _, err := lease.Decode(l.Key(), mustJSON(t, l.Attrs)); err != nil {
			t.Errorf("%s: %v", l.Key(), err)
		}
		if !strings.Contains(string(l.Attrs.BackendData), `"VNI":1`) {
			t.Errorf("%s: BackendData %s", l.Key(), l.Attrs.BackendData)
		}
	}
	e, err := ExpectedEntries("vxlan", ls)
	if err != nil || len(e.Routes) != 3 || len(e.Neighs) != 3 || len(e.FDB) != 3 {
		t.Fatalf("vxlan entries: %+v, %v", e, err)
	}
	if e.Routes[0].Gw != ls[0].Subnet.Addr() || e.FDB[0].Dst != ls[0].Attrs.PublicIP || e.Neighs[0].MAC != e.FDB[0].MAC {
		t.Errorf("vxlan entries do not match the leases: %+v", e)
	}
	hg, err := ExpectedEntries("host-gw", FakeLeases("host-gw", own, 2))
	if err != nil || len(hg.Routes) != 2 || len(hg.Neighs) != 0 || hg.Routes[0].Gw != netip.MustParseAddr("172.20.0.1") {
		t.Errorf("host-gw entries: %+v, %v", hg, err)
	}
}

func mustJSON(t *testing.T, a lease.Attrs) []byte {
	t.Helper()
	b, err := a.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

package vxlan

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

// A peer's BackendData is decoded once and reused while it is unchanged;
// every change of it (bad → good, one MAC → another) must still reach the
// kernel, and peers that come and go must not pile up in memory.
func TestBackendDataChangesReachTheKernel(t *testing.T) {
	hs := newHosts(t, 1)
	a := hs[0]
	a.start(t, `{"Type":"vxlan"}`)
	peer := func(data string) lease.Lease {
		return lease.Lease{
			Subnet: netip.MustParsePrefix("10.5.9.0/24"),
			Attrs: lease.Attrs{
				PublicIP:    netip.MustParseAddr("192.168.100.9"),
				BackendType: Type,
				BackendData: json.RawMessage(data),
			},
		}
	}
	show := func() string {
		return a.IP(t, "-4", "neigh", "show", "dev", "flannel.1") +
			a.IP(t, "-4", "route", "show", "dev", "flannel.1")
	}
	sync := func(ls ...lease.Lease) {
		t.Helper()
		if err := a.B.Sync(t.Context(), ls); err != nil {
			t.Fatal(err)
		}
	}

	sync(peer(`{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`)) // a group MAC: refused
	if got := show(); strings.Contains(got, "10.5.9.0") {
		t.Fatalf("peer with a multicast VtepMAC got entries:\n%s", got)
	}
	for _, mac := range []string{"0e:00:00:00:00:01", "0e:00:00:00:00:02"} {
		sync(peer(fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac)))
		got := show()
		if !strings.Contains(got, "10.5.9.0 lladdr "+mac+" PERMANENT") || !strings.Contains(got, "10.5.9.0/24 via 10.5.9.0") {
			t.Fatalf("after the peer's VtepMAC became %s:\n%s", mac, got)
		}
	}

	for i := range 200 {
		l := peer(`{"VNI":1,"VtepMAC":"0e:00:00:00:01:00"}`)
		l.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(10 + i), 0}), 24)
		sync(l)
	}
	if n := a.B.f.Len(); n != 1 {
		t.Errorf("%d peers kept after churn, want the last Sync's 1", n)
	}
}

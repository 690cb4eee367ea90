package udp

import (
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

// udp leases carry no BackendType, as upstream writes them, so peers of
// any type are accepted; the device is upstream's flannel0.
func TestInfo(t *testing.T) {
	l := lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{BackendType: "vxlan"}}
	if Info.TypedLeases || Info.CheckPeer(l) != nil {
		t.Errorf("Info = %+v: want untyped leases", Info)
	}
	if Info.Overhead != 28 || Info.Device(nil, nil, true) != "flannel0" {
		t.Errorf("Info: overhead %d, device %q; want 28 and flannel0", Info.Overhead, Info.Device(nil, nil, true))
	}
}

package alloc

import (
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

// alloc leases carry no BackendType, so any peer's type is accepted.
func TestInfo(t *testing.T) {
	l := lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{BackendType: "vxlan"}}
	if Info.TypedLeases || Info.CheckPeer(l) != nil || Info.Overhead != 0 || Info.Device(nil, nil, true) != "" {
		t.Errorf("Info = %+v: want untyped leases, no overhead, no device", Info)
	}
}

package hostgw

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

// The daemon filters peers through Info: another backend's leases must not
// become host-gw routes.
func TestInfo(t *testing.T) {
	l := func(typ string) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{
			PublicIP: netip.MustParseAddr("192.168.100.9"), BackendType: typ,
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}`)}}
	}
	if err := Info.CheckPeer(l("vxlan")); err == nil {
		t.Error("Info.CheckPeer accepted a vxlan lease")
	}
	if err := Info.CheckPeer(l(Type)); err != nil {
		t.Errorf("Info.CheckPeer(host-gw lease) = %v", err)
	}
	if Info.Type != Type || Info.Overhead != 0 || Info.Device(nil, nil, true) != "" {
		t.Errorf("Info = %+v: want type %s, no overhead, no device", Info, Type)
	}
}

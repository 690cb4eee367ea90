package daemon

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/backend/alloc"
	"github.com/flannel-go/flannel/internal/backend/udp"
	"github.com/flannel-go/flannel/internal/backend/vxlan"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

func TestCheckPeer(t *testing.T) {
	nc := &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.5.0.0/16")}
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.0.1")}}
	peer := func(sn, pub, typ string) lease.Lease {
		l := lease.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: lease.Attrs{BackendType: typ}}
		if pub != "" {
			l.Attrs.PublicIP = netip.MustParseAddr(pub)
		}
		return l
	}
	cases := []struct {
		name   string
		be     string
		l      lease.Lease
		reason string // substring; "" = accepted
	}{
		{"good", "vxlan", peer("10.5.2.0/24", "192.168.0.2", "vxlan"), ""},
		{"outside network", "vxlan", peer("10.6.2.0/24", "192.168.0.2", "vxlan"), "outside Network"},
		{"wider than network", "vxlan", peer("10.0.0.0/8", "192.168.0.2", "vxlan"), "outside Network"},
		{"overlaps ours", "vxlan", peer("10.5.0.0/23", "192.168.0.2", "vxlan"), "overlaps"},
		{"no public ip", "vxlan", peer("10.5.2.0/24", "", "vxlan"), "no PublicIP"},
		{"public ip in overlay", "vxlan", peer("10.5.2.0/24", "10.5.9.9", "vxlan"), "inside the overlay"},
		{"our public ip", "vxlan", peer("10.5.2.0/24", "192.168.0.1", "vxlan"), "this host's own"},
		{"other backend", "vxlan", peer("10.5.2.0/24", "192.168.0.2", "host-gw"), `backend "host-gw"`},
		{"udp takes untyped", "udp", peer("10.5.2.0/24", "192.168.0.2", ""), ""},
		{"alloc takes any", "alloc", peer("10.5.2.0/24", "192.168.0.2", "vxlan"), ""},
	}
	infos := map[string]backend.Info{vxlan.Type: vxlan.Info, udp.Type: udp.Info, alloc.Type: alloc.Info}
	for _, c := range cases {
		got := checkPeer(nc, own, infos[c.be], c.l)
		if (c.reason == "") != (got == "") || !strings.Contains(got, c.reason) {
			t.Errorf("%s: checkPeer = %q, want %q", c.name, got, c.reason)
		}
	}
}

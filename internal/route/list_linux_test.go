package route

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/netnstest"
)

// TestListRoundTrip: what Set writes, the List functions read back as
// equal values, so a restarted backend that Loads a dump and Sets the same
// state changes nothing; entries nobody owns are not listed.
func TestListRoundTrip(t *testing.T) {
	netnstest.SkipUnlessModule(t, "vxlan")
	n := netnstest.New(t, "fbk")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"},
		{"addr", "add", "192.168.0.1/24", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "eth0p", "up"},
		{"link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", "eth0", "local", "192.168.0.1", "nolearning"},
		{"link", "set", "flannel.1", "up"},
		// Not ours to list: a learned-style neighbour, the default FDB
		// destination, a route in another table, a multipath route.
		{"neigh", "add", "10.5.99.0", "lladdr", "02:00:00:00:00:99", "dev", "flannel.1", "nud", "reachable"},
		{"route", "add", "10.5.98.0/24", "via", "192.168.0.98", "table", "100"},
		{"route", "add", "10.5.97.0/24", "nexthop", "via", "192.168.0.97", "nexthop", "via", "192.168.0.96"},
	} {
		if _, err := n.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Run(ctx, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "flannel.1", "dst", "192.168.0.99", "self", "permanent"); err != nil {
		t.Fatal(err)
	}
	h, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vx, err := h.LinkByName("flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	dev := vx.Attrs().Index
	want := peerStateOn(dev, []int{1, 2, 3}, 0)
	want.Routes = append(want.Routes,
		Route{Dst: netip.MustParsePrefix("10.5.4.0/24"), Gw: netip.MustParseAddr("192.168.0.4"), LinkIndex: eth.Attrs().Index},
		Route{Dst: netip.MustParsePrefix("10.5.5.0/24"), Gw: netip.MustParseAddr("192.168.0.5"), LinkIndex: eth.Attrs().Index, Metric: 50})

	tab := NewTable(h)
	if _, err := tab.Set(want); err != nil {
		t.Fatal(err)
	}

	inNet := func(r Route) bool { return netip.MustParsePrefix("10.5.0.0/16").Contains(r.Dst.Addr()) }
	routes, err := ListRoutes(h, netlink.FAMILY_V4, inNet)
	if err != nil {
		t.Fatal(err)
	}
	neighs, err := ListNeighs(h, netlink.FAMILY_V4, dev)
	if err != nil {
		t.Fatal(err)
	}
	fdb, err := ListFDB(h, dev)
	if err != nil {
		t.Fatal(err)
	}
	fresh := NewTable(h)
	fresh.Load(State{Routes: routes, Neighs: neighs, FDB: fdb})
	if got, exp := fresh.Applied(), tab.Applied(); !reflect.DeepEqual(got, exp) {
		t.Fatalf("listed\n%v\nwant\n%v", got, exp)
	}
	if c, err := fresh.Set(want); err != nil || !c.None() {
		t.Fatalf("Set over a loaded dump: changes %+v, err %v; want none", c, err)
	}

	// The user's view of what Set made.
	out, err := n.Run(ctx, "ip", "-4", "route", "show", "dev", "flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	exp := ""
	for i := 1; i <= 3; i++ {
		exp += fmt.Sprintf("10.5.%d.0/24 via 10.5.%d.0 onlink \n", i, i)
	}
	if out != exp {
		t.Errorf("ip route show dev flannel.1:\n%s\nwant\n%s", out, exp)
	}
}

// TestListFamily: each listing returns only the family asked for, so an
// IPv6 datapath can list its own entries next to the IPv4 ones.
func TestListFamily(t *testing.T) {
	n := netnstest.New(t, "fbk")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"},
		{"addr", "add", "192.168.0.1/24", "dev", "eth0"},
		{"addr", "add", "fd00:1::1/64", "dev", "eth0", "nodad"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "eth0p", "up"},
		{"route", "add", "10.5.2.0/24", "via", "192.168.0.2"},
		{"-6", "route", "add", "fd00:5:2::/64", "via", "fd00:1::2"},
		{"neigh", "add", "192.168.0.9", "lladdr", "02:00:00:00:00:09", "dev", "eth0", "nud", "permanent"},
		{"-6", "neigh", "add", "fd00:1::9", "lladdr", "02:00:00:00:00:69", "dev", "eth0", "nud", "permanent"},
	} {
		if _, err := n.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	h, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	idx := eth.Attrs().Index
	withGw := func(r Route) bool { return r.Gw.IsValid() }
	for _, tc := range []struct {
		family     int
		route, nei string
	}{
		{netlink.FAMILY_V4, "10.5.2.0/24", "192.168.0.9"},
		{netlink.FAMILY_V6, "fd00:5:2::/64", "fd00:1::9"},
	} {
		routes, err := ListRoutes(h, tc.family, withGw)
		if err != nil || len(routes) != 1 || routes[0].Dst != netip.MustParsePrefix(tc.route) {
			t.Errorf("ListRoutes(family %d) = %v, %v; want only %s", tc.family, routes, err, tc.route)
		}
		neighs, err := ListNeighs(h, tc.family, idx)
		if err != nil || len(neighs) != 1 || neighs[0].IP != netip.MustParseAddr(tc.nei) {
			t.Errorf("ListNeighs(family %d) = %v, %v; want only %s", tc.family, neighs, err, tc.nei)
		}
	}
	if _, err := ListRoutes(h, netlink.FAMILY_ALL, withGw); err == nil {
		t.Error("ListRoutes accepted FAMILY_ALL")
	}
	if _, err := ListNeighs(h, netlink.FAMILY_ALL, idx); err == nil {
		t.Error("ListNeighs accepted FAMILY_ALL")
	}
}

func TestParseMAC(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "c6:d2:32:6f:8f:44", want: "c6:d2:32:6f:8f:44"},
		{in: "C6-D2-32-6F-8F-44", want: "c6:d2:32:6f:8f:44"},
		{in: "c6d2.326f.8f44", want: "c6:d2:32:6f:8f:44"},
		{in: "", wantErr: true},
		{in: "c6:d2:32:6f:8f", wantErr: true},
		{in: "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", wantErr: true},
	} {
		m, err := ParseMAC(tc.in)
		if (err != nil) != tc.wantErr || (err == nil && m.String() != tc.want) {
			t.Errorf("ParseMAC(%q) = %v, %v; want %q, error %v", tc.in, m, err, tc.want, tc.wantErr)
		}
	}
	if (MAC{}).IsUnicast() || (MAC{1, 0, 0, 0, 0, 1}).IsUnicast() || !(MAC{2, 0, 0, 0, 0, 1}).IsUnicast() {
		t.Error("IsUnicast wrong for zero, group or local unicast address")
	}
}

var _ Netlink = (*netlink.Handle)(nil)
var _ Lister = (*netlink.Handle)(nil)

package route

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// manyPeers is n peers' routes (vxlan-like, through objects) and
// neighbours on d0: more than one write's worth of requests.
func (l *nhLab) manyPeers(n int) State {
	var s State
	for i := range n {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(20 + i/256), byte(i), 0}), 24)
		s.Routes = append(s.Routes, Route{Dst: sn, Gw: sn.Addr(), LinkIndex: l.dev, OnLink: true})
		s.Neighs = append(s.Neighs, Neigh{IP: sn.Addr(), MAC: MAC{0x02, 0, 0, 0, byte(i >> 8), byte(i)}, LinkIndex: l.dev})
	}
	return s
}

// TestBatchManyWrites: a Set of thousands of entries, sent in batches of
// several writes each, leaves the kernel and the record equal to want,
// and a second Set changes nothing.
func TestBatchManyWrites(t *testing.T) {
	l := newNHLab(t)
	want := l.manyPeers(3000)
	if n := len(want.Routes) * msgLen(routeReplaceNHReq(want.Routes[0], 1)); n < 3*maxBatchBytes {
		t.Fatalf("%d bytes of routes: not several writes", n)
	}
	tb := NewTable(l.h)
	if c := l.set(tb, want); c.Added != 6000 {
		t.Fatalf("Set: %+v, want 6000 added", c)
	}
	if got := strings.Count(l.ip("-4", "route", "show", "dev", "d0"), "nhid"); got != 3000 {
		t.Errorf("%d routes through objects on d0, want 3000", got)
	}
	if got := strings.Count(l.ip("-4", "neigh", "show", "dev", "d0", "nud", "permanent"), "lladdr"); got != 3000 {
		t.Errorf("%d permanent neighbours on d0, want 3000", got)
	}
	fresh := NewTable(l.h)
	routes, err := ListRoutes(l.h, netlink.FAMILY_V4, func(r Route) bool { return r.LinkIndex == l.dev })
	if err != nil {
		t.Fatal(err)
	}
	neighs, err := ListNeighs(l.h, netlink.FAMILY_V4, l.dev)
	if err != nil {
		t.Fatal(err)
	}
	fresh.Load(State{Routes: routes, Neighs: neighs})
	if got, exp := fresh.Applied(), tb.Applied(); !reflect.DeepEqual(got, exp) {
		t.Errorf("the kernel holds other entries than the record")
	}
	if c := l.set(tb, want); !c.None() {
		t.Errorf("second Set: %+v, want no change", c)
	}
}

// TestBatchOneFailure: one failing request among many fails alone; its
// error names it and the kernel's reason, the others are applied and
// recorded, and the next Set retries only it.
func TestBatchOneFailure(t *testing.T) {
	l := newNHLab(t)
	want := l.manyPeers(50)
	bad := Neigh{IP: netip.MustParseAddr("10.7.0.1"), MAC: MAC{2, 0, 0, 0, 0, 1}, LinkIndex: 9999}
	want.Neighs = append(want.Neighs[:25:25], append([]Neigh{bad}, want.Neighs[25:]...)...)
	tb := NewTable(l.h)
	c, err := tb.Set(want)
	if !errors.Is(err, unix.ENODEV) || !strings.Contains(err.Error(), "set neighbour 10.7.0.1 lladdr 02:00:00:00:00:01 dev #9999") {
		t.Fatalf("err = %v, want ENODEV naming the neighbour on link 9999", err)
	}
	if c.Added != 100 || c.Failed != 1 {
		t.Errorf("changes %+v, want 100 added, 1 failed", c)
	}
	if got := strings.Count(l.ip("-4", "neigh", "show", "dev", "d0", "nud", "permanent"), "lladdr"); got != 50 {
		t.Errorf("%d permanent neighbours on d0, want 50", got)
	}
	if _, ok := tb.neighs[bad.key()]; ok {
		t.Error("the failed neighbour is recorded as applied")
	}
	c, err = tb.Set(want)
	if !errors.Is(err, unix.ENODEV) || c.Added != 0 || c.Failed != 1 {
		t.Errorf("retry: changes %+v, err %v; want only the bad neighbour tried again", c, err)
	}
}

// TestBatchNexthopIDTaken: an id the table is about to use, taken by
// someone else after its dump, is skipped (EEXIST) for a free one; the
// other object stays as it is.
func TestBatchNexthopIDTaken(t *testing.T) {
	l := newNHLab(t)
	tb := NewTable(l.h)
	l.set(tb, l.peers(1))
	next := tb.nh.next
	l.ip("nexthop", "add", "id", fmt.Sprint(next), "via", "192.168.0.200", "dev", "eth0", "proto", "boot")
	l.set(tb, l.peers(1, 2, 3))
	if got, want := l.routes(), wantRoutes(true, "1", 1, 2, 3); got != want {
		t.Fatalf("ip route:\n%s\nwant\n%s", got, want)
	}
	if out := l.ip("nexthop", "show", "id", fmt.Sprint(next)); !strings.Contains(out, "via 192.168.0.200 dev eth0") {
		t.Errorf("the other object changed: %s", out)
	}
	for _, n := range l.nexthops(true) {
		if n.ID == next && n.Gw != netip.MustParseAddr("192.168.0.200") {
			t.Errorf("object %d reused: %v", next, n)
		}
	}
	if _, ok := tb.nh.keyOf(next); ok {
		t.Errorf("object %d, someone else's, recorded as ours", next)
	}
}

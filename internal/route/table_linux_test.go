package route

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeKernel models the three kernel tables with the kernel's keys and
// replace semantics, and renders them the way ip(8) and bridge(8) would.
type fakeKernel struct {
	routes map[string]string // "dst metric" → rendered route
	neighs map[string]string // "link ip" → mac
	fdb    map[string][]string
	calls  []string
	fail   map[string]error // call description prefix → error to return once
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{routes: map[string]string{}, neighs: map[string]string{}, fdb: map[string][]string{}, fail: map[string]error{}}
}

func (k *fakeKernel) record(call string) error {
	k.calls = append(k.calls, call)
	for p, err := range k.fail {
		if strings.HasPrefix(call, p) {
			delete(k.fail, p)
			return err
		}
	}
	return nil
}

func renderNLRoute(r *netlink.Route) string {
	s := r.Dst.String()
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	s += fmt.Sprintf(" dev %d", r.LinkIndex)
	if r.Priority != 0 {
		s += fmt.Sprintf(" metric %d", r.Priority)
	}
	if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
		s += " onlink"
	}
	return s
}

func (k *fakeKernel) RouteReplace(r *netlink.Route) error {
	if err := k.record("route replace " + r.Dst.String()); err != nil {
		return err
	}
	k.routes[fmt.Sprintf("%s %d", r.Dst, r.Priority)] = renderNLRoute(r)
	return nil
}

func (k *fakeKernel) RouteDel(r *netlink.Route) error {
	if err := k.record("route del " + r.Dst.String()); err != nil {
		return err
	}
	key := fmt.Sprintf("%s %d", r.Dst, r.Priority)
	if _, ok := k.routes[key]; !ok || k.routes[key] != renderNLRoute(r) {
		return unix.ESRCH
	}
	delete(k.routes, key)
	return nil
}

func (k *fakeKernel) NeighSet(n *netlink.Neigh) error {
	if n.Family == unix.AF_BRIDGE {
		if n.Flags != netlink.NTF_SELF || n.State != netlink.NUD_PERMANENT {
			return fmt.Errorf("fdb entry without self permanent: %+v", n)
		}
		if err := k.record("fdb replace " + n.HardwareAddr.String()); err != nil {
			return err
		}
		key := fmt.Sprintf("%d %s", n.LinkIndex, n.HardwareAddr)
		dsts := k.fdb[key]
		switch {
		case slices.Contains(dsts, n.IP.String()):
		case len(dsts) == 0:
			k.fdb[key] = []string{n.IP.String()}
		default: // NLM_F_REPLACE on a vxlan fdb entry replaces its first remote
			dsts[0] = n.IP.String()
		}
		return nil
	}
	if n.State != netlink.NUD_PERMANENT {
		return fmt.Errorf("neighbour not permanent: %+v", n)
	}
	if err := k.record("neigh replace " + n.IP.String()); err != nil {
		return err
	}
	k.neighs[fmt.Sprintf("%d %s", n.LinkIndex, n.IP)] = n.HardwareAddr.String()
	return nil
}

func (k *fakeKernel) NeighDel(n *netlink.Neigh) error {
	if n.Family == unix.AF_BRIDGE {
		if err := k.record("fdb del " + n.HardwareAddr.String()); err != nil {
			return err
		}
		key := fmt.Sprintf("%d %s", n.LinkIndex, n.HardwareAddr)
		i := slices.Index(k.fdb[key], n.IP.String())
		if i < 0 {
			return unix.ENOENT
		}
		k.fdb[key] = slices.Delete(k.fdb[key], i, i+1)
		if len(k.fdb[key]) == 0 {
			delete(k.fdb, key)
		}
		return nil
	}
	if err := k.record("neigh del " + n.IP.String()); err != nil {
		return err
	}
	key := fmt.Sprintf("%d %s", n.LinkIndex, n.IP)
	if _, ok := k.neighs[key]; !ok {
		return unix.ENOENT
	}
	delete(k.neighs, key)
	return nil
}

func (k *fakeKernel) render() string {
	var lines []string
	for _, r := range k.routes {
		lines = append(lines, "route "+r)
	}
	for key, mac := range k.neighs {
		link, ip, _ := strings.Cut(key, " ")
		lines = append(lines, fmt.Sprintf("neigh %s lladdr %s dev %s", ip, mac, link))
	}
	for key, dsts := range k.fdb {
		link, mac, _ := strings.Cut(key, " ")
		for _, d := range dsts {
			lines = append(lines, fmt.Sprintf("fdb %s dst %s dev %s", mac, d, link))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// renderWant is what the fake must show after Set(want): written from the
// state's fields, not through the code under test.
func renderWant(s State) string {
	var lines []string
	for _, r := range s.Routes {
		l := "route " + r.Dst.String()
		if r.Gw.IsValid() {
			l += " via " + r.Gw.String()
		}
		l += fmt.Sprintf(" dev %d", r.LinkIndex)
		if r.Metric != 0 {
			l += fmt.Sprintf(" metric %d", r.Metric)
		}
		if r.OnLink {
			l += " onlink"
		}
		lines = append(lines, l)
	}
	for _, n := range s.Neighs {
		lines = append(lines, fmt.Sprintf("neigh %s lladdr %s dev %d", n.IP, n.MAC, n.LinkIndex))
	}
	for _, f := range s.FDB {
		lines = append(lines, fmt.Sprintf("fdb %s dst %s dev %d", f.MAC, f.Dst, f.LinkIndex))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// peerState is what a vxlan backend wants for peers 1..n of a set:
// subnet 10.5.i.0/24, VTEP MAC 02:00:00:00:00:i(+macShift), underlay 192.168.0.i.
func peerState(ids []int, macShift int) State { return peerStateOn(7, ids, macShift) }

func peerStateOn(dev int, ids []int, macShift int) State {
	var s State
	for _, i := range ids {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24)
		mac := MAC{2, 0, 0, 0, byte(macShift), byte(i)}
		s.Neighs = append(s.Neighs, Neigh{IP: sn.Addr(), MAC: mac, LinkIndex: dev})
		s.FDB = append(s.FDB, FDB{MAC: mac, Dst: netip.AddrFrom4([4]byte{192, 168, 0, byte(i)}), LinkIndex: dev})
		s.Routes = append(s.Routes, Route{Dst: sn, Gw: sn.Addr(), LinkIndex: dev, OnLink: true})
	}
	return s
}

func TestTableTransitions(t *testing.T) {
	states := map[string]State{
		"empty":       {},
		"one":         peerState([]int{1}, 0),
		"three":       peerState([]int{1, 2, 3}, 0),
		"other three": peerState([]int{3, 4, 5}, 0),
		"macs moved":  peerState([]int{1, 2, 3}, 1),
		"direct": {Routes: []Route{
			{Dst: netip.MustParsePrefix("10.5.1.0/24"), Gw: netip.MustParseAddr("192.168.0.1"), LinkIndex: 2},
			{Dst: netip.MustParsePrefix("10.5.2.0/24"), Gw: netip.MustParseAddr("192.168.0.2"), LinkIndex: 2},
		}},
	}
	names := make([]string, 0, len(states))
	for n := range states {
		names = append(names, n)
	}
	slices.Sort(names)

	k := newFakeKernel()
	tab := NewTable(k)
	rng := rand.New(rand.NewPCG(1, 2))
	prev := "empty"
	for range 60 {
		name := names[rng.IntN(len(names))]
		want := states[name]
		if _, err := tab.Set(want); err != nil {
			t.Fatalf("%s → %s: %v", prev, name, err)
		}
		if got, exp := k.render(), renderWant(want); got != exp {
			t.Fatalf("%s → %s: kernel has\n%s\nwant\n%s", prev, name, got, exp)
		}
		k.calls = nil
		c, err := tab.Set(want)
		if err != nil || !c.None() || len(k.calls) != 0 {
			t.Fatalf("%s again: changes %+v, calls %q, err %v; want none", name, c, k.calls, err)
		}
		prev = name
	}
}

func TestTableAddsBeforeDeletes(t *testing.T) {
	k := newFakeKernel()
	tab := NewTable(k)
	if _, err := tab.Set(peerState([]int{1, 2}, 0)); err != nil {
		t.Fatal(err)
	}
	k.calls = nil
	// Peer 1 changes its MAC, peer 2 leaves, peer 3 arrives.
	want := peerState([]int{1, 3}, 1)
	c, err := tab.Set(want)
	if err != nil {
		t.Fatal(err)
	}
	if c.Added != 5 || c.Removed != 4 {
		t.Errorf("changes %+v, want 5 added (peer 3's three, peer 1's neighbour and new fdb) and 4 removed (peer 2's three, peer 1's old fdb)", c)
	}
	firstDel := slices.IndexFunc(k.calls, func(s string) bool { return strings.Contains(s, " del ") })
	for _, call := range k.calls[firstDel:] {
		if strings.Contains(call, " replace ") {
			t.Fatalf("add after a delete: %q", k.calls)
		}
	}
	// A route is only added once its neighbour and FDB entry exist, and
	// removed before them.
	order := func(prefix string) int {
		return slices.IndexFunc(k.calls, func(s string) bool { return strings.HasPrefix(s, prefix) })
	}
	if !(order("neigh replace 10.5.3.0") < order("route replace 10.5.3.0/24") && order("fdb replace 02:00:00:00:01:03") < order("route replace 10.5.3.0/24")) {
		t.Errorf("route added before its neighbour/fdb: %q", k.calls)
	}
	if !(order("route del 10.5.2.0/24") < order("neigh del 10.5.2.0") && order("route del 10.5.2.0/24") < order("fdb del 02:00:00:00:00:02")) {
		t.Errorf("route not deleted first: %q", k.calls)
	}
	if got, exp := k.render(), renderWant(want); got != exp {
		t.Errorf("kernel has\n%s\nwant\n%s", got, exp)
	}
}

func TestTableFailureIsRetried(t *testing.T) {
	k := newFakeKernel()
	tab := NewTable(k)
	k.fail["route replace 10.5.2.0/24"] = unix.ENETUNREACH
	want := peerState([]int{1, 2}, 0)
	c, err := tab.Set(want)
	if err == nil || !errors.Is(err, unix.ENETUNREACH) || !strings.Contains(err.Error(), "10.5.2.0/24") {
		t.Fatalf("err = %v, want one naming 10.5.2.0/24 and wrapping ENETUNREACH", err)
	}
	if c.Failed != 1 || c.Added != 5 {
		t.Errorf("changes %+v, want 5 added, 1 failed", c)
	}
	if slices.ContainsFunc(tab.Applied().Routes, func(r Route) bool { return r.Dst.String() == "10.5.2.0/24" }) {
		t.Error("failed route recorded as applied")
	}
	c, err = tab.Set(want)
	if err != nil || c.Added != 1 {
		t.Fatalf("retry: changes %+v, err %v; want the one route added", c, err)
	}

	// A failed delete stays applied and is retried too.
	k.fail["neigh del 10.5.2.0"] = unix.EBUSY
	want = peerState([]int{1}, 0)
	if _, err := tab.Set(want); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("err = %v, want EBUSY", err)
	}
	if c, err := tab.Set(want); err != nil || c.Removed != 1 {
		t.Fatalf("retry: changes %+v, err %v; want the neighbour removed", c, err)
	}
	if got, exp := k.render(), renderWant(want); got != exp {
		t.Errorf("kernel has\n%s\nwant\n%s", got, exp)
	}
}

func TestTableManyFailuresStayReadable(t *testing.T) {
	k := newFakeKernel()
	tab := NewTable(k)
	for i := range 10 {
		k.fail[fmt.Sprintf("neigh replace 10.5.%d.0", i+1)] = unix.EINVAL
	}
	ids := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	_, err := tab.Set(peerState(ids, 0))
	if err == nil || !strings.Contains(err.Error(), "10 of 30 changes failed") || !strings.Contains(err.Error(), "(and 7 more)") {
		t.Fatalf("err = %v", err)
	}
}

func TestTableLoadRemovesStaleAndRestoresMissing(t *testing.T) {
	k := newFakeKernel()
	old := peerState([]int{1, 2, 3}, 0)
	// What a previous run left behind, minus peer 1's route (deleted by hand).
	for _, n := range old.Neighs {
		_ = k.NeighSet(netlinkNeigh(n))
	}
	for _, f := range old.FDB {
		_ = k.NeighSet(netlinkFDB(f))
	}
	for _, r := range old.Routes[1:] {
		_ = k.RouteReplace(netlinkRoute(r))
	}
	have := old
	have.Routes = old.Routes[1:]

	tab := NewTable(k)
	tab.Load(have)
	k.calls = nil
	want := peerState([]int{1, 2}, 0)
	c, err := tab.Set(want)
	if err != nil {
		t.Fatal(err)
	}
	if c.Added != 1 || c.Removed != 3 {
		t.Errorf("changes %+v, want peer 1's route added and peer 3's three entries removed", c)
	}
	if got, exp := k.render(), renderWant(want); got != exp {
		t.Errorf("kernel has\n%s\nwant\n%s", got, exp)
	}
}

func TestTableDeleteOfVanishedEntryIsNotAnError(t *testing.T) {
	k := newFakeKernel()
	tab := NewTable(k)
	if _, err := tab.Set(peerState([]int{1}, 0)); err != nil {
		t.Fatal(err)
	}
	clear(k.routes) // `ip route flush` behind our back
	clear(k.neighs)
	clear(k.fdb)
	c, err := tab.Set(State{})
	if err != nil || c.Removed != 3 {
		t.Fatalf("changes %+v, err %v; want 3 removed without error", c, err)
	}
	if a := tab.Applied(); a.Len() != 0 {
		t.Errorf("applied = %+v, want empty", a)
	}
}

func TestDumpRetriesInterrupted(t *testing.T) {
	calls := 0
	got, err := Dump(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{1}, netlink.ErrDumpInterrupted
		}
		return []int{1, 2}, nil
	})
	if err != nil || !slices.Equal(got, []int{1, 2}) || calls != 3 {
		t.Fatalf("got %v, %v after %d calls; want [1 2] after 3", got, err, calls)
	}
	calls = 0
	_, err = Dump(func() ([]int, error) { calls++; return nil, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != dumpAttempts {
		t.Fatalf("err %v after %d calls; want ErrDumpInterrupted after %d", err, calls, dumpAttempts)
	}
	_, err = Dump(func() ([]int, error) { return nil, unix.EPERM })
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("err %v, want EPERM passed through", err)
	}
}

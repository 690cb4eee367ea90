package route

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// nhLab is a namespace with eth0 (192.168.0.1/24, fd00:1::1/64) and a
// vxlan-like device d0, both up, and a Handle in it.
type nhLab struct {
	t        testing.TB
	n        *ns.NS
	h        *Handle
	eth, dev int
}

func newNHLab(t testing.TB) *nhLab {
	t.Helper()
	l := &nhLab{t: t, n: netnstest.New(t, "fbk")}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"},
		{"addr", "add", "192.168.0.1/24", "dev", "eth0"},
		{"addr", "add", "fd00:1::1/64", "dev", "eth0", "nodad"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "eth0p", "up"},
		{"link", "add", "d0", "type", "veth", "peer", "name", "d0p"},
		{"link", "set", "d0", "up"},
		{"link", "set", "d0p", "up"},
	} {
		l.ip(args...)
	}
	nsh, err := netns.GetFromName(l.n.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	if l.h, err = NewHandleAt(nsh); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.h.Close)
	for name, idx := range map[string]*int{"eth0": &l.eth, "d0": &l.dev} {
		lk, err := l.h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		*idx = lk.Attrs().Index
	}
	return l
}

func (l *nhLab) ip(args ...string) string {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := l.n.Run(ctx, "ip", args...)
	if err != nil {
		l.t.Fatalf("ip %v: %v: %s", args, err, out)
	}
	return out
}

func (l *nhLab) compatMode(v string) {
	l.t.Helper()
	if err := l.n.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/nexthop_compat_mode", []byte(v), 0o644)
	}); err != nil {
		l.t.Fatal(err)
	}
}

// peers is what vxlan (onlink via the peer's subnet address on d0) and
// host-gw (via the peer's address on eth0) install for peers ids, and an
// IPv6 route, which stays classic.
func (l *nhLab) peers(ids ...int) State {
	var s State
	for _, i := range ids {
		vx := netip.MustParsePrefix(fmt.Sprintf("10.5.%d.0/24", i))
		s.Routes = append(s.Routes,
			Route{Dst: vx, Gw: vx.Addr(), LinkIndex: l.dev, OnLink: true},
			Route{Dst: netip.MustParsePrefix(fmt.Sprintf("10.6.%d.0/24", i)), Gw: netip.MustParseAddr(fmt.Sprintf("192.168.0.%d", 10+i)), LinkIndex: l.eth})
	}
	s.Routes = append(s.Routes, Route{Dst: netip.MustParsePrefix("fd00:5:2::/64"), Gw: netip.MustParseAddr("fd00:1::2"), LinkIndex: l.eth, Metric: 1024})
	return s
}

// routes is `ip route show` of both families for our networks, sorted,
// with the nexthop ids replaced by "N".
func (l *nhLab) routes() string {
	var lines []string
	for _, fam := range []string{"-4", "-6"} {
		for _, ln := range strings.Split(strings.TrimSpace(l.ip(fam, "route", "show")), "\n") {
			ln = strings.TrimSpace(ln)
			if strings.HasPrefix(ln, "10.") || strings.HasPrefix(ln, "fd00:5:") {
				lines = append(lines, nhidRE.ReplaceAllString(ln, "nhid N"))
			}
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// v4 is s without its IPv6 routes (which every peers State has).
func v4(s State) State {
	s.Routes = slices.DeleteFunc(slices.Clone(s.Routes), func(r Route) bool { return r.Dst.Addr().Is6() })
	return s
}

var nhidRE = regexp.MustCompile(`nhid [0-9]+`)

// wantRoutes is how `ip route` must show peers ids, with nexthop objects
// (nh) or without; with them and compat mode 0 the kernel tells only the
// object's id.
func wantRoutes(nh bool, compat string, ids ...int) string {
	p := ""
	if nh {
		p = "nhid N "
	}
	if nh && compat == "0" {
		lines := []string{"fd00:5:2::/64 via fd00:1::2 dev eth0 metric 1024 pref medium"}
		for _, i := range ids {
			lines = append(lines, fmt.Sprintf("10.5.%d.0/24 nhid N", i), fmt.Sprintf("10.6.%d.0/24 nhid N", i))
		}
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	lines := []string{"fd00:5:2::/64 via fd00:1::2 dev eth0 metric 1024 pref medium"}
	for _, i := range ids {
		lines = append(lines,
			fmt.Sprintf("10.5.%d.0/24 %svia 10.5.%d.0 dev d0 onlink", i, p, i),
			fmt.Sprintf("10.6.%d.0/24 %svia 192.168.0.%d dev eth0", i, p, 10+i))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// ours lists our nexthop objects, as "id via gw dev onlink".
func (l *nhLab) nexthops(own bool) []Nexthop {
	l.t.Helper()
	all, err := l.h.NexthopList()
	if err != nil {
		l.t.Fatal(err)
	}
	var out []Nexthop
	for _, n := range all {
		if ownNexthop(n) == own {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b Nexthop) int { return int(a.ID) - int(b.ID) })
	return out
}

// reload is what a backend's load does: list what it owns, Load it.
func (l *nhLab) reload(t *Table) {
	l.t.Helper()
	ours := func(r Route) bool {
		return netip.MustParsePrefix("10.5.0.0/16").Contains(r.Dst.Addr()) || netip.MustParsePrefix("10.6.0.0/16").Contains(r.Dst.Addr())
	}
	rs, err := ListRoutes(l.h, netlink.FAMILY_V4, ours)
	if err != nil {
		l.t.Fatal(err)
	}
	rs6, err := ListRoutes(l.h, netlink.FAMILY_V6, func(r Route) bool { return strings.HasPrefix(r.Dst.String(), "fd00:5:") })
	if err != nil {
		l.t.Fatal(err)
	}
	t.Load(State{Routes: append(rs, rs6...)})
}

func (l *nhLab) set(t *Table, s State) Changes {
	l.t.Helper()
	c, err := t.Set(s)
	if err != nil {
		l.t.Fatal(err)
	}
	return c
}

// TestNexthopRoutes: IPv4 routes through a gateway are installed through
// nexthop objects of ours, one per gateway, and look as before in
// `ip route` (same gateway, device, onlink); IPv6 stays classic; the
// listing reads back what was set in either compat mode; a new Table in
// the same namespace adopts them without a change; peers leaving take
// their route and then their object; a gateway change moves the route to
// a new object.
func TestNexthopRoutes(t *testing.T) {
	for _, compat := range []string{"1", "0"} {
		t.Run("compat_mode="+compat, func(t *testing.T) {
			l := newNHLab(t)
			l.compatMode(compat)
			tb := NewTable(l.h)
			l.set(tb, l.peers(1, 2, 3))
			if got, want := l.routes(), wantRoutes(true, compat, 1, 2, 3); got != want {
				t.Fatalf("ip route:\n%s\nwant\n%s", got, want)
			}
			nhs := l.nexthops(true)
			if len(nhs) != 6 {
				t.Fatalf("our nexthops %v, want one per IPv4 gateway (6)", nhs)
			}
			for _, n := range nhs {
				if n.OnLink != (n.LinkIndex == l.dev) {
					t.Errorf("nexthop %v: onlink wrong", n)
				}
			}

			// A restarted backend: list, Load, Set the same.
			fresh := NewTable(l.h)
			l.reload(fresh)
			if got, want := fresh.Applied(), tb.Applied(); !reflect.DeepEqual(got, want) {
				t.Fatalf("listed\n%v\nwant\n%v", got, want)
			}
			if c := l.set(fresh, l.peers(1, 2, 3)); !c.None() {
				t.Errorf("Set over a loaded dump: %+v, want no change", c)
			}
			if got := l.nexthops(true); !reflect.DeepEqual(got, nhs) {
				t.Errorf("nexthops after adoption\n%v\nwant unchanged\n%v", got, nhs)
			}

			// Peer 3 leaves by Update, peer 2 by Set: route and object go.
			if _, err := fresh.Update(State{}, v4(l.peers(3))); err != nil {
				t.Fatal(err)
			}
			l.set(fresh, l.peers(1))
			if got, want := l.routes(), wantRoutes(true, compat, 1); got != want {
				t.Errorf("ip route after peers left:\n%s\nwant\n%s", got, want)
			}
			if got := l.nexthops(true); len(got) != 2 {
				t.Errorf("nexthops after peers left: %v, want peer 1's two", got)
			}

			// Peer 1's host-gw gateway changes.
			moved := l.peers(1)
			moved.Routes[1].Gw = netip.MustParseAddr("192.168.0.99")
			l.set(fresh, moved)
			if got := l.routes(); compat == "1" && !strings.Contains(got, "10.6.1.0/24 nhid N via 192.168.0.99 dev eth0") {
				t.Errorf("ip route after the gateway moved:\n%s", got)
			}
			var gws []string
			for _, n := range l.nexthops(true) {
				gws = append(gws, n.Gw.String())
			}
			if slices.Sort(gws); !slices.Equal(gws, []string{"10.5.1.0", "192.168.0.99"}) {
				t.Errorf("nexthops via %v after the gateway moved, want 10.5.1.0 and 192.168.0.99", gws)
			}
			l.set(fresh, State{})
			if got := l.nexthops(true); len(got) != 0 {
				t.Errorf("nexthops with no peers: %v", got)
			}
		})
	}
}

// TestNexthopStaleAndForeign: our objects no peer wants are deleted by a
// new Table's Set; other software's (another protocol, or outside our id
// range) stay, as do their routes; a duplicate of ours is not adopted
// twice.
func TestNexthopStaleAndForeign(t *testing.T) {
	l := newNHLab(t)
	id := func(off uint32) string { return fmt.Sprint(nhBase + off) }
	l.ip("nexthop", "add", "id", "5", "via", "192.168.0.50", "dev", "eth0")
	l.ip("nexthop", "add", "id", id(100), "via", "192.168.0.51", "dev", "eth0", "proto", "static")
	l.ip("nexthop", "add", "id", id(200), "via", "192.168.0.52", "dev", "eth0", "proto", "boot") // stale, ours
	l.ip("nexthop", "add", "id", id(201), "via", "192.168.0.11", "dev", "eth0", "proto", "boot") // peer 1's
	l.ip("nexthop", "add", "id", id(202), "via", "192.168.0.11", "dev", "eth0", "proto", "boot") // a spare
	l.ip("route", "add", "10.7.1.0/24", "nhid", "5")
	l.ip("route", "add", "10.7.2.0/24", "nhid", id(100))
	foreign := l.nexthops(false)

	tb := NewTable(l.h)
	l.reload(tb)
	l.set(tb, l.peers(1))
	got := l.nexthops(true)
	if len(got) != 2 || !slices.ContainsFunc(got, func(n Nexthop) bool { return n.ID == nhBase+201 }) {
		t.Errorf("our nexthops %v, want peer 1's two, adopting %s", got, id(201))
	}
	if after := l.nexthops(false); !reflect.DeepEqual(after, foreign) {
		t.Errorf("foreign nexthops\n%v\nwant untouched\n%v", after, foreign)
	}
	if out := l.ip("-4", "route", "show"); !strings.Contains(out, "10.7.1.0/24 nhid 5 ") || !strings.Contains(out, "10.7.2.0/24 nhid "+id(100)+" ") {
		t.Errorf("foreign routes gone:\n%s", out)
	}

	// Someone puts a route of theirs at a key of ours; an old flanneld
	// left a classic route, which a new one adopts as it is.
	l.ip("route", "replace", "10.6.1.0/24", "via", "192.168.0.77", "dev", "eth0")
	l.ip("route", "add", "10.6.2.0/24", "via", "192.168.0.12", "dev", "eth0")
	l.reload(tb)
	if c := l.set(tb, v4(l.peers(2))); c.Added != 1 || c.Removed != 3 {
		t.Errorf("Set of peer 2 over a classic route: %+v, want only peer 2's vxlan route added and peer 1's three removed", c)
	}
	if out := l.ip("-4", "route", "show"); !strings.Contains(out, "10.6.2.0/24 via 192.168.0.12 dev eth0") || strings.Contains(out, "10.6.1.0/24") {
		t.Errorf("classic route of peer 2 not adopted as it was, or peer 1's route kept:\n%s", out)
	}
	tb = NewTable(l.h)
	l.set(tb, State{Routes: []Route{{Dst: netip.MustParsePrefix("10.6.1.0/24"), Gw: netip.MustParseAddr("192.168.0.11"), LinkIndex: l.eth}}})
	l.ip("route", "replace", "10.6.1.0/24", "via", "192.168.0.77", "dev", "eth0")
	l.set(tb, State{})
	if out := l.ip("-4", "route", "show"); !strings.Contains(out, "10.6.1.0/24 via 192.168.0.77 dev eth0") {
		t.Errorf("a route someone put at our key was deleted as ours:\n%s", out)
	}
	l.reload(tb) // sees the route at our key: Load takes it as ours
	l.set(tb, State{})
	if l.set(tb, v4(l.peers(2))); len(l.nexthops(true)) != 2 {
		t.Errorf("our nexthops %v, want peer 2's two", l.nexthops(true))
	}
}

// TestNexthopRepair: someone deletes one of our objects (the kernel drops
// its routes, without telling in compat mode 0); the Watch suspects it,
// and list, Load and Set recreate object and route. Our own changes are
// never suspect.
func TestNexthopRepair(t *testing.T) {
	for _, compat := range []string{"1", "0"} {
		t.Run("compat_mode="+compat, func(t *testing.T) {
			l := newNHLab(t)
			l.compatMode(compat)
			var w *Watch
			if err := l.n.Do(func() (err error) { w, err = NewWatch(l.eth, l.dev); return err }); err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			tb := NewTable(l.h)
			l.set(tb, l.peers(1, 2))
			if _, err := tb.Update(l.peers(3), State{}); err != nil {
				t.Fatal(err)
			}
			if _, err := tb.Update(State{}, v4(l.peers(2))); err != nil {
				t.Fatal(err)
			}
			if w.Suspect(tb) {
				t.Error("Suspect after our own changes")
			}
			var victim Nexthop
			for _, n := range l.nexthops(true) {
				if n.Gw == netip.MustParseAddr("192.168.0.13") {
					victim = n
				}
			}
			l.ip("nexthop", "del", "id", fmt.Sprint(victim.ID))
			if strings.Contains(l.routes(), "10.6.3.0/24") {
				t.Fatal("the kernel kept the route of a deleted nexthop")
			}
			if !w.Suspect(tb) {
				t.Fatal("a deleted nexthop of ours is not suspect")
			}
			l.reload(tb)
			c := l.set(tb, l.peers(1, 3))
			if c.Added != 1 {
				t.Errorf("repair made %+v, want one route re-added", c)
			}
			if got, want := l.routes(), wantRoutes(true, compat, 1, 3); got != want {
				t.Errorf("ip route after repair:\n%s\nwant\n%s", got, want)
			}
			if w.Suspect(tb) {
				t.Error("Suspect after the repair")
			}
		})
	}
}

// TestNexthopFallback: with WithClassicRoutes, and when the kernel answers
// that it has no nexthop objects (one log line), routes are classic.
func TestNexthopFallback(t *testing.T) {
	l := newNHLab(t)
	tb := NewTable(l.h, WithClassicRoutes())
	l.set(tb, l.peers(1, 2))
	if got, want := l.routes(), wantRoutes(false, "1", 1, 2); got != want {
		t.Errorf("ip route, classic:\n%s\nwant\n%s", got, want)
	}
	l.set(tb, l.peers(1))
	if got, want := l.routes(), wantRoutes(false, "1", 1); got != want {
		t.Errorf("ip route, classic, after a peer left:\n%s\nwant\n%s", got, want)
	}
	l.set(tb, State{})

	logs := &logbuf.Buffer{}
	old := NewTable(oldKernel{l.h}, WithLog(logs.Logger()))
	for _, ids := range [][]int{{1, 2}, {2}} {
		l.set(old, l.peers(ids...))
		if got, want := l.routes(), wantRoutes(false, "1", ids...); got != want {
			t.Errorf("ip route, old kernel:\n%s\nwant\n%s", got, want)
		}
	}
	if got := l.nexthops(true); len(got) != 0 {
		t.Errorf("nexthops on an old kernel: %v", got)
	}
	var lines []string
	for _, ln := range logs.Take() {
		if strings.Contains(ln, "nexthop") {
			lines = append(lines, ln)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "classic") {
		t.Errorf("log lines about nexthops: %q, want one saying classic", lines)
	}
}

// TestNexthopProbeRetried: a probe that fails for a reason that may pass
// leaves classic routes (one warning) until one succeeds.
func TestNexthopProbeRetried(t *testing.T) {
	l := newNHLab(t)
	logs := &logbuf.Buffer{}
	k := &flakyKernel{Handle: l.h, fails: 2}
	tb := NewTable(k, WithLog(logs.Logger()))
	l.set(tb, l.peers(1))
	l.set(tb, l.peers(1, 2))
	if got, want := l.routes(), wantRoutes(false, "1", 1, 2); got != want {
		t.Errorf("ip route while the probe fails:\n%s\nwant\n%s", got, want)
	}
	l.set(tb, l.peers(2, 3))
	if got := l.routes(); !strings.Contains(got, "10.6.3.0/24 nhid N via 192.168.0.13 dev eth0") ||
		!strings.Contains(got, "10.6.2.0/24 via 192.168.0.12 dev eth0") {
		t.Errorf("ip route once the probe works: new peers through objects, unchanged ones as they were:\n%s", got)
	}
	if got := l.nexthops(true); len(got) != 2 {
		t.Errorf("nexthops %v, want peer 3's two", got)
	}
	if n := strings.Count(strings.Join(logs.Take(), "\n"), "cannot list nexthop objects"); n != 1 {
		t.Errorf("%d warnings about the probe, want 1", n)
	}
}

type flakyKernel struct {
	*Handle
	fails int
}

func (k *flakyKernel) NexthopList() ([]Nexthop, error) {
	if k.fails > 0 {
		k.fails--
		return nil, unix.ENOBUFS
	}
	return k.Handle.NexthopList()
}

// oldKernel answers the nexthop dump as Linux before 5.3 does.
type oldKernel struct{ *Handle }

func (oldKernel) NexthopList() ([]Nexthop, error) { return nil, unix.EOPNOTSUPP }

// FuzzParseNexthop: nexthop messages come from the kernel (dumps,
// notifications of anyone's changes); no input may panic, and what parses
// has an id.
func FuzzParseNexthop(f *testing.F) {
	f.Add(nhMsg{family: unix.AF_INET, protocol: nhProtocol, flags: unix.RTNH_F_ONLINK}.Serialize())
	m := nhMsg{family: unix.AF_INET}.Serialize()
	for _, a := range []*nl.RtAttr{nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(7)), nl.NewRtAttr(unix.NHA_OIF, nl.Uint32Attr(2)),
		nl.NewRtAttr(unix.NHA_GATEWAY, []byte{10, 0, 0, 1})} {
		m = append(m, a.Serialize()...)
	}
	f.Add(m)
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, ok := parseNexthop(b); ok && n.ID == 0 {
			t.Errorf("parsed %v without an id", n)
		}
	})
}

// FuzzParseRoute: route messages come from the kernel too.
func FuzzParseRoute(f *testing.F) {
	msg := nl.NewRtMsg()
	msg.Family, msg.Dst_len = unix.AF_INET, 24
	b := msg.Serialize()
	for _, a := range []*nl.RtAttr{nl.NewRtAttr(unix.RTA_DST, []byte{10, 5, 1, 0}), nl.NewRtAttr(rtaNHID, nl.Uint32Attr(nhBase)),
		nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(unix.RT_TABLE_MAIN))} {
		b = append(b, a.Serialize()...)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, ok := parseRoute(b); ok && !r.Dst.IsValid() {
			t.Errorf("parsed %v without a destination", r)
		}
	})
}

// BenchmarkTableSetRoutes installs n vxlan-like routes (onlink, one
// gateway each, one device) into an empty namespace with one Set, with
// classic routes and through nexthop objects: the kernel's cost of the
// first grows with n², of the second with n. Run with -benchtime=1x.
func BenchmarkTableSetRoutes(b *testing.B) {
	for _, n := range []int{5000, 30000} {
		for _, kind := range []string{"classic", "nexthop"} {
			b.Run(fmt.Sprintf("%s/%d", kind, n), func(b *testing.B) {
				for range b.N {
					b.StopTimer()
					l := newNHLab(b)
					var opts []Option
					if kind == "classic" {
						opts = append(opts, WithClassicRoutes())
					}
					tb := NewTable(l.h, opts...)
					var s State
					for i := range n {
						sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
						s.Routes = append(s.Routes, Route{Dst: sn, Gw: sn.Addr(), LinkIndex: l.dev, OnLink: true})
					}
					b.StartTimer()
					if _, err := tb.Set(s); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
				}
			})
		}
	}
}

package route

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/netnstest"
)

// TestWatch: a healthy table is not suspect, whatever our own changes and
// unrelated ones notified; an entry deleted or altered behind the table's
// back, or its link going down, is, at once and once.
func TestWatch(t *testing.T) {
	n := netnstest.New(t, "fbk")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ip := func(args ...string) {
		t.Helper()
		if out, err := n.Run(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	ip("addr", "add", "192.168.0.1/24", "dev", "eth0")
	ip("link", "set", "eth0", "up")
	ip("link", "set", "eth0p", "up")
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
	var w *Watch
	if err := n.Do(func() (err error) { w, err = NewWatch(idx); return err }); err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	tb := NewTable(h)
	mac := MAC{2, 0, 0, 0, 0, 9}
	want := State{
		Routes: []Route{{Dst: netip.MustParsePrefix("10.5.2.0/24"), Gw: netip.MustParseAddr("192.168.0.2"), LinkIndex: idx},
			{Dst: netip.MustParsePrefix("10.5.3.0/24"), Gw: netip.MustParseAddr("192.168.0.3"), LinkIndex: idx}},
		Neighs: []Neigh{{IP: netip.MustParseAddr("192.168.0.9"), MAC: mac, LinkIndex: idx}},
	}
	if _, err := tb.Set(want); err != nil {
		t.Fatal(err)
	}
	suspect := func(step string, wantSuspect bool) {
		t.Helper()
		if got := w.Suspect(tb); got != wantSuspect {
			t.Errorf("%s: Suspect = %v, want %v", step, got, wantSuspect)
		}
	}
	suspect("after our own Set", false)
	if _, err := tb.Set(State{Routes: want.Routes[:1], Neighs: want.Neighs}); err != nil {
		t.Fatal(err)
	}
	suspect("after our own delete", false)
	ip("route", "add", "10.9.0.0/16", "via", "192.168.0.7")
	ip("neigh", "add", "192.168.0.8", "lladdr", "02:00:00:00:00:08", "dev", "eth0", "nud", "permanent")
	suspect("after unrelated additions", false)
	ip("route", "del", "10.5.2.0/24")
	suspect("route deleted", true)
	suspect("the period after", false)
	if _, err := tb.Set(want); err != nil {
		t.Fatal(err)
	}
	suspect("after our own repair", false)
	ip("route", "replace", "10.5.3.0/24", "via", "192.168.0.4")
	suspect("route altered", true)
	ip("neigh", "del", "192.168.0.9", "dev", "eth0")
	suspect("neighbour deleted", true)
	ip("link", "set", "eth0", "down")
	suspect("link down", true)
}

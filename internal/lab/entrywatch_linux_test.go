package lab

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/route"
)

// peerEntries is what the vxlan backend programs for a peer with subnet
// 10.N.0.0/24, VTEP MAC 0e:..:N and public IP 192.0.2.N.
func peerEntries(n byte) (RouteEntry, NeighEntry, FDBEntry, [][]string) {
	sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, n, 0, 0}), 24)
	mac := route.MAC{0x0e, 0, 0, 0, 0, n}
	pub := netip.AddrFrom4([4]byte{192, 0, 2, n})
	gw := sn.Addr().String()
	cmds := [][]string{
		{"ip", "neigh", "replace", gw, "lladdr", mac.String(), "dev", "vx0", "nud", "permanent"},
		{"bridge", "fdb", "append", mac.String(), "dev", "vx0", "dst", pub.String()},
		{"ip", "route", "replace", sn.String(), "via", gw, "dev", "vx0", "onlink"},
	}
	return RouteEntry{sn, sn.Addr()}, NeighEntry{sn.Addr(), mac}, FDBEntry{mac, pub}, cmds
}

func TestEntryWatch(t *testing.T) {
	netnstest.SkipUnlessModule(t, "vxlan")
	n := netnstest.New(t, "fscl")
	ctx := t.Context()
	run := func(cmds ...[]string) {
		t.Helper()
		for _, c := range cmds {
			if out, err := n.Run(ctx, c[0], c[1:]...); err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
			}
		}
	}
	run([]string{"ip", "link", "add", "u0", "type", "veth", "peer", "name", "u1"},
		[]string{"ip", "addr", "add", "192.0.2.100/24", "dev", "u0"},
		[]string{"ip", "link", "set", "u0", "up"},
		[]string{"ip", "link", "add", "vx0", "type", "vxlan", "id", "1", "dev", "u0", "local", "192.0.2.100", "dstport", "8472", "nolearning"},
		[]string{"ip", "link", "set", "vx0", "up"})

	r1, n1, f1, cmds1 := peerEntries(1)
	r2, n2, f2, cmds2 := peerEntries(2)
	run(cmds1...) // exists before the watch starts: must be listed
	w, err := WatchEntries(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Expect(Entries{Routes: []RouteEntry{r1, r2}, Neighs: []NeighEntry{n1, n2}, FDB: []FDBEntry{f1, f2}})

	if _, err := w.WaitExpected(ctx, 300*time.Millisecond, 0); err == nil {
		have, want := w.Progress()
		t.Fatalf("WaitExpected returned with peer 2 absent: have %+v of %+v", have, want)
	}
	before := time.Now()
	run(cmds2...)
	at, err := w.WaitExpected(ctx, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if at.Before(before) || at.After(time.Now()) {
		t.Errorf("last entry reported at %v, outside the %v..now it was added in", at, before)
	}

	// A route to the right destination through the wrong gateway is not
	// the expected route.
	r3 := RouteEntry{netip.MustParsePrefix("10.3.0.0/24"), netip.MustParseAddr("10.3.0.0")}
	run([]string{"ip", "route", "replace", "10.3.0.0/24", "via", "192.0.2.3", "dev", "u0"})
	if _, err := w.WaitRoute(ctx, r3.Dst, r3.Gw, 300*time.Millisecond, 0); err == nil {
		t.Fatal("WaitRoute accepted a route through another gateway")
	}
	run([]string{"ip", "route", "replace", "10.3.0.0/24", "via", "10.3.0.0", "dev", "vx0", "onlink"})
	if _, err := w.WaitRoute(ctx, r3.Dst, r3.Gw, 5*time.Second, 0); err != nil {
		t.Fatal(err)
	}

	got, err := CountEntries(n.Name, "vx0", netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Counts{Routes: 3, Neighs: 2, FDB: 2}); got != want {
		t.Errorf("CountEntries = %+v, want %+v", got, want)
	}

	// Deletions are followed too.
	run([]string{"ip", "route", "del", r2.Dst.String()}, []string{"bridge", "fdb", "del", f2.MAC.String(), "dev", "vx0", "dst", f2.Dst.String()})
	deadline := time.Now().Add(5 * time.Second)
	for {
		have, _ := w.Progress()
		if have == (Counts{Routes: 1, Neighs: 2, FDB: 1}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after deleting peer 2's route and FDB entry: have %+v", have)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWaitGivesUpWhenTheProcessExits(t *testing.T) {
	n := netnstest.New(t, "fscl")
	w, err := WatchEntries(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cmd := n.Command(context.Background(), "true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	_, err = w.WaitRoute(t.Context(), netip.MustParsePrefix("10.9.0.0/24"), netip.Addr{}, 10*time.Second, cmd.Process.Pid)
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("WaitRoute with an exited pid: %v", err)
	}
}

func TestEtcdRequestsParsing(t *testing.T) {
	m, v, ok := metricLine(`grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1234`, "grpc_method")
	if !ok || m != "Range" || v != 1234 {
		t.Errorf("metricLine = %q, %v, %v", m, v, ok)
	}
	if _, v, ok := metricLine("etcd_debugging_mvcc_watcher_total 3", ""); !ok || v != 3 {
		t.Errorf("unlabelled sample = %v, %v", v, ok)
	}
	if _, _, ok := metricLine(`grpc_server_started_total{grpc_service="x"} 1`, "grpc_method"); ok {
		t.Error("a line without the label parsed")
	}
	before := EtcdRequests{Started: map[string]int64{"Range": 10, "Watch": 2}, Watchers: 1}
	after := EtcdRequests{Started: map[string]int64{"Range": 11, "Watch": 2, "Txn": 1}, Watchers: 3}
	d := after.Sub(before)
	if d.Total() != 2 || d.Started["Range"] != 1 || d.Started["Txn"] != 1 || len(d.Started) != 2 || d.Watchers != 2 {
		t.Errorf("Sub = %+v", d)
	}
}

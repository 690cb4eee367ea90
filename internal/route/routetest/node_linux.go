package routetest

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/ns"
	"github.com/flannel-go/flannel/internal/route"
)

// Datapath is what a Node drives of the backend under test; every
// backend.Backend is one.
type Datapath interface {
	Init(ctx context.Context) (lease.Attrs, error)
	Configure(ctx context.Context, own lease.Lease) (mtu int, err error)
	Sync(ctx context.Context, peers []lease.Lease) error
	Close() error
}

// Peer is another node as Sync and Ping see it; a *Node is one, and so is
// a test's own type embedding it.
type Peer interface {
	Lease() lease.Lease
	Container() netip.Addr
}

// Node is one flannel host of a Lab: a Host with a subnet, a container
// behind it and the backend B under test.
type Node[B Datapath] struct {
	*Host
	Subnet  netip.Prefix
	Ctr     *ns.NS
	CtrAddr netip.Addr
	B       B              // set by Start
	Attrs   lease.Attrs    // what Init returned
	MTU     int            // what Configure returned
	Logs    *logbuf.Buffer // the backend's log, also echoed to the test's
}

// NewNodes builds n nodes on one segment of a new Lab: node i (from 1) has
// underlay 192.168.100.i/24, subnet 10.5.i.0/24 and a container at
// 10.5.i.2.
func NewNodes[B Datapath](t *testing.T, prefix string, n int) []*Node[B] {
	t.Helper()
	lab := NewLab(t, prefix)
	var out []*Node[B]
	for i := 1; i <= n; i++ {
		nd := &Node[B]{
			Host:   lab.AddHost(netip.MustParsePrefix(fmt.Sprintf("192.168.100.%d/24", i))),
			Subnet: netip.MustParsePrefix(fmt.Sprintf("10.5.%d.0/24", i)),
		}
		nd.Ctr, nd.CtrAddr = nd.AddContainer(nd.Subnet)
		out = append(out, nd)
	}
	return out
}

// Start builds the backend with newB, giving it the node's external
// interface and a debug logger into Logs, then runs Init and Configure
// inside the node's namespace. The backend is closed when the test ends.
func (n *Node[B]) Start(t testing.TB, newB func(ext iface.ExtIface, log *slog.Logger) (B, error)) {
	t.Helper()
	n.Logs = &logbuf.Buffer{Echo: func(l string) { t.Log(l) }}
	b, err := newB(n.Ext, n.Logs.Logger())
	if err != nil {
		t.Fatal(err)
	}
	n.B = b
	t.Cleanup(func() { _ = b.Close() })
	if err := n.NS.Do(func() error {
		var err error
		if n.Attrs, err = b.Init(context.Background()); err != nil {
			return err
		}
		n.MTU, err = b.Configure(context.Background(), n.Lease())
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// Lease is the node's lease: its subnet and what Init returned.
func (n *Node[B]) Lease() lease.Lease { return lease.Lease{Subnet: n.Subnet, Attrs: n.Attrs} }

// Container returns the address of the node's container.
func (n *Node[B]) Container() netip.Addr { return n.CtrAddr }

// Sync gives the node's backend the peers' leases.
func (n *Node[B]) Sync(t testing.TB, peers ...Peer) {
	t.Helper()
	var ls []lease.Lease
	for _, p := range peers {
		ls = append(ls, p.Lease())
	}
	if err := n.B.Sync(context.Background(), ls); err != nil {
		t.Fatal(err)
	}
}

// IP runs ip(8) with args in the node's namespace. Route listings show
// routes as before nexthop objects: `nhid N ` is taken out, so a test
// compares what a route does (gateway, device, onlink), not which object
// carries it.
func (n *Node[B]) IP(t testing.TB, args ...string) string {
	t.Helper()
	out := Run(t, n.NS, "ip", args...)
	if slices.Contains(args, "route") {
		out = nhidRE.ReplaceAllString(out, "")
	}
	return out
}

var nhidRE = regexp.MustCompile(`nhid [0-9]+ `)

// Handle opens a nexthop-capable netlink handle in n, closed when the
// test ends (for tests that wrap a backend's handle).
func Handle(t testing.TB, n *ns.NS) *route.Handle {
	t.Helper()
	nsh, err := netns.GetFromName(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := route.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// Ping checks container-to-container traffic from the node to each peer.
func (n *Node[B]) Ping(t testing.TB, peers ...Peer) {
	t.Helper()
	for _, p := range peers {
		MustPing(t, n.Ctr, n.CtrAddr, p.Container())
	}
}

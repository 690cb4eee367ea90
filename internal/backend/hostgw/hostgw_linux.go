package hostgw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/route"
)

// netlinker is every netlink call the backend makes; *netlink.Handle
// implements it and tests wrap it to count changes.
type netlinker interface {
	route.Netlink
	route.Lister
}

// Backend is the host-gw datapath of one host.
type Backend struct {
	ext     iface.ExtIface
	network netip.Prefix
	log     *slog.Logger

	nl  netlinker
	f   *route.Frame[peer] // the Table, the last Sync's peers, Close
	own netip.Prefix       // our lease's subnet; invalid before Configure
	// watch tells Repair whether the kernel may have lost routes; nil if
	// the subscription failed (then every Repair dumps).
	watch *route.Watch
}

// peer is what the backend keeps of a peer's lease: 88 bytes, where the
// lease is 208.
type peer struct {
	subnet, subnet6 netip.Prefix
	publicIP        netip.Addr
}

func peerOf(l lease.Lease) peer { return peer{l.Subnet, l.Subnet6, l.Attrs.PublicIP} }

func peersOf(ls []lease.Lease) []peer {
	ps := make([]peer, len(ls))
	for i, l := range ls {
		ps[i] = peerOf(l)
	}
	return ps
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Updater = (*Backend)(nil)
)

func newBackend(cfg backend.Config) (backend.Backend, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Network.EnableIPv6 {
		log.Warn("host-gw: IPv6 is enabled but only the IPv4 datapath is implemented; IPv6 subnets get no routes")
	}
	b := &Backend{
		ext:     cfg.Ext,
		network: cfg.Network.Network,
		log:     log.With("backend", Type),
	}
	b.f = route.NewFrame(Type, b.log, func(p peer) netip.Prefix { return p.subnet }, b.want)
	b.f.LogAttrs = logAttrs
	return b, nil
}

// Init opens a netlink handle in the calling thread's network namespace
// (every later call uses that namespace) and loads the routes it owns.
func (b *Backend) Init(ctx context.Context) (lease.Attrs, error) {
	if b.f.Closed() {
		return lease.Attrs{}, errors.New("host-gw: backend is closed")
	}
	if !b.ext.IfaceAddr.Is4() || b.ext.Index <= 0 {
		return lease.Attrs{}, fmt.Errorf("host-gw: external interface %q needs an index and an IPv4 address (have %v)",
			b.ext.Name, b.ext.IfaceAddr)
	}
	if b.nl == nil {
		h, err := route.NewHandle()
		if err != nil {
			return lease.Attrs{}, fmt.Errorf("host-gw: netlink handle: %w", err)
		}
		b.nl = h
		b.f.OnClose(h.Close)
	}
	b.f.Table = route.NewTable(b.nl, route.WithLog(b.log))
	if err := b.load(); err != nil {
		return lease.Attrs{}, err
	}
	if b.watch == nil {
		w, err := route.NewWatch(b.ext.Index)
		if err != nil {
			b.log.Warn("host-gw: no kernel notifications; every repair pass will dump the routes", "error", err)
		}
		b.watch = w
	}
	return lease.Attrs{PublicIP: b.ext.ExtAddr, BackendType: Type}, nil
}

// Configure records our own subnet (never routed to a peer) and returns
// the external interface's MTU: host-gw adds no header.
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (int, error) {
	if err := b.f.Ready(); err != nil {
		return 0, err
	}
	b.own = own.Subnet
	return b.ext.MTU, nil
}

// Sync makes the owned routes match peers.
func (b *Backend) Sync(ctx context.Context, peers []lease.Lease) error {
	return backend.NeedPermission(Type, "CAP_NET_ADMIN", b.f.Sync(peersOf(peers)))
}

// Update applies the changed peers' routes only: its cost does not grow
// with the number of peers.
func (b *Backend) Update(ctx context.Context, changes []backend.Change) error {
	put, removed := backend.Split(changes)
	return backend.NeedPermission(Type, "CAP_NET_ADMIN", b.f.Update(peersOf(put), removed))
}

// Repair re-reads the owned routes (one dump) and re-applies the peers
// when the kernel may have lost or altered some (a notification said so,
// the external interface changed, notifications were lost); else it only
// retries changes that failed. The notifications keep the dump, seconds
// at 65,000 routes, off the periodic pass.
func (b *Backend) Repair(ctx context.Context) error {
	if err := b.f.Ready(); err != nil {
		return err
	}
	if b.watch != nil && !b.watch.Suspect(b.f.Table) {
		if b.f.Stale() {
			return b.f.Apply()
		}
		return nil
	}
	if err := b.load(); err != nil {
		return err
	}
	return b.f.Apply()
}

// Close ends the notifications and releases the netlink handle. The
// routes stay.
func (b *Backend) Close() error {
	if b.watch != nil {
		b.watch.Close()
		b.watch = nil
	}
	return b.f.Close()
}

// want turns one peer lease into its route. The caller checked the
// peers (Sync's contract); what is checked here protects the kernel all
// the same: a lease that would make a route this backend cannot express
// (no IPv4 gateway) or would not recognise as its own after a restart
// (outside the network, so never removed) is skipped, with one warning
// per peer and problem.
func (b *Backend) want(p peer) route.Want {
	sn, ip := p.subnet, p.publicIP
	var w route.Want
	switch {
	case !sn.IsValid() || sn == b.own:
		return route.Want{}
	case !b.network.Contains(sn.Addr()) || sn.Bits() < b.network.Bits():
		w.Problem = fmt.Sprintf("subnet outside network %s", b.network)
	case !ip.Is4():
		w.Problem = "no IPv4 PublicIP"
	default:
		w.Routes = []route.Route{{Dst: sn, Gw: ip, LinkIndex: b.ext.Index}}
	}
	return w
}

func (b *Backend) owns(r route.Route) bool {
	return r.LinkIndex == b.ext.Index && r.Gw.IsValid() &&
		b.network.Contains(r.Dst.Addr()) && r.Dst.Bits() >= b.network.Bits()
}

func (b *Backend) load() error {
	routes, err := route.ListRoutes(b.nl, netlink.FAMILY_V4, b.owns)
	if err != nil {
		return fmt.Errorf("host-gw: %w", err)
	}
	b.f.Table.Load(route.State{Routes: routes})
	return nil
}

// logAttrs describes a skipped peer in its warning.
func logAttrs(p peer) []any {
	return []any{"key", lease.MakeKey(p.subnet, p.subnet6), "public_ip", p.publicIP}
}

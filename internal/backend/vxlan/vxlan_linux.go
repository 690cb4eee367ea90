package vxlan

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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
	LinkByName(name string) (netlink.Link, error)
	LinkAdd(netlink.Link) error
	LinkDel(netlink.Link) error
	LinkSetUp(netlink.Link) error
	LinkSetMTU(netlink.Link, int) error
	LinkSetHardwareAddr(netlink.Link, net.HardwareAddr) error
	AddrList(netlink.Link, int) ([]netlink.Addr, error)
	AddrAdd(netlink.Link, *netlink.Addr) error
	AddrDel(netlink.Link, *netlink.Addr) error
	RouteGet(net.IP) ([]netlink.Route, error)
}

// Backend is the vxlan datapath of one host.
type Backend struct {
	opts    Options
	prevMAC route.MAC // the VTEP MAC published before this start, if any
	ext     iface.ExtIface
	network netip.Prefix
	log     *slog.Logger

	nl netlinker
	f  *route.Frame[peer] // the Table, the last Sync's peers, Close

	name   string // flannel.<VNI>
	mtu    int    // the device's MTU, reported to containers
	mac    route.MAC
	link   netlink.Link // index valid until the device is recreated
	own    netip.Prefix // our lease's subnet; invalid before Configure
	onLink map[netip.Addr]bool
	// watch tells Repair whether the kernel may have lost entries; nil
	// if the subscription failed (then every Repair dumps).
	watch *route.Watch
	// restored is set by ensureDevice when it created the device or set
	// it up: the kernel flushed the routes through it without telling.
	restored bool
}

// peer is what the backend keeps of a peer's lease: what want reads, with
// the BackendData decoded. 120 bytes, where the lease is 208 and a cache
// of its decoding took 130 more; the IPv6 subnet, which only the log
// reads, is apart (most clusters have none). The decoding is kept while the value is
// unchanged: every Sync sees every peer, and decoding thousands of
// unchanged JSON values each time was about half the cost of a Sync at
// 5,000 peers.
type peer struct {
	subnet   netip.Prefix
	publicIP netip.Addr
	data     json.RawMessage // the lease's BackendData (shared, never changed)
	vni      int
	mac      route.MAC
	err      error         // why data does not decode
	subnet6  *netip.Prefix // nil if the lease has none
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Updater = (*Backend)(nil)
)

func subnet(p peer) netip.Prefix { return p.subnet }

// peer returns what the backend keeps of l, reusing the decoding of the
// peer it replaces if the BackendData is the same.
func (b *Backend) peer(l lease.Lease) peer {
	p := peer{subnet: l.Subnet, publicIP: l.Attrs.PublicIP, data: l.Attrs.BackendData}
	if l.Subnet6.IsValid() {
		p.subnet6 = &l.Subnet6
	}
	if old, ok := b.f.Peer(l.Subnet); ok && bytes.Equal(old.data, p.data) {
		p.vni, p.mac, p.err = old.vni, old.mac, old.err
		return p
	}
	d, err := DecodeLeaseData(p.data)
	p.vni, p.mac, p.err = d.VNI, d.VtepMAC, err
	return p
}

func (b *Backend) peers(ls []lease.Lease) []peer {
	ps := make([]peer, len(ls))
	for i, l := range ls {
		ps[i] = b.peer(l)
	}
	return ps
}

func newBackend(cfg backend.Config, o Options) (backend.Backend, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Network.EnableIPv6 {
		log.Warn("vxlan: IPv6 is enabled but only the IPv4 datapath is implemented; IPv6 subnets get no routes")
	}
	b := &Backend{
		opts:    o,
		ext:     cfg.Ext,
		network: cfg.Network.Network,
		log:     log.With("backend", Type),
		name:    DeviceName(o.VNI),
		onLink:  map[netip.Addr]bool{},
	}
	// A host that published a VTEP MAC before (the Kubernetes source
	// keeps it in the node's annotations across a reboot) creates its
	// device with that MAC again, so peers' entries stay right.
	if cfg.Prev.BackendType == Type {
		if d, err := DecodeLeaseData(cfg.Prev.BackendData); err == nil && d.VNI == o.VNI {
			b.prevMAC = d.VtepMAC
		}
	}
	b.f = route.NewFrame(Type, b.log, subnet, b.want)
	b.f.LogAttrs = logAttrs
	return b, nil
}

// Init opens a netlink handle in the calling thread's network namespace
// (every later call uses that namespace), creates or adopts the device and
// loads the entries it owns.
func (b *Backend) Init(ctx context.Context) (lease.Attrs, error) {
	if b.f.Closed() {
		return lease.Attrs{}, errors.New("vxlan: backend is closed")
	}
	if !b.ext.IfaceAddr.Is4() || !b.ext.ExtAddr.Is4() || b.ext.Index <= 0 {
		return lease.Attrs{}, fmt.Errorf("vxlan: external interface %q needs an index and IPv4 addresses (have %v, public %v)",
			b.ext.Name, b.ext.IfaceAddr, b.ext.ExtAddr)
	}
	under := b.opts.MTU
	if under == 0 {
		under = b.ext.MTU
	}
	b.mtu = under - overhead
	if b.mtu < minMTU {
		return lease.Attrs{}, fmt.Errorf("vxlan: MTU %d of %s leaves %d for %s, less than the IPv4 minimum %d",
			under, b.ext.Name, b.mtu, b.name, minMTU)
	}
	if b.nl == nil {
		h, err := route.NewHandle()
		if err != nil {
			return lease.Attrs{}, fmt.Errorf("vxlan: netlink handle: %w", err)
		}
		b.nl = h
		b.f.OnClose(h.Close)
	}
	if err := b.ensureDevice(false); err != nil {
		return lease.Attrs{}, backend.NeedPermission(Type, "CAP_NET_ADMIN", err)
	}
	b.f.Table = route.NewTable(b.nl, route.WithLog(b.log))
	if err := b.load(); err != nil {
		return lease.Attrs{}, err
	}
	if b.watch == nil {
		w, err := route.NewWatch(b.link.Attrs().Index, b.ext.Index)
		if err != nil {
			b.log.Warn("vxlan: no kernel notifications; every repair pass will dump the tables", "error", err)
		}
		b.watch = w
	}
	return lease.Attrs{
		PublicIP:    b.ext.ExtAddr,
		BackendType: Type,
		BackendData: LeaseData{VNI: b.opts.VNI, VtepMAC: b.mac}.Encode(),
	}, nil
}

// Configure puts <subnet address>/32 on the device and returns its MTU.
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (int, error) {
	if err := b.f.Ready(); err != nil {
		return 0, err
	}
	if !own.Subnet.IsValid() || !b.network.Contains(own.Subnet.Addr()) {
		return 0, fmt.Errorf("vxlan: own subnet %v is not inside network %s", own.Subnet, b.network)
	}
	b.own = own.Subnet
	if err := b.ensureAddr(); err != nil {
		return 0, backend.NeedPermission(Type, "CAP_NET_ADMIN", err)
	}
	return b.mtu, nil
}

// Sync makes the neighbour, FDB and route entries match peers.
func (b *Backend) Sync(ctx context.Context, peers []lease.Lease) error {
	return backend.NeedPermission(Type, "CAP_NET_ADMIN", b.f.Sync(b.peers(peers)))
}

// Update applies the changed peers' entries only: its cost does not grow
// with the number of peers.
func (b *Backend) Update(ctx context.Context, changes []backend.Change) error {
	put, removed := backend.Split(changes)
	return backend.NeedPermission(Type, "CAP_NET_ADMIN", b.f.Update(b.peers(put), removed))
}

// Repair restores the device (same MAC, address, MTU, up) and, when the
// kernel may have lost or altered entries (a notification said so, the
// device was recreated or down, notifications were lost) or with
// DirectRouting (the underlay may have changed), re-reads the owned
// entries and re-applies the peers; else it only retries changes that
// failed. A full pass costs one dump each of routes, neighbours and FDB
// entries and a diff of all of them: seconds at 65,000 peers, which the
// notifications keep off the periodic pass.
func (b *Backend) Repair(ctx context.Context) error {
	if err := b.f.Ready(); err != nil {
		return err
	}
	b.restored = false
	if err := b.ensureDevice(true); err != nil {
		return err
	}
	if b.own.IsValid() {
		if err := b.ensureAddr(); err != nil {
			return err
		}
	}
	full := b.watch == nil || b.restored || b.opts.DirectRouting
	if b.watch != nil {
		b.watch.SetLinks(b.link.Attrs().Index, b.ext.Index)
		// Always take the period's notifications, so the next pass
		// does not see this one's.
		full = b.watch.Suspect(b.f.Table) || full
	}
	if !full {
		if b.f.Stale() {
			return b.f.Apply()
		}
		return nil
	}
	// The underlay may have changed; look on-link peers up again.
	clear(b.onLink)
	if err := b.load(); err != nil {
		return err
	}
	return b.f.Apply()
}

// Close ends the notifications and releases the netlink handle. The
// device and entries stay.
func (b *Backend) Close() error {
	if b.watch != nil {
		b.watch.Close()
		b.watch = nil
	}
	return b.f.Close()
}

// want turns one peer lease into entries. The caller checked the peers
// (Sync's contract); what is checked here protects the kernel all the
// same: a lease whose BackendData does not decode, whose VNI is not ours
// or whose MAC another peer (with a lower subnet) uses, or that would make
// an entry this backend would not recognise as its own after a restart
// (outside the network, so never removed) is skipped, with one warning per
// peer and problem. A peer claims its MAC (one FDB entry per MAC) and its
// subnet's address (the neighbour entry's key), so overlapping leases
// cannot overwrite each other's entries.
func (b *Backend) want(p peer) route.Want {
	sn := p.subnet
	var w route.Want
	switch {
	case !sn.IsValid() || sn == b.own:
		return route.Want{}
	case !b.network.Contains(sn.Addr()) || sn.Bits() < b.network.Bits():
		w.Problem = fmt.Sprintf("subnet outside network %s", b.network)
		return w
	case !p.publicIP.Is4():
		w.Problem = "no IPv4 PublicIP"
		return w
	}
	switch {
	case p.err != nil:
		w.Problem = p.err.Error()
		return w
	case p.vni != b.opts.VNI:
		w.Problem = fmt.Sprintf("VNI %d, ours is %d", p.vni, b.opts.VNI)
		return w
	}
	if b.opts.DirectRouting && b.isOnLink(p.publicIP) {
		w.Routes = []route.Route{{Dst: sn, Gw: p.publicIP, LinkIndex: b.ext.Index}}
		return w
	}
	idx := b.link.Attrs().Index
	w.Claims = []string{"VtepMAC " + p.mac.String(), "address " + sn.Addr().String()}
	w.Neighs = []route.Neigh{{IP: sn.Addr(), MAC: p.mac, LinkIndex: idx}}
	w.FDB = []route.FDB{{MAC: p.mac, Dst: p.publicIP, LinkIndex: idx}}
	w.Routes = []route.Route{{Dst: sn, Gw: sn.Addr(), LinkIndex: idx, OnLink: true}}
	return w
}

// isOnLink reports whether the underlay reaches ip without a gateway
// through the external interface. Equivalent to: `ip route get IP`.
func (b *Backend) isOnLink(ip netip.Addr) bool {
	if v, ok := b.onLink[ip]; ok {
		return v
	}
	rs, err := b.nl.RouteGet(ip.AsSlice())
	v := err == nil && len(rs) == 1 && rs[0].Gw == nil && rs[0].LinkIndex == b.ext.Index
	b.onLink[ip] = v
	return v
}

// owns is the ownership rule of the package comment.
func (b *Backend) owns(r route.Route) bool {
	if !b.network.Contains(r.Dst.Addr()) || r.Dst.Bits() < b.network.Bits() {
		return false
	}
	return r.LinkIndex == b.link.Attrs().Index || (r.LinkIndex == b.ext.Index && r.Gw.IsValid())
}

// load replaces the table's record with the owned entries in the kernel.
func (b *Backend) load() error {
	idx := b.link.Attrs().Index
	routes, err := route.ListRoutes(b.nl, netlink.FAMILY_V4, b.owns)
	if err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	neighs, err := route.ListNeighs(b.nl, netlink.FAMILY_V4, idx)
	if err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	fdb, err := route.ListFDB(b.nl, idx)
	if err != nil {
		return fmt.Errorf("vxlan: %w", err)
	}
	b.f.Table.Load(route.State{Routes: routes, Neighs: neighs, FDB: fdb})
	return nil
}

func (b *Backend) port() int {
	if b.opts.Port == 0 {
		return kernelPort
	}
	return b.opts.Port
}

// incompatible says why an existing link cannot be adopted, or "".
func (b *Backend) incompatible(l netlink.Link) string {
	v, ok := l.(*netlink.Vxlan)
	switch {
	case !ok:
		return fmt.Sprintf("type %s, not vxlan", l.Type())
	case v.VxlanId != b.opts.VNI:
		return fmt.Sprintf("VNI %d, want %d", v.VxlanId, b.opts.VNI)
	case v.VtepDevIndex != b.ext.Index:
		return fmt.Sprintf("underlay link index %d, want %d (%s)", v.VtepDevIndex, b.ext.Index, b.ext.Name)
	case !v.SrcAddr.Equal(b.ext.IfaceAddr.AsSlice()):
		return fmt.Sprintf("local address %v, want %s", v.SrcAddr, b.ext.IfaceAddr)
	case v.Port != b.port():
		return fmt.Sprintf("port %d, want %d", v.Port, b.port())
	case v.GBP != b.opts.GBP:
		return fmt.Sprintf("gbp %v, want %v", v.GBP, b.opts.GBP)
	case v.Learning != b.opts.Learning:
		return fmt.Sprintf("learning %v, want %v", v.Learning, b.opts.Learning)
	case v.Group != nil && !v.Group.IsUnspecified():
		return fmt.Sprintf("has remote/group %v", v.Group)
	case v.L2miss || v.L3miss || v.FlowBased:
		return "has l2miss, l3miss or external (flow-based) set"
	}
	return ""
}

// ensureDevice adopts, creates or restores the device. With keepMAC (in
// Repair) the device must carry the MAC we advertised: peers' neighbour
// entries point at it. Equivalent to:
// `ip link add flannel.N address MAC type vxlan id N dev EXT local IP [dstport P] [nolearning] [gbp]; ip link set flannel.N mtu M up`.
func (b *Backend) ensureDevice(keepMAC bool) error {
	l, err := b.nl.LinkByName(b.name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		l = nil
		if keepMAC {
			b.log.Warn("vxlan: device disappeared; recreating it", "device", b.name, "mac", b.mac)
		}
	case err != nil:
		return fmt.Errorf("vxlan: look up %s: %w", b.name, err)
	default:
		if why := b.incompatible(l); why != "" {
			b.log.Warn("vxlan: replacing incompatible device", "device", b.name, "reason", why)
			if err := b.nl.LinkDel(l); err != nil {
				return fmt.Errorf("vxlan: delete incompatible %s: %w", b.name, err)
			}
			l = nil
		}
	}

	if l == nil {
		if !keepMAC {
			b.mac = randomMAC()
			if b.prevMAC != (route.MAC{}) {
				b.mac = b.prevMAC
				b.log.Info("vxlan: creating the device with the MAC this host published before", "device", b.name, "mac", b.mac)
			}
		}
		if l, err = b.create(); err != nil {
			return err
		}
		b.restored = true
	} else if !keepMAC {
		m, ok := route.MACFrom(l.Attrs().HardwareAddr)
		if !ok {
			return fmt.Errorf("vxlan: %s has MAC %v, not an Ethernet address", b.name, l.Attrs().HardwareAddr)
		}
		b.mac = m
		b.log.Info("vxlan: adopting existing device", "device", b.name, "index", l.Attrs().Index, "mac", m)
	}

	// systemd-udevd's MACAddressPolicy may rewrite the MAC of a new link
	// after we set it, and anyone may change it later.
	if m, _ := route.MACFrom(l.Attrs().HardwareAddr); m != b.mac {
		b.log.Warn("vxlan: device MAC changed behind our back; restoring it", "device", b.name, "have", l.Attrs().HardwareAddr, "want", b.mac)
		if err := b.nl.LinkSetHardwareAddr(l, b.mac.HardwareAddr()); err != nil {
			return fmt.Errorf("vxlan: set MAC of %s to %s: %w", b.name, b.mac, err)
		}
	}
	if l.Attrs().MTU != b.mtu {
		if err := b.nl.LinkSetMTU(l, b.mtu); err != nil {
			return fmt.Errorf("vxlan: set MTU of %s to %d: %w", b.name, b.mtu, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := b.nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("vxlan: set %s up: %w", b.name, err)
		}
		b.restored = true
	}
	b.link = l
	return nil
}

func (b *Backend) create() (netlink.Link, error) {
	la := netlink.NewLinkAttrs()
	la.Name = b.name
	la.MTU = b.mtu
	la.HardwareAddr = b.mac.HardwareAddr()
	v := &netlink.Vxlan{
		LinkAttrs:    la,
		VxlanId:      b.opts.VNI,
		VtepDevIndex: b.ext.Index,
		SrcAddr:      b.ext.IfaceAddr.AsSlice(),
		Port:         b.opts.Port,
		Learning:     b.opts.Learning,
		GBP:          b.opts.GBP,
	}
	if err := b.nl.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("vxlan: create %s (VNI %d on %s): %w", b.name, b.opts.VNI, b.ext.Name, err)
	}
	l, err := b.nl.LinkByName(b.name)
	if err != nil {
		return nil, fmt.Errorf("vxlan: look up created %s: %w", b.name, err)
	}
	b.log.Info("vxlan: created device", "device", b.name, "index", l.Attrs().Index, "mac", b.mac, "mtu", b.mtu)
	return l, nil
}

// ensureAddr makes <own subnet address>/32 the device's only address inside
// the network. Equivalent to: `ip addr add 10.5.72.0/32 dev flannel.1` plus
// `ip addr del` of stale ones.
func (b *Backend) ensureAddr() error {
	want := netip.PrefixFrom(b.own.Addr(), 32)
	addrs, err := route.Dump(func() ([]netlink.Addr, error) { return b.nl.AddrList(b.link, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("vxlan: list addresses of %s: %w", b.name, err)
	}
	var stale []netlink.Addr
	have := false
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		switch {
		case p == want:
			have = true
		case b.network.Contains(p.Addr()):
			stale = append(stale, a)
		}
	}
	if !have {
		if err := b.nl.AddrAdd(b.link, &netlink.Addr{IPNet: route.IPNet(want)}); err != nil {
			return fmt.Errorf("vxlan: add address %s to %s: %w", want, b.name, err)
		}
	}
	for _, a := range stale {
		if err := b.nl.AddrDel(b.link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("vxlan: delete stale address %s from %s: %w", a.IPNet, b.name, err)
		}
	}
	return nil
}

// randomMAC returns a locally administered unicast MAC. It is set
// explicitly at creation so the address peers learn is ours, not one
// udev picks later.
func randomMAC() route.MAC {
	var m route.MAC
	_, _ = rand.Read(m[:])
	m[0] = (m[0] | 0x02) &^ 0x01
	return m
}

// logAttrs describes a skipped peer in its warning.
func logAttrs(p peer) []any {
	var sn6 netip.Prefix
	if p.subnet6 != nil {
		sn6 = *p.subnet6
	}
	return []any{"key", lease.MakeKey(p.subnet, sn6), "public_ip", p.publicIP}
}

package udp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/backend/udp/fastpath"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
)

// tunPattern is upstream's device name pattern.
const tunPattern = "flannel%d"

// Backend is the udp backend. Its methods are those of backend.Backend and
// are not called concurrently, except Stats, which may be called at any
// time.
type Backend struct {
	log     *slog.Logger
	ext     iface.ExtIface
	network netip.Prefix
	port    uint16
	want    offloadSet
	procs   bool // may raise GOMAXPROCS while forwarding
	mode    datapathMode
	pinDir  string // for the eBPF datapath's pins; "" pins nothing
	// bridgeOnly: the eBPF datapath delivers through flannel0 only.
	bridgeOnly bool
	// noXDP: the eBPF datapath leaves the XDP hook alone.
	noXDP bool
	// tunName is what the TUN is opened as: upstream's pattern, or the
	// name of the device a previous process left for us (see persist).
	tunName string
	// persist keeps the TUN when its fd closes: with pinned programs the
	// kernel goes on forwarding through it while flanneld restarts.
	persist bool

	// The eBPF datapath, nil while only the userspace one forwards, and
	// the peers last synced, for a rebuilt one.
	fast      *fastpath.Datapath
	fastPeers map[netip.Prefix]netip.Addr
	// statsMu guards fastStats, which reads fast's counters: Stats runs
	// concurrently with the methods that start and stop fast.
	statsMu   sync.Mutex
	fastStats func() (fastpath.Counters, error)

	sh       shared
	out, in  counters
	dp       atomic.Pointer[datapath]
	ifaceIdx int
	ifname   atomic.Pointer[string]

	// Set by Init: a netlink handle and a raw NETLINK_ROUTE socket, both
	// bound to the namespace Init ran in, so later calls work from any
	// thread without switching namespaces.
	nl *netlink.Handle
	rt *nl.NetlinkSocket

	// inNS, when set, runs a rebuild of the device and socket in the
	// namespace Init ran in. flanneld never sets it: it lives in one
	// namespace, and switching would need CAP_SYS_ADMIN, which the
	// shipped unit does not grant. Tests that call Repair from a thread
	// of another namespace set it.
	inNS func(func() error) error

	own netip.Prefix // our subnet, after Configure
}

var _ backend.Backend = (*Backend)(nil)

// New validates the configuration; it touches no kernel state. It is a
// backend.Factory.
func (o Options) New(cfg backend.Config) (backend.Backend, error) {
	want, err := parseOffloads(o.Offloads)
	if err != nil {
		return nil, err
	}
	mode, err := parseDatapath(o.Datapath)
	if err != nil {
		return nil, err
	}
	bridgeOnly, err := parseDeliver(o.Deliver)
	if err != nil {
		return nil, err
	}
	noXDP, err := parseXDP(o.XDP)
	if err != nil {
		return nil, err
	}
	b, err := newBackend(cfg, settings{offloads: want, raiseProcs: o.RaiseGOMAXPROCS, datapath: mode, bridgeOnly: bridgeOnly, noXDP: noXDP})
	if err != nil {
		return nil, err
	}
	if o.Collector != nil {
		o.Collector.set(b.Stats)
	}
	return b, nil
}

// settings are the process-wide Options, parsed.
type settings struct {
	offloads   offloadSet
	raiseProcs bool
	datapath   datapathMode
	// bridgeOnly turns the eBPF datapath's direct delivery to local
	// containers off (fastpath.Config.BridgeOnly).
	bridgeOnly bool
	// noXDP keeps the eBPF datapath off the XDP hook
	// (fastpath.Config.NoXDP).
	noXDP bool
	// pinDir overrides where the eBPF datapath pins its maps and links
	// (tests use a private bpf filesystem); "" means defaultPinDir.
	pinDir string
}

func newBackend(cfg backend.Config, set settings) (*Backend, error) {
	port, err := parsePort(cfg.Options)
	if err != nil {
		return nil, err
	}
	if cfg.Network == nil || !cfg.Network.Network.IsValid() || !cfg.Network.Network.Addr().Is4() {
		return nil, errors.New("udp: the network config has no IPv4 Network (the udp backend is IPv4 only)")
	}
	ext := cfg.Ext
	if !ext.IfaceAddr.Is4() {
		return nil, fmt.Errorf("udp: external interface %q has no IPv4 address", ext.Name)
	}
	if !ext.ExtAddr.Is4() {
		ext.ExtAddr = ext.IfaceAddr
	}
	if ext.MTU-encapOverhead < 68 {
		return nil, fmt.Errorf("udp: external interface %q MTU %d leaves less than the IPv4 minimum of 68 after %d bytes of encapsulation", ext.Name, ext.MTU, encapOverhead)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Backend{
		log:        log.With("backend", Type),
		ext:        ext,
		network:    cfg.Network.Network.Masked(),
		port:       port,
		want:       set.offloads,
		procs:      set.raiseProcs,
		mode:       set.datapath,
		bridgeOnly: set.bridgeOnly,
		noXDP:      set.noXDP,
		pinDir:     set.pinDir,
		tunName:    tunPattern,
	}, nil
}

// Init creates the TUN device and the UDP socket in the calling thread's
// network namespace and starts forwarding (to nobody until Configure and
// Sync). A TUN cannot be adopted across a restart (it dies with its fd)
// unless the pinned eBPF datapath kept it (see adoptPinned).
// The lease carries only PublicIP, with BackendType left empty, as upstream
// writes it, so upstream hosts accept our lease.
func (b *Backend) Init(ctx context.Context) (lease.Attrs, error) {
	if b.nl != nil {
		return lease.Attrs{}, errors.New("udp: Init called twice")
	}
	// Both are opened in the calling thread's namespace, with no setns
	// (netlink.NewHandleAt would switch, needing CAP_SYS_ADMIN).
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return lease.Attrs{}, fmt.Errorf("udp: netlink handle: %w", err)
	}
	rt, err := openRouteSocket()
	if err != nil {
		h.Close()
		return lease.Attrs{}, fmt.Errorf("udp: %w", err)
	}
	b.nl, b.rt = h, rt
	useEBPF := b.chooseEBPF()
	b.adoptPinned(useEBPF)
	wantGRO := b.want.gro
	if useEBPF {
		// The ingress program leaves GRO-coalesced datagrams to the
		// socket, so the kernel must not coalesce them for it.
		b.want.gro = false
	}
	if err := b.open(ctx); err != nil {
		b.nl.Close()
		b.rt.Close()
		b.nl, b.rt = nil, nil
		return lease.Attrs{}, backend.NeedPermission(Type, "CAP_NET_ADMIN and /dev/net/tun", err)
	}
	if useEBPF {
		if err := b.startEBPF(); err != nil {
			if b.mode == datapathEBPF {
				b.Close()
				return lease.Attrs{}, backend.NeedPermission(Type, "CAP_BPF and CAP_NET_ADMIN", err)
			}
			b.log.Info("forwarding in userspace: the eBPF datapath did not start", "err", err)
			// Start over as a plain userspace datapath: UDP GRO back on,
			// a TUN that dies with its fd.
			b.want.gro, b.persist = wantGRO, false
			if name := b.Device(); name != "" {
				b.tunName = name // the same device, its persistence taken off
			}
			if dp := b.dp.Swap(nil); dp != nil {
				_ = dp.close()
			}
			if err := b.open(ctx); err != nil {
				b.Close()
				return lease.Attrs{}, backend.NeedPermission(Type, "CAP_NET_ADMIN and /dev/net/tun", err)
			}
		}
	}
	return lease.Attrs{PublicIP: b.ext.ExtAddr}, nil
}

// open creates the device and the socket in the current thread's namespace
// and starts the loops.
func (b *Backend) open(ctx context.Context) error {
	tun, err := openTUN(b.tunName, b.want.tun)
	if errors.Is(err, errNoOffload) {
		b.log.Info("TUN offloads unavailable, reading one packet per syscall", "err", err)
		tun, err = openTUN(b.tunName, false)
	}
	if err != nil {
		return fmt.Errorf("udp: %w", err)
	}
	// A device reopened by name keeps the persistence it had.
	if b.persist || b.tunName != tunPattern {
		if err := tun.setPersist(b.persist); err != nil {
			tun.Close()
			return fmt.Errorf("udp: %w", err)
		}
	}
	link, err := b.nl.LinkByName(tun.name)
	if err != nil {
		tun.Close()
		return fmt.Errorf("udp: find device %s: %w", tun.name, err)
	}
	addr := netip.AddrPortFrom(b.ext.IfaceAddr, b.port)
	sock, err := openUDP(ctx, addr, b.want.gso, b.want.gro)
	if err != nil {
		tun.Close()
		return fmt.Errorf("udp: %w", err)
	}
	b.ifaceIdx = link.Attrs().Index
	b.ifname.Store(&tun.name)
	dp := startDatapath(tun, sock, &b.sh, &b.out, &b.in, b.log, b.procs)
	b.dp.Store(dp)
	o := dp.offloads()
	b.log.Info("forwarding", "device", tun.name, "listen", addr,
		"tun_offload", o.TUNVnet, "udp_gso", o.UDPGSO, "udp_gro", o.UDPGRO)
	return nil
}

// Configure gives the device our subnet's network address (/32), the MTU
// and a route for the whole flannel network, and returns the MTU.
// Equivalent to:
//
//	ip link set flannel0 mtu $((EXT_MTU-28)) up
//	ip addr replace 10.5.72.0/32 dev flannel0
//	ip route add 10.5.0.0/16 dev flannel0
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (int, error) {
	if b.nl == nil {
		return 0, errors.New("udp: Configure before Init")
	}
	if !own.Subnet.IsValid() || !own.Subnet.Addr().Is4() {
		return 0, fmt.Errorf("udp: lease %s has no IPv4 subnet", own)
	}
	b.own = own.Subnet.Masked()
	b.sh.own.Store(newOwnState(b.own))
	if err := b.configureLink(); err != nil {
		return 0, backend.NeedPermission(Type, "CAP_NET_ADMIN", err)
	}
	if b.fast != nil {
		if err := b.fast.SetOwn(b.own); err != nil {
			return 0, fmt.Errorf("udp: %w", err)
		}
	}
	return b.mtu(), nil
}

func (b *Backend) mtu() int { return b.ext.MTU - encapOverhead }

func (b *Backend) configureLink() error {
	link, err := b.nl.LinkByIndex(b.ifaceIdx)
	if err != nil {
		return fmt.Errorf("udp: find device %d: %w", b.ifaceIdx, err)
	}
	name := link.Attrs().Name
	if link.Attrs().MTU != b.mtu() {
		if err := b.nl.LinkSetMTU(link, b.mtu()); err != nil {
			return fmt.Errorf("udp: set %s mtu %d: %w", name, b.mtu(), err)
		}
	}
	if err := b.deviceConf(link); err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(b.own.Addr().AsSlice()), Mask: net.CIDRMask(32, 32)}}
	if err := b.nl.AddrReplace(link, a); err != nil {
		return fmt.Errorf("udp: add address %s/32 to %s: %w", b.own.Addr(), name, err)
	}
	// A previous lease's address (Configure again after a new lease) goes.
	if addrs, err := b.nl.AddrList(link, unix.AF_INET); err == nil {
		for _, old := range addrs {
			if !old.IP.Equal(a.IP) || old.Mask.String() != a.Mask.String() {
				if err := b.nl.AddrDel(link, &old); err != nil {
					return fmt.Errorf("udp: remove old address %s from %s: %w", old.IPNet, name, err)
				}
			}
		}
	}
	if err := b.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("udp: set %s up: %w", name, err)
	}
	b.noQueue(link)
	dst := &net.IPNet{IP: net.IP(b.network.Addr().AsSlice()), Mask: net.CIDRMask(b.network.Bits(), 32)}
	r := &netlink.Route{LinkIndex: b.ifaceIdx, Dst: dst, Scope: netlink.SCOPE_UNIVERSE}
	if err := b.nl.RouteAdd(r); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("udp: add route %s dev %s: %w", b.network, name, err)
		}
		b.checkRoute(name)
	}
	return nil
}

// deviceConf sets two per-device knobs over netlink (see devconf_linux.go
// for why not /proc/sys). accept_local lets the kernel take packets whose
// source is one of its own addresses from the device: our ICMP errors come
// from the device's own address (as upstream's do), and without it the
// kernel drops them as martians so nobody ever sees them; inbound traffic
// from peers claiming a source in our subnet is dropped by the datapath
// instead. IPv6 address generation is turned off so the kernel gives the
// device no link-local address and so sends no router solicitations or
// MLD reports into a device that carries IPv4 only (they would be counted
// as malformed); it must happen before the device goes up. Equivalent to:
//
//	sysctl net.ipv4.conf.flannel0.accept_local=1
//	ip link set flannel0 addrgenmode none
func (b *Backend) deviceConf(link netlink.Link) error {
	name := link.Attrs().Name
	if err := setAcceptLocal(b.rt, link.Attrs().Index); err != nil {
		return fmt.Errorf("udp: set %s accept_local: %w", name, err)
	}
	if err := b.nl.LinkSetIP6AddrGenMode(link, in6AddrGenModeNone); err != nil {
		// A kernel without IPv6 has nothing to turn off.
		b.log.Debug("could not turn off IPv6 address generation on the device", "device", name, "err", err)
	}
	return nil
}

// noQueue takes the qdisc off the device. A TUN never pushes back on its
// qdisc (it drops when our reader falls behind), so the default pfifo_fast
// is pure overhead per packet: it cost about 7% of the datapath's CPU per
// byte in our measurements. The vxlan device has none either. Equivalent
// to: `tc qdisc replace dev flannel0 root noqueue`.
func (b *Backend) noQueue(link netlink.Link) {
	qs, err := b.nl.QdiscList(link)
	if err == nil && len(qs) == 1 && qs[0].Type() == "noqueue" {
		return
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT},
		QdiscType:  "noqueue",
	}
	if err := b.nl.QdiscReplace(q); err != nil {
		b.log.Debug("could not remove the device's qdisc", "device", link.Attrs().Name, "err", err)
	}
}

// checkRoute warns when the network's route exists but not through our
// device (upstream ignores EEXIST; so do we, but not silently).
func (b *Backend) checkRoute(name string) {
	filter := &netlink.Route{Dst: &net.IPNet{IP: net.IP(b.network.Addr().AsSlice()), Mask: net.CIDRMask(b.network.Bits(), 32)}}
	var routes []netlink.Route
	var err error
	for range 5 {
		routes, err = b.nl.RouteListFiltered(unix.AF_INET, filter, netlink.RT_FILTER_DST)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return
	}
	for _, r := range routes {
		if r.LinkIndex == b.ifaceIdx {
			return
		}
	}
	b.log.Warn("a route for the network exists through another device; traffic will not reach "+name, "network", b.network)
}

// Sync makes the datapath forward to exactly these peers: it builds a new
// lookup table and swaps it in; the loops keep running. Leases of any
// BackendType are accepted, as upstream's udp backend does. Our own subnet
// and leases without an IPv4 subnet or PublicIP are skipped.
func (b *Backend) Sync(ctx context.Context, peers []lease.Lease) error {
	ps := make([]peer, 0, len(peers))
	skipped := 0
	for _, l := range peers {
		if !l.Subnet.IsValid() || !l.Subnet.Addr().Is4() || !l.Attrs.PublicIP.Is4() {
			skipped++
			continue
		}
		sn := l.Subnet.Masked()
		if sn == b.own {
			continue
		}
		ps = append(ps, peer{subnet: sn, ip: l.Attrs.PublicIP.As4(), port: b.port})
	}
	b.sh.peers.Store(newTable(ps, b.network))
	if skipped > 0 {
		b.log.Debug("skipped leases without an IPv4 subnet or PublicIP", "count", skipped)
	}
	return b.syncEBPF(ps)
}

// Repair restores the device's address, MTU, up state and route if they
// were removed, and rebuilds the device and socket if the device was
// deleted or a forwarding loop died.
func (b *Backend) Repair(ctx context.Context) error {
	dp := b.dp.Load()
	if dp == nil || b.nl == nil {
		return errors.New("udp: Repair before Init")
	}
	_, err := b.nl.LinkByIndex(b.ifaceIdx)
	var nf netlink.LinkNotFoundError
	gone := errors.As(err, &nf)
	if err != nil && !gone {
		return fmt.Errorf("udp: find device %d: %w", b.ifaceIdx, err)
	}
	if failed := dp.failure(); failed != nil || gone {
		b.log.Warn("rebuilding the datapath", "device_deleted", gone, "loop_error", failed)
		b.dp.Store(nil)
		_ = dp.close()
		// The programs follow the new device.
		hadEBPF := b.fast != nil
		_ = b.stopEBPF()
		open := func() error {
			if err := b.open(ctx); err != nil {
				return err
			}
			if hadEBPF {
				if err := b.startEBPF(); err != nil {
					b.log.Warn("forwarding in userspace: the eBPF datapath did not restart", "err", err)
				}
			}
			return nil
		}
		if b.inNS != nil {
			err = b.inNS(open)
		} else {
			err = open()
		}
		if err != nil {
			return backend.NeedPermission(Type, "CAP_NET_ADMIN and /dev/net/tun", err)
		}
	}
	if b.fast != nil {
		if err := b.fast.Check(); err != nil {
			b.log.Warn("reattaching the eBPF datapath", "err", err)
			_ = b.stopEBPF()
			start := b.startEBPF
			if b.inNS != nil {
				err = b.inNS(start)
			} else {
				err = start()
			}
			if err != nil {
				b.log.Warn("forwarding in userspace: the eBPF datapath did not restart", "err", err)
			}
		}
	}
	if !b.own.IsValid() {
		return nil
	}
	return backend.NeedPermission(Type, "CAP_NET_ADMIN", b.configureLink())
}

// Close stops forwarding and waits for the loops. The TUN device goes away
// with its fd (it is not persistent), as upstream's does, except when
// pinned eBPF programs forward through it until the next start.
func (b *Backend) Close() error {
	// The programs go first (unless pinned, when they stay for the next
	// process), so none is left redirecting into a TUN that is gone.
	err := b.stopEBPF()
	if dp := b.dp.Swap(nil); dp != nil {
		err = errors.Join(err, dp.close())
	}
	if b.nl != nil {
		b.nl.Close()
		b.nl = nil
	}
	if b.rt != nil {
		b.rt.Close()
		b.rt = nil
	}
	return err
}

// Stats returns the datapath counters and active offloads.
func (b *Backend) Stats() Stats {
	s := Stats{Out: b.out.snapshot(), In: b.in.snapshot()}
	if dp := b.dp.Load(); dp != nil {
		s.Offloads = dp.offloads()
	}
	b.statsMu.Lock()
	defer b.statsMu.Unlock()
	if b.fastStats != nil {
		if c, err := b.fastStats(); err == nil {
			s.EBPF = &EBPFStats{
				OutPackets: c.OutPackets, OutBytes: c.OutBytes, InPackets: c.InPackets, InBytes: c.InBytes,
				DirectPackets: c.PeerPackets, DirectBytes: c.PeerBytes,
				XDPPackets: c.XDPPackets, XDPBytes: c.XDPBytes,
			}
		}
	}
	return s
}

// Device returns the TUN device's name ("" before Init).
func (b *Backend) Device() string {
	if n := b.ifname.Load(); n != nil {
		return *n
	}
	return ""
}

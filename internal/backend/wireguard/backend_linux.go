package wireguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/route"
)

// wgClient is the part of wgctrl the backend uses; *wgctrl.Client
// implements it over netlink (kernel) and the UAPI socket (userspace).
type wgClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
	Close() error
}

// Backend is the wireguard datapath of one host. Its methods are those of
// backend.Backend and are not called concurrently.
type Backend struct {
	cfg     Config
	keyFile string
	v4, v6  bool
	nets    []netip.Prefix
	ext     iface.ExtIface
	log     *slog.Logger

	key    wgtypes.Key
	nl     *netlink.Handle
	wg     wgClient
	devs   []*wgDev
	mtu    int
	own    lease.Lease // valid after Configure
	peers  []lease.Lease
	closed bool
	// warned is the problem last logged per lease key; a problem that
	// goes away is warned about again if it comes back.
	warned, skipped map[string]string
}

// wgDev is one WireGuard device and what was applied to it.
type wgDev struct {
	devPlan
	uapi   string // the name wgctrl knows it by
	kernel bool
	us     *userspace // nil for a kernel device
	index  int
	// applied is the peers the device holds as far as we know; nil when
	// unknown (a failed configuration), so Repair reads the device.
	applied map[wgtypes.Key]peerSpec
}

var _ backend.Backend = (*Backend)(nil)

func newBackend(cfg backend.Config, c Config, keyFile string, v4, v6 bool) (backend.Backend, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Backend{
		cfg: c, keyFile: keyFile, v4: v4, v6: v6,
		nets: networks(v4, v6, cfg.Network.Network, cfg.Network.IPv6Network),
		ext:  cfg.Ext, log: log.With("backend", Type),
		warned: map[string]string{},
	}, nil
}

// Init reads (or creates) the private key, then creates or adopts each
// device in the calling thread's network namespace: a kernel WireGuard
// device when the kernel has the module, else a userspace one run by this
// process. It sets the key and listen port and returns the lease
// attributes: our public key and the port of each family.
func (b *Backend) Init(ctx context.Context) (lease.Attrs, error) {
	if b.closed {
		return lease.Attrs{}, errors.New("wireguard: backend is closed")
	}
	if b.nl != nil {
		return lease.Attrs{}, errors.New("wireguard: Init called twice")
	}
	if b.v4 && !b.ext.IfaceAddr.Is4() {
		return lease.Attrs{}, fmt.Errorf("wireguard: external interface %q has no IPv4 address", b.ext.Name)
	}
	if b.v6 && !b.ext.IfaceAddr6.Is6() {
		return lease.Attrs{}, fmt.Errorf("wireguard: external interface %q has no IPv6 address (EnableIPv6 is set)", b.ext.Name)
	}
	under := b.cfg.MTU
	if under == 0 {
		under = b.ext.MTU
	}
	b.mtu = under - overhead
	if b.mtu < minMTU {
		return lease.Attrs{}, fmt.Errorf("wireguard: MTU %d of %s leaves %d after the %d-byte overhead, less than the IPv4 minimum %d",
			under, b.ext.Name, b.mtu, overhead, minMTU)
	}
	key, created, err := LoadOrCreateKey(b.keyFile)
	if err != nil {
		return lease.Attrs{}, err
	}
	b.key = key
	if created {
		b.log.Info("wireguard: generated a private key", "file", b.keyFile, "public_key", key.PublicKey())
	} else {
		b.log.Info("wireguard: using the private key", "file", b.keyFile, "public_key", key.PublicKey())
	}

	// A handle in the calling thread's namespace: NewHandleAt would
	// setns(2) even into the same namespace, which needs CAP_SYS_ADMIN
	// (flanneld runs with NET_ADMIN and NET_RAW only).
	nl, err := netlink.NewHandle()
	if err != nil {
		return lease.Attrs{}, backend.NeedPermission(Type, "CAP_NET_ADMIN", fmt.Errorf("wireguard: netlink handle: %w", err))
	}
	wg, err := wgctrl.New()
	if err != nil {
		nl.Close()
		return lease.Attrs{}, fmt.Errorf("wireguard: wgctrl: %w", err)
	}
	b.nl, b.wg = nl, wg

	for _, p := range plans(b.cfg, b.v4, b.v6, b.ext.IfaceAddr6.IsValid()) {
		d := &wgDev{devPlan: p}
		b.devs = append(b.devs, d)
		if err := b.ensureDevice(d); err != nil {
			b.closeAll()
			return lease.Attrs{}, err
		}
	}

	a := lease.Attrs{BackendType: Type}
	if b.v4 {
		a.PublicIP = b.ext.ExtAddr
		if !a.PublicIP.IsValid() {
			a.PublicIP = b.ext.IfaceAddr
		}
	}
	if b.v6 {
		a.PublicIPv6 = b.ext.ExtAddr6
		if !a.PublicIPv6.IsValid() {
			a.PublicIPv6 = b.ext.IfaceAddr6
		}
	}
	pub := key.PublicKey()
	for _, d := range b.devs {
		// One device advertises its one port in both families' data.
		data := LeaseData{PublicKey: pub, Port: d.port}.Encode()
		if d.v4 && b.v4 {
			a.BackendData = data
		}
		if d.v6 && b.v6 {
			a.BackendV6Data = data
		}
	}
	return a, nil
}

// ensureDevice makes d exist, up, with our key, port and MTU, creating it
// (kernel first, else userspace) when it does not. An existing kernel
// device is adopted with its peers and sessions; its peers become the
// applied state, so the first Sync removes the stale ones. Equivalent to:
//
//	ip link add flannel-wg type wireguard    # or a TUN run by flanneld
//	wg set flannel-wg private-key /run/flannel/wgkey listen-port 51820
//	ip link set flannel-wg mtu $((MTU-80)) up
func (b *Backend) ensureDevice(d *wgDev) error {
	l, err := b.nl.LinkByName(d.name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		l = nil
	case err != nil:
		return fmt.Errorf("wireguard: look up %s: %w", d.name, err)
	}
	if d.us != nil && (l == nil || l.Attrs().Index != d.index) {
		// Our TUN was deleted behind our back: the userspace device
		// is dead. Start a new one; peers are re-added below.
		b.log.Warn("wireguard: userspace device disappeared; recreating it", "device", d.name)
		d.us.Close()
		d.us = nil
	}
	fresh := false
	switch {
	case d.us != nil:
	case l != nil && l.Type() == "wireguard":
		if !d.kernel {
			b.log.Info("wireguard: adopting existing kernel device", "device", d.name, "index", l.Attrs().Index)
		}
		d.kernel, d.uapi = true, d.name
	default:
		if l != nil {
			b.log.Warn("wireguard: replacing a device of another type", "device", d.name, "type", l.Type())
			if err := b.nl.LinkDel(l); err != nil {
				return fmt.Errorf("wireguard: delete %s (type %s): %w", d.name, l.Type(), err)
			}
		}
		if l, err = b.create(d); err != nil {
			return err
		}
		fresh = true
	}
	if l == nil {
		if l, err = b.nl.LinkByName(d.name); err != nil {
			return fmt.Errorf("wireguard: look up %s: %w", d.name, err)
		}
	}
	d.index = l.Attrs().Index

	dev, err := b.wg.Device(d.uapi)
	if err != nil {
		return fmt.Errorf("wireguard: read %s: %w", d.name, err)
	}
	if dev.PrivateKey != b.key || dev.ListenPort != d.port {
		port := d.port
		if err := b.wg.ConfigureDevice(d.uapi, wgtypes.Config{PrivateKey: &b.key, ListenPort: &port}); err != nil {
			return fmt.Errorf("wireguard: set key and port %d on %s: %w", port, d.name, err)
		}
		if !fresh && dev.PrivateKey != b.key {
			b.log.Warn("wireguard: the device had another private key; set ours", "device", d.name)
		}
	}
	if fresh {
		d.applied = map[wgtypes.Key]peerSpec{}
	} else {
		d.applied = fromDevice(dev.Peers)
	}
	if l.Attrs().MTU != b.mtu {
		if err := b.nl.LinkSetMTU(l, b.mtu); err != nil {
			return fmt.Errorf("wireguard: set MTU of %s to %d: %w", d.name, b.mtu, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := b.nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("wireguard: set %s up: %w", d.name, err)
		}
	}
	if d.us != nil {
		// The TUN's up event would do it too, but only later.
		if err := d.us.dev.Up(); err != nil {
			return fmt.Errorf("wireguard: start %s: %w", d.name, err)
		}
	}
	return nil
}

// create makes a kernel device, or where the kernel has no WireGuard a
// userspace one, and logs which.
func (b *Backend) create(d *wgDev) (netlink.Link, error) {
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU = d.name, b.mtu
	err := b.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: la})
	if err == nil {
		d.kernel, d.uapi = true, d.name
		l, err := b.nl.LinkByName(d.name)
		if err != nil {
			return nil, fmt.Errorf("wireguard: look up created %s: %w", d.name, err)
		}
		b.log.Info("wireguard: created kernel device", "device", d.name, "index", l.Attrs().Index, "port", d.port, "mtu", b.mtu)
		return l, nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("wireguard: create %s: %w", d.name, err)
	}
	why := err
	d.kernel, d.uapi = false, UAPIName(d.name)
	us, err := openUserspace(d.name, d.uapi, b.mtu, b.log)
	if err != nil {
		return nil, fmt.Errorf("wireguard: the kernel has no WireGuard (%v) and the userspace device failed: %w", why, err)
	}
	d.us = us
	l, err := b.nl.LinkByName(d.name)
	if err != nil {
		us.Close()
		d.us = nil
		return nil, fmt.Errorf("wireguard: look up created %s: %w", d.name, err)
	}
	b.log.Info("wireguard: the kernel has no WireGuard module; running it in userspace",
		"device", d.name, "index", l.Attrs().Index, "port", d.port, "mtu", b.mtu,
		"uapi", SocketDir+"/"+d.uapi+".sock", "batch", us.dev.BatchSize(), "kernel_error", why)
	return l, nil
}

// Configure puts our subnet's address (/32, /128) on the devices and a
// route for the whole network through each, and returns the MTU.
// Equivalent to:
//
//	ip addr replace 10.5.72.0/32 dev flannel-wg
//	ip route replace 10.5.0.0/16 dev flannel-wg scope link
func (b *Backend) Configure(ctx context.Context, own lease.Lease) (int, error) {
	if err := b.ready(); err != nil {
		return 0, err
	}
	if b.v4 && (!own.Subnet.IsValid() || !b.nets[0].Contains(own.Subnet.Addr())) {
		return 0, fmt.Errorf("wireguard: own subnet %v is not inside network %s", own.Subnet, b.nets[0])
	}
	b.own = own
	for _, d := range b.devs {
		if err := b.ensureAddrs(d); err != nil {
			return 0, err
		}
	}
	return b.mtu, nil
}

// addrs returns the address and network route of each family device d
// carries.
func (b *Backend) addrs(d *wgDev) (addrs, routes []netip.Prefix) {
	for _, n := range b.nets {
		switch {
		case n.Addr().Is4() && d.v4 && b.own.Subnet.IsValid():
			addrs = append(addrs, netip.PrefixFrom(b.own.Subnet.Addr(), 32))
		case n.Addr().Is6() && d.v6 && b.own.Subnet6.IsValid():
			addrs = append(addrs, netip.PrefixFrom(b.own.Subnet6.Addr(), 128))
		default:
			continue
		}
		routes = append(routes, n)
	}
	return addrs, routes
}

func (b *Backend) ensureAddrs(d *wgDev) error {
	l, err := b.nl.LinkByIndex(d.index)
	if err != nil {
		return fmt.Errorf("wireguard: look up %s: %w", d.name, err)
	}
	want, routes := b.addrs(d)
	have, err := route.Dump(func() ([]netlink.Addr, error) { return b.nl.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("wireguard: list addresses of %s: %w", d.name, err)
	}
	var got []netip.Prefix
	for _, a := range have {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		got = append(got, p)
		if !slices.Contains(want, p) && slices.ContainsFunc(b.nets, func(n netip.Prefix) bool { return n.Contains(p.Addr()) }) {
			if err := b.nl.AddrDel(l, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("wireguard: delete stale address %s from %s: %w", p, d.name, err)
			}
		}
	}
	for _, w := range want {
		if slices.Contains(got, w) {
			continue
		}
		if err := b.nl.AddrAdd(l, &netlink.Addr{IPNet: route.IPNet(w)}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("wireguard: add address %s to %s: %w", w, d.name, err)
		}
	}
	for _, n := range routes {
		r := &netlink.Route{LinkIndex: d.index, Dst: route.IPNet(n), Scope: netlink.SCOPE_LINK}
		if err := b.nl.RouteReplace(r); err != nil {
			return fmt.Errorf("wireguard: route %s dev %s: %w", n, d.name, err)
		}
	}
	return nil
}

// Sync makes each device's peers match the leases.
func (b *Backend) Sync(ctx context.Context, peers []lease.Lease) error {
	if err := b.ready(); err != nil {
		return err
	}
	b.peers = slices.Clone(peers)
	return b.apply()
}

// apply sends each device the changes from what it holds to what the last
// Sync's peers make, then starts a handshake with each new peer.
func (b *Backend) apply() error {
	b.skipped = map[string]string{}
	defer func() { b.warned, b.skipped = b.skipped, nil }()
	skip := func(l lease.Lease, problem string) {
		k := l.Key()
		if _, seen := b.skipped[k]; seen {
			return // the other device of a pair has the same problem
		}
		b.skipped[k] = problem
		if b.warned[k] != problem {
			b.log.Warn("wireguard: skipping peer", "lease", k, "public_ip", l.Attrs.PublicIP, "reason", problem)
		}
	}
	var errs []error
	for _, d := range b.devs {
		want := desired(d.devPlan, b.cfg, b.peers, b.key.PublicKey(), skip)
		if d.applied == nil {
			dev, err := b.wg.Device(d.uapi)
			if err != nil {
				errs = append(errs, fmt.Errorf("wireguard: read %s: %w", d.name, err))
				continue
			}
			d.applied = fromDevice(dev.Peers)
		}
		cfgs, added := diff(d.applied, want)
		if len(cfgs) == 0 {
			continue
		}
		if err := b.wg.ConfigureDevice(d.uapi, wgtypes.Config{Peers: cfgs}); err != nil {
			d.applied = nil
			errs = append(errs, fmt.Errorf("wireguard: configure %d peers of %s: %w", len(cfgs), d.name, err))
			continue
		}
		d.applied = want
		removed := 0
		for _, c := range cfgs {
			if c.Remove {
				removed++
				b.log.Info("wireguard: removed peer", "device", d.name, "public_key", c.PublicKey)
			}
		}
		b.log.Debug("wireguard: applied peers", "device", d.name, "peers", len(want),
			"added", len(added), "changed", len(cfgs)-len(added)-removed, "removed", removed)
		if err := b.kick(d, added); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// kick makes the device start a handshake with each of keys now, rather
// than at the first packet: a peer that kept a session with our previous
// process (a restart) sends into it, unanswered, until it gives up after
// 15 s, unless we handshake first. Turning the persistent keepalive on
// sends a keepalive at once, in the kernel and in wireguard-go alike; it
// is then set back to the configured interval.
func (b *Backend) kick(d *wgDev, keys []wgtypes.Key) error {
	if len(keys) == 0 || b.cfg.Keepalive > 0 {
		return nil // a configured keepalive was just turned on: sent already
	}
	on, off := time.Second, time.Duration(0)
	var up, down []wgtypes.PeerConfig
	for _, k := range keys {
		up = append(up, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &on})
		down = append(down, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &off})
	}
	if err := b.wg.ConfigureDevice(d.uapi, wgtypes.Config{Peers: up}); err != nil {
		d.applied = nil
		return fmt.Errorf("wireguard: start handshakes on %s: %w", d.name, err)
	}
	if err := b.wg.ConfigureDevice(d.uapi, wgtypes.Config{Peers: down}); err != nil {
		d.applied = nil
		return fmt.Errorf("wireguard: start handshakes on %s: %w", d.name, err)
	}
	return nil
}

// Repair recreates a device deleted behind our back (userspace: the whole
// device; its peers get a handshake at once), restores key, port, MTU,
// addresses and routes, re-reads the peers the device holds and re-applies
// the last Sync, which removes peers nobody leases.
func (b *Backend) Repair(ctx context.Context) error {
	if err := b.ready(); err != nil {
		return err
	}
	for _, d := range b.devs {
		if err := b.ensureDevice(d); err != nil {
			return err
		}
		if b.own.Subnet.IsValid() || b.own.Subnet6.IsValid() {
			if err := b.ensureAddrs(d); err != nil {
				return err
			}
		}
	}
	return b.apply()
}

func (b *Backend) ready() error {
	switch {
	case b.closed:
		return errors.New("wireguard: backend is closed")
	case b.nl == nil || len(b.devs) == 0:
		return errors.New("wireguard: Init has not succeeded")
	}
	return nil
}

// Close stops the userspace devices (their TUNs vanish with them) and
// waits for their goroutines, and releases the handles. Kernel devices
// stay with their peers and sessions, so a restart adopts them.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.closeAll()
	return nil
}

func (b *Backend) closeAll() {
	for _, d := range b.devs {
		if d.us != nil {
			d.us.Close()
			d.us = nil
		}
	}
	if b.wg != nil {
		b.wg.Close()
		b.wg = nil
	}
	if b.nl != nil {
		b.nl.Close()
	}
}

// userspace is a wireguard-go device, its TUN and its UAPI socket.
type userspace struct {
	dev  *device.Device
	uapi *uapiServer
}

// openUserspace creates the TUN named name (with GSO/GRO offloads where
// the kernel has them), a wireguard-go device on it with the batched UDP
// bind, and its UAPI socket, all in the calling thread's namespace.
func openUserspace(name, uapiName string, mtu int, log *slog.Logger) (*userspace, error) {
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create TUN %s: %w", name, err)
	}
	l := log.With("device", name)
	logger := &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug("wireguard-go: " + fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) { l.Warn("wireguard-go: " + fmt.Sprintf(format, args...)) },
	}
	dev := device.NewDevice(t, conn.NewDefaultBind(), logger) // owns t from here
	us := &userspace{dev: dev}
	us.uapi, err = listenUAPI(SocketDir, uapiName, dev.IpcHandle)
	if err != nil {
		dev.Close()
		return nil, err
	}
	return us, nil
}

// Close stops the UAPI socket and the device and waits for every
// goroutine of both.
func (u *userspace) Close() {
	u.uapi.Close()
	u.dev.Close()
	<-u.dev.Wait()
}

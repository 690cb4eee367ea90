package fastpath

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Pin names of the two links under Config.PinDir (the maps are pinned by
// their own names beside them).
const (
	pinEgress  = "egress"
	pinIngress = "ingress"
	pinXDP     = "xdp"
)

// Datapath is the loaded and attached programs with their maps. Its
// methods are not safe for concurrent use.
type Datapath struct {
	log  *slog.Logger
	cfg  Config
	coll *ebpf.Collection
	// The links: pinned ones outlive the process; Close leaves them.
	egress, ingress link.Link
	// xdp is the XDP program's link on the external interface; nil
	// where the driver has no native XDP (the ingress program then
	// decapsulates alone).
	xdp link.Link
	// adopted says the maps and links came from a previous process.
	adopted bool
	// eps keeps the endpoints map; nil when direct delivery is off.
	eps *endpointWatch
}

// Open loads the programs, writes the config and attaches the programs
// with tcx: egress on cfg.TUNIndex, ingress on cfg.ExtIndex. With a
// PinDir, maps and links that a previous flanneld pinned there are
// adopted: the peer maps keep their entries, and the new programs replace
// the old ones in the existing links atomically, so forwarding does not
// pause. The caller brings the peers up to date with SetPeers.
func Open(cfg Config, log *slog.Logger) (*Datapath, error) {
	if !cfg.PublicIP.Is4() {
		return nil, fmt.Errorf("fastpath: public IP %v is not IPv4", cfg.PublicIP)
	}
	if cfg.ExtIndex <= 0 || cfg.TUNIndex <= 0 {
		return nil, fmt.Errorf("fastpath: interface indexes %d (external) and %d (tun) must be set", cfg.ExtIndex, cfg.TUNIndex)
	}
	d := &Datapath{log: log, cfg: cfg}
	if err := d.load(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	d.cfg.mark = newMark()
	if d.adopted {
		var old []byte
		if err := d.coll.Maps[mapConfig].Lookup(uint32(0), &old); err == nil {
			// The old XDP program goes on marking packets until the new
			// one replaces it: keep its mark.
			if m, ok := markFromConfig(old); ok {
				d.cfg.mark = m
			}
			// Before Configure the old programs, still attached, go on
			// decapsulating for the subnet they were given until SetOwn.
			if !d.cfg.Own.IsValid() {
				d.cfg.Own = ownFromConfig(old)
			}
		}
	}
	if err := d.writeConfig(); err != nil {
		return nil, err
	}
	var err error
	if d.egress, err = d.attach(progEgress, pinEgress, cfg.TUNIndex, ebpf.AttachTCXEgress); err != nil {
		return nil, err
	}
	if d.ingress, err = d.attach(progIngress, pinIngress, cfg.ExtIndex, ebpf.AttachTCXIngress); err != nil {
		return nil, err
	}
	if cfg.NoXDP {
		if cfg.PinDir != "" {
			if err := unpinLink(filepath.Join(cfg.PinDir, pinXDP)); err != nil {
				log.Warn("could not detach the XDP program a previous flanneld pinned", "err", err)
			}
		}
	} else if d.xdp, err = d.attachXDP(); err != nil {
		log.Info("decapsulating after GRO: no native XDP on the external interface", "ifindex", cfg.ExtIndex, "err", err)
	}
	if !cfg.BridgeOnly {
		// An optimisation: without it every packet takes the bridge.
		if d.eps, err = startEndpoints(d.coll.Maps[mapEndpoints], d.cfg.Own, log); err != nil {
			log.Warn("direct delivery to containers off", "err", err)
		}
	}
	ok = true
	return d, nil
}

// load creates the collection, adopting pinned maps whose layout matches
// and replacing those that do not (an older flanneld's).
func (d *Datapath) load() error {
	s := spec()
	var opts ebpf.CollectionOptions
	if d.cfg.PinDir != "" {
		if err := os.MkdirAll(d.cfg.PinDir, 0o700); err != nil {
			return fmt.Errorf("fastpath: pin directory: %w", err)
		}
		opts.Maps.PinPath = d.cfg.PinDir
		for name := range s.Maps {
			if _, err := os.Stat(filepath.Join(d.cfg.PinDir, name)); err == nil {
				d.adopted = true
			}
		}
	} else {
		for _, m := range s.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(s, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		d.log.Info("replacing pinned eBPF maps of another layout", "dir", d.cfg.PinDir)
		for name := range s.Maps {
			_ = os.Remove(filepath.Join(d.cfg.PinDir, name))
		}
		d.adopted = false
		coll, err = ebpf.NewCollectionWithOptions(s, opts)
	}
	if err != nil {
		return fmt.Errorf("fastpath: load programs: %w", err)
	}
	d.coll = coll
	return nil
}

func (d *Datapath) writeConfig() error {
	if err := d.coll.Maps[mapConfig].Put(uint32(0), marshalConfig(d.cfg)); err != nil {
		return fmt.Errorf("fastpath: write config: %w", err)
	}
	return nil
}

// attach puts the program on the interface. A pinned link already on
// that interface and hook gets the new program swapped in; a pinned link
// elsewhere (a device deleted and recreated, a changed interface) is
// replaced by a new one. Equivalent to:
//
//	bpftool net attach tcx_egress|tcx_ingress pinned PROG dev DEV
func (d *Datapath) attach(prog, pin string, ifindex int, typ ebpf.AttachType) (link.Link, error) {
	p := d.coll.Programs[prog]
	l, err := d.attachPinned(pin, p, func(l link.Link) bool { return sameTCX(l, ifindex, typ) }, func() (link.Link, error) {
		return link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: p, Attach: typ})
	})
	if err != nil {
		return nil, fmt.Errorf("fastpath: attach %s to ifindex %d: %w", prog, ifindex, err)
	}
	return l, nil
}

// attachPinned returns the link pinned under pin with p swapped in if
// same says it is the one wanted, and otherwise detaches whatever is
// pinned there, makes a new link with attach and pins it.
func (d *Datapath) attachPinned(pin string, p *ebpf.Program, same func(link.Link) bool, attach func() (link.Link, error)) (link.Link, error) {
	path := ""
	if d.cfg.PinDir != "" {
		path = filepath.Join(d.cfg.PinDir, pin)
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			if same(l) {
				if err := l.Update(p); err == nil {
					d.log.Debug("adopted pinned eBPF link", "link", pin)
					return l, nil
				}
			}
			// Stale: detach it, whatever it is attached to.
			_ = l.Unpin()
			_ = l.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			_ = os.Remove(path)
		}
	}
	l, err := attach()
	if err != nil {
		return nil, err
	}
	if path != "" {
		if err := l.Pin(path); err != nil {
			l.Close()
			return nil, fmt.Errorf("pin %s: %w", path, err)
		}
	}
	return l, nil
}

// attachXDP puts the XDP program on the external interface in driver
// mode, adopting a pinned link there as attach does. Generic (skb) mode
// is not tried: it runs after GRO, where the ingress program already
// does the same work.
func (d *Datapath) attachXDP() (link.Link, error) {
	p := d.coll.Programs[progXDP]
	return d.attachPinned(pinXDP, p, func(l link.Link) bool { return sameXDP(l, d.cfg.ExtIndex) }, func() (link.Link, error) {
		return link.AttachXDP(link.XDPOptions{Program: p, Interface: d.cfg.ExtIndex, Flags: link.XDPDriverMode})
	})
}

// unpinLink detaches the link pinned at path and removes the pin; a pin
// that is not a link is removed, and no pin is no error.
func unpinLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return os.Remove(path)
	}
	return errors.Join(l.Unpin(), l.Close())
}

// sameXDP says whether l is an XDP link on this interface.
func sameXDP(l link.Link, ifindex int) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	x := info.XDP()
	return x != nil && int(x.Ifindex) == ifindex
}

// XDP says whether the XDP program decapsulates on the external
// interface.
func (d *Datapath) XDP() bool { return d.xdp != nil }

// sameTCX says whether l is a tcx link of this type on this interface.
// A link whose device was deleted reports ifindex 0.
func sameTCX(l link.Link, ifindex int, typ ebpf.AttachType) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	t := info.TCX()
	return t != nil && int(t.Ifindex) == ifindex && ebpf.AttachType(t.AttachType) == typ
}

// Adopted says whether Open found the maps of a previous process.
func (d *Datapath) Adopted() bool { return d.adopted }

// SetOwn changes our subnet (a new lease).
func (d *Datapath) SetOwn(own netip.Prefix) error {
	d.cfg.Own = own
	if d.eps != nil {
		d.eps.setOwn(own)
	}
	return d.writeConfig()
}

// SetPeers makes the peer maps hold exactly want (subnet → public IP):
// entries are written before stale ones are deleted, so a peer that stays
// is never missing. Only IPv4 subnets and addresses are taken.
func (d *Datapath) SetPeers(want map[netip.Prefix]netip.Addr) error {
	peers, ips := d.coll.Maps[mapPeers], d.coll.Maps[mapPeerIPs]
	wantIPs := make(map[[4]byte]bool, len(want))
	var errs []error
	for p, ip := range want {
		if !p.Addr().Is4() || !ip.Is4() {
			continue
		}
		a := ip.As4()
		wantIPs[a] = true
		if err := peers.Put(lpmKey(p), a); err != nil {
			errs = append(errs, fmt.Errorf("put peer %s: %w", p, err))
		}
	}
	for a := range wantIPs {
		if err := ips.Put(a, uint32(1)); err != nil {
			errs = append(errs, fmt.Errorf("put peer IP %s: %w", netip.AddrFrom4(a), err))
		}
	}
	var stale [][]byte
	var k, v []byte
	it := peers.Iterate()
	for it.Next(&k, &v) {
		// Entries still wanted were rewritten above.
		if p, ok := parseLPMKey(k); !ok || !want[p].IsValid() {
			stale = append(stale, append([]byte(nil), k...))
		}
	}
	if err := it.Err(); err != nil {
		errs = append(errs, fmt.Errorf("list peers: %w", err))
	}
	for _, k := range stale {
		if err := peers.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete peer: %w", err))
		}
	}
	var staleIPs [][4]byte
	var ik [4]byte
	var iv uint32
	iit := ips.Iterate()
	for iit.Next(&ik, &iv) {
		if !wantIPs[ik] {
			staleIPs = append(staleIPs, ik)
		}
	}
	if err := iit.Err(); err != nil {
		errs = append(errs, fmt.Errorf("list peer IPs: %w", err))
	}
	for _, a := range staleIPs {
		if err := ips.Delete(a); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete peer IP: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("fastpath: %w", err)
	}
	return nil
}

// Peers returns what the peer map holds (subnet → public IP).
func (d *Datapath) Peers() (map[netip.Prefix]netip.Addr, error) {
	got := make(map[netip.Prefix]netip.Addr)
	var k, v []byte
	it := d.coll.Maps[mapPeers].Iterate()
	for it.Next(&k, &v) {
		if p, ok := parseLPMKey(k); ok && len(v) == 4 {
			got[p] = netip.AddrFrom4([4]byte(v))
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("fastpath: list peers: %w", err)
	}
	return got, nil
}

// Close releases this process's handles. Pinned maps and links stay, and
// so does the forwarding, for the next flanneld to adopt; without a pin
// directory the programs are detached.
func (d *Datapath) Close() error {
	var errs []error
	if d.eps != nil {
		if err := d.eps.close(); err != nil {
			errs = append(errs, fmt.Errorf("fastpath: empty endpoints: %w", err))
		}
		d.eps = nil
	}
	for _, l := range []link.Link{d.egress, d.ingress, d.xdp} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	d.egress, d.ingress, d.xdp = nil, nil, nil
	if d.coll != nil {
		d.coll.Close()
		d.coll = nil
	}
	return errors.Join(errs...)
}

// Remove detaches the programs and deletes the pins: the network is gone
// and nothing should forward for it any more.
func (d *Datapath) Remove() error {
	var errs []error
	for _, l := range []link.Link{d.egress, d.ingress, d.xdp} {
		if l != nil {
			if err := l.Unpin(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if d.coll != nil {
		for _, m := range d.coll.Maps {
			if m.IsPinned() {
				if err := m.Unpin(); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	errs = append(errs, d.Close())
	if d.cfg.PinDir != "" {
		_ = os.Remove(d.cfg.PinDir) // only if empty
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("fastpath: remove: %w", err)
	}
	return nil
}

// Probe loads the programs without attaching or pinning anything, so the
// caller learns whether this kernel and these privileges accept them
// before it commits to the eBPF datapath.
func Probe() error {
	s := spec()
	for _, m := range s.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(s)
	if err != nil {
		return fmt.Errorf("fastpath: load programs: %w", err)
	}
	coll.Close()
	return nil
}

// PinnedDevice returns the index of the device the egress link pinned in
// dir is attached to: the TUN a previous process forwarded through, which
// the next one reopens. It is 0 when there is none or its device is gone.
func PinnedDevice(dir string) int {
	if dir == "" {
		return 0
	}
	l, err := link.LoadPinnedLink(filepath.Join(dir, pinEgress), nil)
	if err != nil {
		return 0
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil || info.TCX() == nil {
		return 0
	}
	return int(info.TCX().Ifindex)
}

// RemovePinned detaches the programs a previous process pinned in dir and
// deletes its pins: the userspace datapath was chosen this time, and
// nothing must forward beside it.
func RemovePinned(dir string) error {
	if dir == "" {
		return nil
	}
	var errs []error
	for _, name := range []string{pinEgress, pinIngress, pinXDP} {
		errs = append(errs, unpinLink(filepath.Join(dir, name)))
	}
	for name := range spec().Maps {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	_ = os.Remove(dir)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("fastpath: remove pins in %s: %w", dir, err)
	}
	return nil
}

// Check reports whether the programs are still attached where Open put
// them (XDP only if Open attached it): a link detached behind our back (bpftool link detach) or left on
// a deleted and recreated external interface reports another ifindex.
func (d *Datapath) Check() error {
	for _, c := range []struct {
		name    string
		l       link.Link
		ifindex int
		typ     ebpf.AttachType
	}{
		{pinEgress, d.egress, d.cfg.TUNIndex, ebpf.AttachTCXEgress},
		{pinIngress, d.ingress, d.cfg.ExtIndex, ebpf.AttachTCXIngress},
	} {
		if c.l == nil || !sameTCX(c.l, c.ifindex, c.typ) {
			return fmt.Errorf("fastpath: %s program no longer attached to ifindex %d", c.name, c.ifindex)
		}
	}
	if d.xdp != nil && !sameXDP(d.xdp, d.cfg.ExtIndex) {
		return fmt.Errorf("fastpath: %s program no longer attached to ifindex %d", pinXDP, d.cfg.ExtIndex)
	}
	return nil
}

// Counters are what the programs forwarded: inner packets (each segment
// of a super-packet counts) and their bytes.
type Counters struct {
	OutPackets, OutBytes   uint64 // encapsulated to peers
	InPackets, InBytes     uint64 // decapsulated for our subnet
	PeerPackets, PeerBytes uint64 // of those, delivered straight to a container
	XDPPackets, XDPBytes   uint64 // of those, decapsulated in XDP (before GRO)
}

// Counters sums the programs' per-CPU counters. With adopted maps they
// include what the previous process's programs forwarded.
func (d *Datapath) Counters() (Counters, error) {
	type pair struct{ Packets, Bytes uint64 }
	var c Counters
	for key, dst := range map[uint32][2]*uint64{
		statOut:  {&c.OutPackets, &c.OutBytes},
		statIn:   {&c.InPackets, &c.InBytes},
		statPeer: {&c.PeerPackets, &c.PeerBytes},
		statXDP:  {&c.XDPPackets, &c.XDPBytes},
	} {
		var per []pair
		if err := d.coll.Maps[mapStats].Lookup(key, &per); err != nil {
			return Counters{}, fmt.Errorf("fastpath: read counters: %w", err)
		}
		for _, p := range per {
			*dst[0] += p.Packets
			*dst[1] += p.Bytes
		}
	}
	return c, nil
}

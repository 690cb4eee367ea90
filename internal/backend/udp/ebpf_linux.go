package udp

import (
	"fmt"
	"net/netip"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/backend/udp/fastpath"
	"github.com/flannel-go/flannel/internal/ethtool"
)

// The eBPF datapath (package fastpath) runs beside the userspace one: its
// programs forward known peers' packets in the kernel and pass everything
// else (unknown subnets, GSO packets on receive, anything malformed) on to
// the TUN and the socket, where the userspace loops handle it as before.

// nicTypes are the external device kinds on which the kernel segments and
// checksums our UDP-encapsulated GSO packets before they reach a peer. A
// virtual device (veth, bridge, macvlan, tun, …) hands them to the other
// side whole, where neither our ingress program nor an upstream peer's
// socket could take them apart.
var nicTypes = []string{"device", "bond", "team", "vlan"}

// chooseEBPF decides, before the socket is opened, whether to try the
// eBPF datapath; auto mode tries it where autoEBPF allows (falling back
// to userspace when it then fails to start) and logs once why not.
func (b *Backend) chooseEBPF() bool {
	switch b.mode {
	case datapathUserspace:
		return false
	case datapathEBPF:
		return true
	}
	return b.autoEBPF()
}

// autoEBPF is what auto mode checks before it tries the eBPF datapath;
// it logs why not.
func (b *Backend) autoEBPF() bool {
	why := func(reason string, args ...any) bool {
		b.log.Info("forwarding in userspace: "+reason, append(args, "set", DatapathEnv+"=ebpf to insist")...)
		return false
	}
	link, err := b.nl.LinkByName(b.ext.Name)
	if err != nil {
		return why("cannot inspect the external interface", "interface", b.ext.Name, "err", err)
	}
	if t := link.Type(); !slices.Contains(nicTypes, t) {
		return why("the external interface is a virtual "+t+" device, which would pass encapsulated super-packets on unsegmented",
			"interface", b.ext.Name)
	}
	if err := fastpath.Probe(); err != nil {
		return why("eBPF programs do not load here (the in-kernel datapath needs CAP_BPF)", "err", err)
	}
	return true
}

// adoptPinned looks for what a previous flanneld's eBPF datapath left in
// the pin directory. Its TUN, kept alive for the programs, is reopened by
// name, so the programs keep their device; with the eBPF datapath the
// TUN is kept persistent in turn. Without it the pins are removed and the
// TUN goes back to dying with our fd, as upstream's does.
func (b *Backend) adoptPinned(useEBPF bool) {
	if b.pinDir == "" {
		b.pinDir = defaultPinDir()
	}
	if useEBPF && b.pinDir != "" {
		// A bpf filesystem mounted read-only (a unit without the
		// drop-in's ReadWritePaths) still lets the datapath run, only
		// not across a restart.
		if err := os.MkdirAll(b.pinDir, 0o700); err != nil {
			b.log.Warn("eBPF datapath without pins: a restart of flanneld will interrupt traffic", "dir", b.pinDir, "err", err)
			b.pinDir = ""
		}
	}
	if idx := fastpath.PinnedDevice(b.pinDir); idx > 0 {
		if l, err := b.nl.LinkByIndex(idx); err == nil && l.Type() == "tuntap" {
			b.tunName = l.Attrs().Name
			b.log.Info("reopening the device the pinned eBPF datapath forwards through", "device", b.tunName)
		}
	}
	if useEBPF {
		b.persist = b.pinDir != ""
		return
	}
	if err := fastpath.RemovePinned(b.pinDir); err != nil {
		b.log.Warn("could not remove the pinned eBPF datapath", "err", err)
	}
}

// startEBPF loads and attaches the programs for the current TUN, adopting
// pinned ones, and gives them our subnet and the last peer set. It runs
// in the namespace Init ran in.
func (b *Backend) startEBPF() error {
	link, err := b.nl.LinkByName(b.ext.Name)
	if err != nil {
		return fmt.Errorf("udp: find external interface %s: %w", b.ext.Name, err)
	}
	noXDP := b.noXDP
	if !noXDP {
		// XDP decapsulates so that GRO can merge the inner segments;
		// where the device runs no GRO (a veth, by default) it only
		// adds work, and decapsulating after GRO does the same.
		if on, err := ethtool.Feature(b.ext.Name, "rx-gro"); err == nil && !on {
			b.log.Info("not decapsulating in XDP: GRO is off on the external interface", "interface", b.ext.Name)
			noXDP = true
		}
	}
	cfg := fastpath.Config{
		PublicIP:   b.ext.IfaceAddr,
		Port:       b.port,
		ExtIndex:   link.Attrs().Index,
		TUNIndex:   b.ifaceIdx,
		Own:        b.own,
		PinDir:     b.pinDir,
		BridgeOnly: b.bridgeOnly,
		NoXDP:      noXDP,
	}
	fp, err := fastpath.Open(cfg, b.log)
	if err != nil {
		return fmt.Errorf("udp: %w", err)
	}
	if b.fastPeers != nil {
		if err := fp.SetPeers(b.fastPeers); err != nil {
			fp.Close()
			return fmt.Errorf("udp: %w", err)
		}
	}
	b.fast = fp
	b.statsMu.Lock()
	b.fastStats = fp.Counters
	b.statsMu.Unlock()
	deliver := "direct"
	if cfg.BridgeOnly {
		deliver = "bridge"
	}
	b.log.Info("forwarding known peers in the kernel (eBPF)", "adopted", fp.Adopted(), "pins", cfg.PinDir,
		"deliver", deliver, "xdp", fp.XDP())
	return nil
}

// stopEBPF releases the programs; their pins (if any) stay for the next
// process to adopt.
func (b *Backend) stopEBPF() error {
	if b.fast == nil {
		return nil
	}
	b.statsMu.Lock()
	b.fastStats = nil
	b.statsMu.Unlock()
	err := b.fast.Close()
	b.fast = nil
	return err
}

// syncEBPF hands the peer set to the programs' map.
func (b *Backend) syncEBPF(ps []peer) error {
	want := make(map[netip.Prefix]netip.Addr, len(ps))
	for _, p := range ps {
		want[p.subnet] = netip.AddrFrom4(p.ip)
	}
	b.fastPeers = want
	if b.fast == nil {
		return nil
	}
	if err := b.fast.SetPeers(want); err != nil {
		return fmt.Errorf("udp: %w", err)
	}
	return nil
}

// Datapath says which datapath forwards known peers: "ebpf" or
// "userspace".
func (b *Backend) Datapath() string {
	if b.fast != nil {
		return "ebpf"
	}
	return "userspace"
}

// defaultPinDir is where the programs' maps and links are pinned so that
// a restarted flanneld adopts them: /sys/fs/bpf/flannel/udp, with the
// network namespace's inode appended outside the host's namespace (one
// bpf filesystem serves them all) after a "-": bpffs refuses names with a
// dot (EPERM, reserved for its own files). It is "" (nothing pinned) when
// no bpf filesystem is mounted there.
func defaultPinDir() string {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || uint32(st.Type) != unix.BPF_FS_MAGIC {
		return ""
	}
	self, err := nsInode("/proc/thread-self/ns/net")
	if err != nil {
		return ""
	}
	dir := "/sys/fs/bpf/flannel/udp"
	if init, err := nsInode("/proc/1/ns/net"); err != nil || init != self {
		dir = fmt.Sprintf("%s-%d", dir, self)
	}
	return dir
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

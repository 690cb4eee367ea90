package udp

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/backend/udp/fastpath"
)

// removeLeftovers is Info.RemoveLeftovers: a flanneld that ran udp with
// the pinned eBPF datapath left its programs attached (the external
// interface's ingress decapsulates our port's datagrams, flannel0's
// egress encapsulates) and flannel0 persistent, so that a restart would
// not interrupt traffic. Another backend now runs: both go.
func removeLeftovers(log *slog.Logger) error {
	return removeLeftoversIn(defaultPinDir(), log)
}

func removeLeftoversIn(dir string, log *slog.Logger) error {
	if dir == "" {
		return nil
	}
	// The device is found through the pinned link before the pins go.
	idx := fastpath.PinnedDevice(dir)
	if err := fastpath.RemovePinned(dir); err != nil {
		return fmt.Errorf("udp: remove the eBPF datapath a previous flanneld left: %w", err)
	}
	if idx == 0 {
		return nil
	}
	l, err := netlink.LinkByIndex(idx)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("udp: find the device the eBPF datapath forwarded through (ifindex %d): %w", idx, err)
	}
	// Only a TUN of ours: after a netns inode was reused, a stale pin may
	// name an index that is another device now.
	var n int
	if _, err := fmt.Sscanf(l.Attrs().Name, tunPattern, &n); l.Type() != "tuntap" || err != nil {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("udp: delete %s, kept for the eBPF datapath a previous flanneld left: %w", l.Attrs().Name, err)
	}
	log.Info("removed the udp backend's eBPF datapath and device a previous flanneld left", "device", l.Attrs().Name, "pins", dir)
	return nil
}

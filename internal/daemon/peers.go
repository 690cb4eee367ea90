package daemon

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// apply folds a feed update into d.leases. Our own lease stays in the
// set (sync leaves it out): if our subnet is taken over while we hold it,
// the new holder is known once we have moved on.
func (d *Daemon) apply(u lease.Update) {
	if u.Reset {
		d.deps.Metrics.Relist()
		d.leases = make(map[string]lease.Lease, len(u.Leases))
		for _, l := range u.Leases {
			d.leases[l.Key()] = l
		}
		return
	}
	for _, ev := range u.Events {
		d.deps.Metrics.WatchEvent(ev.Type.String())
		if ev.Type == lease.Removed {
			delete(d.leases, ev.Lease.Key())
		} else {
			d.leases[ev.Lease.Key()] = ev.Lease
		}
	}
}

// sync hands the backend the valid peers, and logs each peer that came or
// went.
func (d *Daemon) sync(ctx context.Context) {
	ownKey := d.own.Key()
	peers := make(map[string]lease.Lease, len(d.leases))
	for k, l := range d.leases {
		if k != ownKey {
			peers[k] = l
		}
	}
	valid := make([]lease.Lease, 0, len(peers))
	now := make(map[string]lease.Lease, len(peers))
	overlapped := overlaps(d.net.SubnetLen, peers)
	for k, l := range peers {
		reason := checkPeer(d.net, d.own, d.beInfo, l)
		if reason == "" {
			reason = overlapped[k]
		}
		if reason == "" {
			reason = d.vet(k, l)
		}
		if reason != "" {
			if d.warned[k] != reason {
				d.log.Warn("ignoring lease", "key", k, "reason", reason)
				if d.warned == nil {
					d.warned = map[string]string{}
				}
				d.warned[k] = reason
			}
			continue
		}
		delete(d.warned, k)
		valid = append(valid, l)
		now[k] = l
	}
	for k := range d.warned {
		if _, ok := peers[k]; !ok {
			delete(d.warned, k)
		}
	}
	for k := range d.vetted {
		if _, ok := peers[k]; !ok {
			delete(d.vetted, k)
		}
	}
	slices.SortFunc(valid, func(a, b lease.Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	start := time.Now()
	err := d.be.Sync(ctx, valid)
	d.deps.Metrics.Synced(time.Since(start), err)
	d.deps.Metrics.Peers(len(valid), len(peers)-len(valid))
	if err != nil {
		d.log.Warn("backend sync", "peers", len(valid), "err", err)
	}
	var added, changed, removed []lease.Lease
	for k, l := range now {
		if old, ok := d.applied[k]; !ok {
			added = append(added, l)
		} else if !old.Attrs.Equal(l.Attrs) {
			changed = append(changed, l)
		}
	}
	for k, l := range d.applied {
		if _, ok := now[k]; !ok {
			removed = append(removed, l)
		}
	}
	// One line per peer event, but a summary for a burst (the first sync
	// of a large cluster) so the log stays readable.
	if n := len(added) + len(changed) + len(removed); n > 16 {
		d.log.Info("peers synced", "peers", len(now), "added", len(added), "changed", len(changed), "removed", len(removed))
	} else {
		for _, l := range added {
			d.log.Info("peer added", "subnet", l.Subnet, "public_ip", l.Attrs.PublicIP)
		}
		for _, l := range changed {
			d.log.Info("peer changed", "subnet", l.Subnet, "public_ip", l.Attrs.PublicIP)
		}
		for _, l := range removed {
			d.log.Info("peer removed", "subnet", l.Subnet, "public_ip", l.Attrs.PublicIP)
		}
	}
	d.applied = now
}

// checkPeer says why a peer lease must not become a route, or "".
func checkPeer(nc *netconf.Config, own lease.Lease, be backend.Info, l lease.Lease) string {
	sn := l.Subnet
	switch {
	case !sn.IsValid():
		return "no IPv4 subnet"
	case nc.EnableIPv4 && !(nc.Network.Contains(sn.Addr()) && sn.Bits() >= nc.Network.Bits()):
		return fmt.Sprintf("subnet %s is outside Network %s", sn, nc.Network)
	case own.Subnet.IsValid() && sn.Overlaps(own.Subnet):
		return fmt.Sprintf("subnet %s overlaps this host's subnet %s", sn, own.Subnet)
	case !l.Attrs.PublicIP.IsValid():
		return "no PublicIP"
	case nc.EnableIPv4 && nc.Network.Contains(l.Attrs.PublicIP):
		return fmt.Sprintf("PublicIP %s is inside the overlay Network %s", l.Attrs.PublicIP, nc.Network)
	case l.Attrs.PublicIP == own.Attrs.PublicIP:
		return fmt.Sprintf("PublicIP %s is this host's own", l.Attrs.PublicIP)
	}
	if l.Subnet6.IsValid() && own.Subnet6.IsValid() && l.Subnet6.Overlaps(own.Subnet6) {
		return fmt.Sprintf("subnet %s overlaps this host's subnet %s", l.Subnet6, own.Subnet6)
	}
	// Only backends whose leases carry a type (not udp and alloc, as
	// upstream) filter by type.
	if be.TypedLeases && l.Attrs.BackendType != be.Type {
		return fmt.Sprintf("backend %q, this host runs %q", l.Attrs.BackendType, be.Type)
	}
	return ""
}

// vetted is the backend's verdict on one lease value.
type vetted struct {
	attrs  lease.Attrs
	reason string
}

// vet returns the backend's objection to peer l (Info.ValidatePeer: vxlan
// decodes its BackendData), asking again only when l's value changed, so
// a sync of thousands of unchanged peers decodes nothing.
func (d *Daemon) vet(k string, l lease.Lease) string {
	if d.beInfo.ValidatePeer == nil {
		return ""
	}
	if v, ok := d.vetted[k]; ok && sameAttrs(v.attrs, l.Attrs) {
		return v.reason
	}
	reason := ""
	if err := d.beInfo.ValidatePeer(l); err != nil {
		reason = err.Error()
	}
	if d.vetted == nil {
		d.vetted = map[string]vetted{}
	}
	d.vetted[k] = vetted{attrs: l.Attrs, reason: reason}
	return reason
}

// sameAttrs compares byte for byte, which is cheaper than Attrs.Equal and
// errs only towards asking the backend again.
func sameAttrs(a, b lease.Attrs) bool {
	return a.PublicIP == b.PublicIP && a.PublicIPv6 == b.PublicIPv6 && a.BackendType == b.BackendType &&
		bytes.Equal(a.BackendData, b.BackendData) && bytes.Equal(a.BackendV6Data, b.BackendV6Data)
}

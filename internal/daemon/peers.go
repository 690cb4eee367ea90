package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// handle folds feed updates into the peer set and hands the backend the
// result: the whole set after a re-list (or to a backend that takes no
// changes), else only what changed. The work is proportional to the
// updates, not to the size of the cluster, for a backend.Updater.
func (d *Daemon) handle(ctx context.Context, ups []lease.Update) {
	for _, u := range ups {
		if u.Reset {
			d.deps.Metrics.Relist()
			d.peers.reset(u.Leases)
			d.fullSync = true
			continue
		}
		for _, ev := range u.Events {
			d.deps.Metrics.WatchEvent(ev.Type.String())
			d.peers.apply(ev)
		}
	}
	d.push(ctx)
}

// push applies the peer set's pending changes to the backend.
func (d *Daemon) push(ctx context.Context) {
	pcs := d.peers.flush()
	changes := make([]backend.Change, len(pcs))
	for i, c := range pcs {
		changes[i] = c.Change
	}
	up, incremental := d.be.(backend.Updater)
	if !d.fullSync && len(changes) == 0 {
		return
	}
	start := time.Now()
	var err error
	if incremental && !d.fullSync {
		if err = up.Update(ctx, changes); err != nil {
			d.log.Warn("backend update; syncing every peer instead", "changes", len(changes), "err", err)
			err = d.be.Sync(ctx, d.peers.peers())
		}
	} else {
		bulk(d.peers.peerN, func() { err = d.be.Sync(ctx, d.peers.peers()) })
	}
	d.fullSync = err != nil // a failed sync is retried whole at the next event
	d.deps.Metrics.Synced(time.Since(start), err)
	d.deps.Metrics.Peers(d.peers.peerN, d.peers.ignored())
	if err != nil {
		d.log.Warn("backend sync", "peers", d.peers.peerN, "err", err)
	}
	d.logChanges(pcs)
}

// logChanges writes one line per peer that came, changed or went, or a
// summary for a burst (the first sync of a large cluster), so the log
// stays readable.
func (d *Daemon) logChanges(changes []peerChange) {
	var added, changed, removed int
	for _, c := range changes {
		switch {
		case c.Removed:
			removed++
		case c.was:
			changed++
		default:
			added++
		}
	}
	if len(changes) > 16 {
		d.log.Info("peers synced", "peers", d.peers.peerN, "added", added, "changed", changed, "removed", removed)
		return
	}
	for _, c := range changes {
		what, ip := "peer added", c.Lease.Attrs.PublicIP
		switch {
		case c.Removed:
			what, ip = "peer removed", c.prevIP
		case c.was:
			what = "peer changed"
		}
		d.log.Info(what, "subnet", c.Lease.Subnet, "public_ip", ip)
	}
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

package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/lease"
)

// ownChanger is a lease source that can tell when this host's own lease
// may have become available: the Kubernetes source, when its watch sees
// the node's podCIDR or annotations change.
type ownChanger interface {
	// OwnChanged returns a channel closed at the next such change.
	OwnChanged() <-chan struct{}
}

// ownWatcher is a lease source that can wait for this host's own lease to
// change by itself, without the watch of every lease: the Kubernetes
// source, watching its one node. It serves a flanneld that runs no such
// watch (alloc in Kubernetes mode).
type ownWatcher interface {
	// WatchOwn returns nil at the first change since the last Acquire,
	// or an error (then the retry timer is all there is).
	WatchOwn(ctx context.Context) error
}

// acquire leases a subnet, retrying until it gets one: a full network or
// a podCIDR not yet assigned is reported once and waited out, never a
// reason to exit.
func (d *Daemon) acquire(ctx context.Context, attrs lease.Attrs, prev lease.Prev) error {
	wait := backoff.Backoff{Min: time.Second, Max: 30 * time.Second, Jitter: backoff.UpperHalf}
	oc, _ := d.deps.Source.(ownChanger)
	ow, _ := d.deps.Source.(ownWatcher)
	if d.needsWatch() {
		ow = nil // the watch of every lease tells, through OwnChanged
	}
	var lastErr string
	for {
		// Taken before asking, so a removal or a change while Acquire
		// runs still wakes the wait below.
		freed := d.feed.removal()
		var changed <-chan struct{} // nil: the source cannot tell
		if oc != nil {
			changed = oc.OwnChanged()
		}
		l, err := d.deps.Source.Acquire(ctx, d.net, attrs, prev)
		if err == nil {
			if d.own.Subnet.IsValid() && d.own.Subnet != l.Subnet {
				d.log.Warn("subnet changed; containers on the old subnet must be restarted", "old", d.own.Subnet, "new", l.Subnet)
			}
			d.own = l
			d.deps.Metrics.Acquired()
			d.deps.Metrics.Lease(l.Subnet.String(), l.Attrs.PublicIP.String(), d.beType, l.Expires)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := err.Error()
		if errors.Is(err, lease.ErrNoFreeSubnet) {
			msg = fmt.Sprintf("no free subnet in %s between %s and %s; waiting for one to free up",
				d.net.Network, d.net.SubnetMin, d.net.SubnetMax)
		}
		if msg != lastErr {
			d.log.Error("acquire lease: " + msg)
			lastErr = msg
		}
		// Try again at the next retry, or as soon as what failed may have
		// changed, rather than at a retry that by then may be half a
		// minute away: on a full network when a lease is removed (deleted
		// or expired), so a host waiting for a subnet takes one at once;
		// otherwise when the source says our own lease changed (the node
		// got its podCIDR). The timeout stays as the fallback, e.g. for a
		// config change that widens the range.
		wake := changed
		var wg sync.WaitGroup
		wctx, stop := context.WithCancel(ctx)
		switch {
		case errors.Is(err, lease.ErrNoFreeSubnet):
			wake = freed
		case ow != nil:
			ch := make(chan struct{})
			wake = ch
			wg.Go(func() {
				if ow.WatchOwn(wctx) == nil {
					close(ch)
				}
			})
		}
		t := time.NewTimer(wait.Next())
		select {
		case <-ctx.Done():
		case <-wake:
		case <-t.C:
		}
		t.Stop()
		stop()
		wg.Wait()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// reacquire replaces a lost lease, preferring the same subnet, and
// reconfigures everything if the subnet had to change.
func (d *Daemon) reacquire(ctx context.Context) error {
	old := d.own
	if err := d.acquire(ctx, old.Attrs, lease.Prev{Subnet: old.Subnet, Subnet6: old.Subnet6}); err != nil {
		return err
	}
	if d.own.Subnet != old.Subnet || d.own.Subnet6 != old.Subnet6 {
		return d.configure(ctx)
	}
	return nil
}

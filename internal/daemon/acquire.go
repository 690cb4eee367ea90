package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/lease"
)

// acquire leases a subnet, retrying until it gets one: a full network is
// reported once and waited out, never a reason to exit.
func (d *Daemon) acquire(ctx context.Context, attrs lease.Attrs, prev lease.Prev) error {
	wait := backoff.Backoff{Min: time.Second, Max: 30 * time.Second, Jitter: backoff.UpperHalf}
	var lastErr string
	for {
		// Taken before asking, so a removal while Acquire runs still
		// wakes the wait below.
		freed := d.feed.removal()
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
		pause := wait.Next()
		if !errors.Is(err, lease.ErrNoFreeSubnet) {
			if err := backoff.Sleep(ctx, pause); err != nil {
				return err
			}
			continue
		}
		// A full network: try again as soon as a lease is removed (deleted
		// or expired), so a host waiting for a subnet takes one at once
		// rather than at its next retry, which by then may be half a
		// minute away. The timeout stays as the fallback, for a config
		// change that widens the range.
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-freed:
		case <-t.C:
		}
		t.Stop()
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

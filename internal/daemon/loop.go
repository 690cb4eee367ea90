package daemon

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
)

// loop keeps the lease and applies the feed to the backend until ctx ends;
// it also repairs the datapath and the rules when they drift.
//
// One goroutine (this one) owns the daemon's state. Around it: the
// source's Watch (started by Run), Keep for the current lease, and the
// kernel watcher, each joined before loop returns.
func (d *Daemon) loop(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	kernelChanged := make(chan struct{}, 1)
	if d.deps.WatchKernel != nil {
		wg.Go(func() { d.watchKernel(ctx, kernelChanged) })
	}

	// lost carries the lease a Keep lost, so the loss of a lease already
	// replaced is recognised as stale and ignored.
	lost := make(chan lease.Lease, 4)
	startKeep := func(l lease.Lease) context.CancelFunc {
		kctx, stop := context.WithCancel(ctx)
		wg.Go(func() {
			err := d.deps.Source.Keep(kctx, l, func(nl lease.Lease) {
				d.log.Info("lease renewed", "subnet", nl.Subnet, "expires", nl.Expires.Format(time.RFC3339))
				d.deps.Metrics.Renewed(nl.Expires)
			})
			if errors.Is(err, lease.ErrNotFound) {
				select {
				case lost <- l:
				case <-kctx.Done():
				}
			}
		})
		return stop
	}
	stopKeep := startKeep(d.own)
	defer func() { stopKeep() }()

	repair := time.NewTicker(d.cfg.RepairInterval)
	defer repair.Stop()
	// A deletion in the kernel schedules a repair shortly after (so one
	// `ip` command's burst of deletions is one repair), at most once a
	// second (our own Syncs delete entries too).
	var repairSoon <-chan time.Time
	var lastRepair time.Time
	doRepair := func() {
		lastRepair = time.Now()
		bulk(d.peers.peerN, func() {
			if err := d.be.Repair(ctx); err != nil {
				d.log.Warn("backend repair", "err", err)
				d.deps.Metrics.RepairFailed()
			}
		})
	}
	d.peers = newPeerSet(d.net, d.beInfo, d.own, d.log)
	rulesT := time.NewTicker(d.cfg.RulesResync)
	defer rulesT.Stop()

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.feed.kick:
			d.handle(ctx, d.feed.take())
		case l := <-lost:
			if l.ID != d.own.ID || l.Key() != d.own.Key() {
				continue // a lease already replaced
			}
			d.log.Warn("lease lost: it expired, was deleted or taken over; acquiring again", "subnet", d.own.Subnet)
			d.deps.Metrics.LeaseLost()
			stopKeep()
			if err := d.reacquire(ctx); err != nil {
				return err
			}
			stopKeep = startKeep(d.own)
			d.peers.setOwn(d.own)
			d.fullSync = true
			d.push(ctx)
		case <-kernelChanged:
			if repairSoon == nil {
				repairSoon = time.After(max(200*time.Millisecond, time.Second-time.Since(lastRepair)))
			}
		case <-repairSoon:
			repairSoon = nil
			doRepair()
		case <-repair.C:
			doRepair()
		case <-rulesT.C:
			if changed, err := d.rules.Apply(ctx, d.wantRules()); err != nil {
				d.log.Warn("traffic rules", "err", err)
			} else if changed {
				// masq logs what it repaired.
				d.deps.Metrics.RulesRepaired()
			}
			if d.cfg.BlackholeRoute {
				if err := ensureBlackhole(d.own); err != nil {
					d.log.Warn("blackhole route", "err", err)
				}
			}
		}
	}
}

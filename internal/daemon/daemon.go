// Package daemon is flanneld's agent: it waits for a valid network config,
// leases a subnet, brings up the backend, writes subnet.env, and then keeps
// the datapath equal to the set of peer leases in etcd until its context
// ends. It owns every goroutine it starts.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/masq"
	"github.com/flannel-go/flannel/internal/metrics"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// Config is flanneld's configuration, from flags and FLANNELD_* variables.
type Config struct {
	Prefix          string // etcd prefix, for messages that tell the user what to run
	SubnetFile      string
	RenewMargin     time.Duration
	LeaseTTL        time.Duration
	IPMasq          bool
	FullyRandom     bool // !--ip-masq-fully-random-disable
	ForwardRules    bool
	RulesResync     time.Duration
	BlackholeRoute  bool
	RepairInterval  time.Duration // how often the backend re-checks the kernel
	ConfigRetryBase time.Duration // first wait while the config is missing or invalid
}

// Rules programs masquerade and forward rules; masq.Manager implements it.
type Rules interface {
	Apply(ctx context.Context, r masq.Rules) (changed bool, err error)
	RemoveOther(ctx context.Context) error
}

// Deps are the daemon's collaborators, injected so tests can fake them.
type Deps struct {
	Store    lease.Store
	Backends map[string]backend.Def
	// Ext chooses the external interface; ipv6 says whether an IPv6
	// address is needed too.
	Ext func(ipv6 bool) (iface.ExtIface, error)
	// NewRules returns the rule manager for the config's EnableNFTables.
	NewRules func(nftables bool) (Rules, error)
	// Notify is called once subnet.env is written (sd_notify READY=1).
	Notify func()
	Log    *slog.Logger
	// Metrics is optional; nil records nothing.
	Metrics *metrics.Metrics
	// WatchKernel, optional, calls changed when kernel state the backend
	// may own is deleted, so it is repaired at once (WatchKernelDeletes).
	WatchKernel func(ctx context.Context, changed func()) error
}

// Daemon runs one flanneld.
type Daemon struct {
	cfg   Config
	deps  Deps
	log   *slog.Logger
	ready atomic.Bool

	// Set during start-up, then owned by the run loop.
	net     *netconf.Config
	ext     iface.ExtIface
	be      backend.Backend
	beType  string
	beInfo  backend.Info
	rules   Rules
	own     lease.Lease
	mtu     int
	peers   map[string]lease.Lease // by key; every lease but ours
	applied map[string]lease.Lease // what the backend was last given
	warned  map[string]string      // key → reason last warned about
}

// New returns a daemon; Run starts it.
func New(cfg Config, deps Deps) *Daemon {
	if cfg.RepairInterval == 0 {
		cfg.RepairInterval = 5 * time.Second
	}
	if cfg.ConfigRetryBase == 0 {
		cfg.ConfigRetryBase = time.Second
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = lease.DefaultTTL
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	return &Daemon{cfg: cfg, deps: deps, log: deps.Log}
}

// Ready reports whether subnet.env has been written (/readyz).
func (d *Daemon) Ready() bool { return d.ready.Load() }

// Lease returns the daemon's current lease (zero before it has one). Only
// safe to call from Run's goroutine or after Run returned.
func (d *Daemon) Lease() lease.Lease { return d.own }

// Run starts the daemon and blocks until ctx ends or a fatal error occurs.
// It leaves the lease, devices, routes, rules and subnet.env in place on
// return, so a restart resumes without interrupting traffic.
func (d *Daemon) Run(ctx context.Context) error {
	start := time.Now()
	if err := d.setup(ctx); err != nil {
		return err
	}
	d.log.Info("ready", "subnet", d.own.Subnet, "mtu", d.mtu, "backend", d.beType,
		"interface", d.ext.Name, "public_ip", d.ext.ExtAddr, "startup", time.Since(start).Round(time.Millisecond))
	defer d.be.Close()
	return d.loop(ctx)
}

func (d *Daemon) setup(ctx context.Context) error {
	if err := d.waitConfig(ctx); err != nil {
		return err
	}
	attrs, err := d.be.Init(ctx)
	if err != nil {
		return fmt.Errorf("backend %s: init: %w", d.beType, err)
	}
	var prev lease.Prev
	if env, err := subnetenv.Read(d.cfg.SubnetFile); err == nil {
		prev = lease.Prev{Subnet: env.Subnet.Masked(), Subnet6: env.IPv6Subnet.Masked()}
	} else if !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("ignoring previous subnet file", "path", d.cfg.SubnetFile, "err", err)
	}
	if err := d.acquire(ctx, attrs, prev); err != nil {
		return err
	}
	if err := d.configure(ctx); err != nil {
		return err
	}
	d.ready.Store(true)
	d.deps.Metrics.Ready(true)
	if d.deps.Notify != nil {
		d.deps.Notify()
	}
	return nil
}

// waitConfig reads the network config until it exists, parses, names a
// known backend whose options are valid, and an external interface is
// found. Each distinct problem is logged once, not on every retry, and
// nothing is leased or written before all of it is right.
func (d *Daemon) waitConfig(ctx context.Context) error {
	var lastProblem string
	wait := backoff.Backoff{Min: d.cfg.ConfigRetryBase, Max: 5 * time.Second}
	for {
		problem, err := d.tryConfig(ctx)
		if err == nil {
			return nil
		}
		if problem != lastProblem {
			d.log.Error(problem)
			lastProblem = problem
		}
		if err := backoff.Sleep(ctx, wait.Next()); err != nil {
			return err
		}
	}
}

func (d *Daemon) tryConfig(ctx context.Context) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	raw, err := d.deps.Store.Config(cctx)
	cancel()
	if errors.Is(err, lease.ErrNoConfig) {
		prefix := d.cfg.Prefix
		if prefix == "" {
			prefix = "<prefix>"
		}
		return fmt.Sprintf("network config not found in etcd; create it, for example: etcdctl put %s/config %s",
			prefix, `'{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'`), err
	}
	if err != nil {
		return fmt.Sprintf("read network config: %v", err), err
	}
	nc, err := netconf.Parse(raw)
	if err != nil {
		return fmt.Sprintf("invalid network config: %v", err), err
	}
	def, ok := d.deps.Backends[nc.BackendType]
	if !ok {
		err := fmt.Errorf("config: Backend.Type %q is not a known backend (known: %s)", nc.BackendType, d.knownBackends())
		return err.Error(), err
	}
	ext, err := d.deps.Ext(nc.EnableIPv6)
	if err != nil {
		return fmt.Sprintf("external interface: %v", err), err
	}
	be, err := def.New(backend.Config{Options: nc.Backend, Network: nc, Ext: ext, Log: d.log})
	if err != nil {
		return fmt.Sprintf("invalid network config: backend %s: %v", nc.BackendType, err), err
	}
	rules, err := d.deps.NewRules(nc.EnableNFTables)
	if err != nil {
		return fmt.Sprintf("traffic rules: %v", err), err
	}
	d.net, d.ext, d.be, d.beType, d.beInfo, d.rules = nc, ext, be, nc.BackendType, def.Info, rules
	return "", nil
}

func (d *Daemon) knownBackends() string {
	names := make([]string, 0, len(d.deps.Backends))
	for n := range d.deps.Backends {
		names = append(names, n)
	}
	slices.Sort(names)
	return fmt.Sprint(names)
}

// acquire leases a subnet, retrying until it gets one: a full network is
// reported once and waited out, never a reason to exit.
func (d *Daemon) acquire(ctx context.Context, attrs lease.Attrs, prev lease.Prev) error {
	wait := backoff.Backoff{Min: time.Second, Max: 30 * time.Second, Jitter: backoff.UpperHalf}
	var lastErr string
	for {
		l, err := lease.Acquire(ctx, d.deps.Store, d.net, attrs, prev, d.cfg.LeaseTTL, d.log)
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
		pause := backoff.Sleep
		if errors.Is(err, lease.ErrNoFreeSubnet) {
			pause = d.waitFree
		}
		if err := pause(ctx, wait.Next()); err != nil {
			return err
		}
	}
}

// waitFree waits up to max for a subnet to free up on a full network. It
// returns as soon as a lease is removed (deleted, or expired), so a host
// waiting for a subnet takes one at once rather than at its next retry,
// which by then may be half a minute away. The timeout stays as the
// fallback: for a config change that widens the range, and for a removal
// just before the listing here.
func (d *Daemon) waitFree(ctx context.Context, max time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	if _, rev, err := d.deps.Store.Leases(wctx); err == nil {
		_ = d.deps.Store.Watch(wctx, rev, func(evs []lease.Event) {
			for _, e := range evs {
				if e.Type == lease.Removed {
					cancel()
				}
			}
		})
	}
	<-wctx.Done()
	return ctx.Err()
}

// configure applies our lease to the backend and the rules, and writes
// subnet.env. It runs at start and again if the lease had to be replaced.
func (d *Daemon) configure(ctx context.Context) error {
	mtu, err := d.be.Configure(ctx, d.own)
	if err != nil {
		return fmt.Errorf("backend %s: configure %s: %w", d.beType, d.own.Subnet, err)
	}
	d.mtu = mtu
	if err := d.rules.RemoveOther(ctx); err != nil {
		d.log.Warn("remove the other rule implementation's flannel rules", "err", err)
	}
	if _, err := d.rules.Apply(ctx, d.wantRules()); err != nil {
		return fmt.Errorf("traffic rules: %w", err)
	}
	env := subnetenv.Env{MTU: mtu, IPMasq: d.cfg.IPMasq}
	if d.net.EnableIPv4 {
		env.Network, env.Subnet = d.net.Network, subnetenv.SubnetAddr(d.own.Subnet)
	}
	if d.net.EnableIPv6 && d.own.Subnet6.IsValid() {
		env.IPv6Network, env.IPv6Subnet = d.net.IPv6Network, subnetenv.SubnetAddr(d.own.Subnet6)
	}
	if err := subnetenv.Write(d.cfg.SubnetFile, env); err != nil {
		return fmt.Errorf("write %s: %w", d.cfg.SubnetFile, err)
	}
	if d.cfg.BlackholeRoute {
		if err := ensureBlackhole(d.own); err != nil {
			d.log.Warn("blackhole route", "err", err)
		}
	}
	return nil
}

func (d *Daemon) wantRules() masq.Rules {
	r := masq.Rules{Masq: d.cfg.IPMasq, FullyRandom: d.cfg.FullyRandom, Forward: d.cfg.ForwardRules}
	if d.net.EnableIPv4 {
		r.Network, r.Subnet = d.net.Network, d.own.Subnet
	}
	if d.net.EnableIPv6 && d.own.Subnet6.IsValid() {
		r.Network6, r.Subnet6 = d.net.IPv6Network, d.own.Subnet6
	}
	return r
}

// update is what the watcher hands the run loop: a full listing (after
// start or a compaction) or a batch of changes.
type update struct {
	snapshot []lease.Lease
	reset    bool
	events   []lease.Event
}

func (d *Daemon) loop(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	updates := make(chan update, 64)
	wg.Go(func() { d.watch(ctx, updates) })
	kernelChanged := make(chan struct{}, 1)
	if d.deps.WatchKernel != nil {
		wg.Go(func() { d.watchKernel(ctx, kernelChanged) })
	}

	// lost carries the lease a Keep lost, so a loss the watch already
	// handled (and replaced) is recognised as stale and ignored.
	lost := make(chan lease.Lease, 4)
	keepCtx, stopKeep := context.WithCancel(ctx)
	startKeep := func(kctx context.Context, l lease.Lease) {
		wg.Go(func() {
			err := lease.Keep(kctx, d.deps.Store, l, d.cfg.RenewMargin, d.log, func(nl lease.Lease) {
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
	}
	startKeep(keepCtx, d.own)
	// replace gives up our lost lease and its Keep, and leases again.
	replace := func(why string) error {
		d.log.Warn(why, "subnet", d.own.Subnet)
		d.deps.Metrics.LeaseLost()
		stopKeep()
		if err := d.reacquire(ctx); err != nil {
			return err
		}
		keepCtx, stopKeep = context.WithCancel(ctx)
		startKeep(keepCtx, d.own)
		return nil
	}

	repair := time.NewTicker(d.cfg.RepairInterval)
	defer repair.Stop()
	// A deletion in the kernel schedules a repair shortly after (so one
	// `ip` command's burst of deletions is one repair), at most once a
	// second (our own Syncs delete entries too).
	var repairSoon <-chan time.Time
	var lastRepair time.Time
	doRepair := func() {
		lastRepair = time.Now()
		if err := d.be.Repair(ctx); err != nil {
			d.log.Warn("backend repair", "err", err)
			d.deps.Metrics.RepairFailed()
		}
	}
	resync := d.cfg.RulesResync
	if resync <= 0 {
		resync = 5 * time.Second
	}
	rulesT := time.NewTicker(resync)
	defer rulesT.Stop()

	d.peers = map[string]lease.Lease{}
	for {
		select {
		case <-ctx.Done():
			stopKeep()
			return nil
		case u := <-updates:
			ownLost := d.apply(u)
			// Drain what else is queued so a burst becomes one Sync.
			for drained := false; !drained; {
				select {
				case u := <-updates:
					ownLost = d.apply(u) || ownLost
				default:
					drained = true
				}
			}
			if ownLost {
				if err := replace("lease deleted or taken over in etcd; acquiring again"); err != nil {
					return err
				}
			}
			d.sync(ctx)
		case l := <-lost:
			if l.ID != d.own.ID || l.Key() != d.own.Key() {
				continue // a lease already replaced
			}
			if err := replace("lease lost: it expired or was deleted; acquiring again"); err != nil {
				return err
			}
			d.sync(ctx)
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

// apply folds an update into d.peers; it reports whether our own lease is
// gone (deleted, or its subnet now advertised by another host).
func (d *Daemon) apply(u update) (ownLost bool) {
	ownKey := d.own.Key()
	if u.reset {
		d.deps.Metrics.Relist()
		d.peers = make(map[string]lease.Lease, len(u.snapshot))
		found := false
		for _, l := range u.snapshot {
			if l.Key() == ownKey {
				found = true
				ownLost = ownLost || !l.Attrs.PublicIP.IsValid() || l.Attrs.PublicIP != d.own.Attrs.PublicIP
				continue
			}
			d.peers[l.Key()] = l
		}
		return ownLost || !found
	}
	for _, ev := range u.events {
		d.deps.Metrics.WatchEvent(ev.Type.String())
		k := ev.Lease.Key()
		if k == ownKey {
			// The last event for our key decides: a delete followed by our
			// own re-creation in the same batch is not a loss.
			ownLost = ev.Type == lease.Removed || ev.Lease.Attrs.PublicIP != d.own.Attrs.PublicIP ||
				(ev.Lease.ID != 0 && d.own.ID != 0 && ev.Lease.ID != d.own.ID)
			continue
		}
		if ev.Type == lease.Removed {
			delete(d.peers, k)
		} else {
			d.peers[k] = ev.Lease
		}
	}
	return ownLost
}

// reacquire replaces a lost lease, preferring the same subnet, and
// reconfigures everything if the subnet had to change.
func (d *Daemon) reacquire(ctx context.Context) error {
	old := d.own
	attrs := old.Attrs
	if err := d.acquire(ctx, attrs, lease.Prev{Subnet: old.Subnet, Subnet6: old.Subnet6}); err != nil {
		return err
	}
	if d.own.Subnet != old.Subnet || d.own.Subnet6 != old.Subnet6 {
		delete(d.peers, d.own.Key())
		return d.configure(ctx)
	}
	return nil
}

// sync hands the backend the valid peers, and logs each peer that came or
// went.
func (d *Daemon) sync(ctx context.Context) {
	valid := make([]lease.Lease, 0, len(d.peers))
	now := make(map[string]lease.Lease, len(d.peers))
	overlapped := overlaps(d.net.SubnetLen, d.peers)
	for k, l := range d.peers {
		reason := checkPeer(d.net, d.own, d.beInfo, l)
		if reason == "" {
			reason = overlapped[k]
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
		if _, ok := d.peers[k]; !ok {
			delete(d.warned, k)
		}
	}
	slices.SortFunc(valid, func(a, b lease.Lease) int { return a.Subnet.Addr().Compare(b.Subnet.Addr()) })
	start := time.Now()
	err := d.be.Sync(ctx, valid)
	d.deps.Metrics.Synced(time.Since(start), err)
	d.deps.Metrics.Peers(len(valid), len(d.peers)-len(valid))
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

// watch lists and watches leases for the run loop until ctx ends; it
// re-lists after a compaction and backs off while etcd is unreachable.
func (d *Daemon) watch(ctx context.Context, out chan<- update) {
	send := func(u update) bool {
		select {
		case out <- u:
			return true
		case <-ctx.Done():
			return false
		}
	}
	wait := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: backoff.UpperHalf}
	failing := false
	for ctx.Err() == nil {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		leases, rev, err := d.deps.Store.Leases(lctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.deps.Metrics.EtcdError()
			if !failing {
				d.log.Warn("list leases failed; retrying", "err", err)
				failing = true
			}
			if backoff.Sleep(ctx, wait.Next()) != nil {
				return
			}
			continue
		}
		if failing {
			d.log.Info("lease listing recovered")
			failing = false
		}
		wait.Reset()
		if !send(update{reset: true, snapshot: leases}) {
			return
		}
		err = d.deps.Store.Watch(ctx, rev, func(evs []lease.Event) { send(update{events: evs}) })
		if errors.Is(err, lease.ErrCompacted) {
			d.log.Warn("lease watch fell behind etcd compaction; re-listing")
			continue
		}
		if ctx.Err() == nil && err != nil {
			d.deps.Metrics.EtcdError()
			d.log.Warn("lease watch ended; re-listing", "err", err)
			if backoff.Sleep(ctx, backoff.UpperHalf(time.Second)) != nil {
				return
			}
		}
	}
}

// PeerAddrs returns the sorted subnets of the peers the backend was last
// given (for status output and tests).
func (d *Daemon) PeerAddrs() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(d.applied))
	for _, l := range d.applied {
		out = append(out, l.Subnet)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// watchKernel runs Deps.WatchKernel until ctx ends, restarting it when the
// kernel's notifications stop.
func (d *Daemon) watchKernel(ctx context.Context, changed chan<- struct{}) {
	kick := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	for ctx.Err() == nil {
		if err := d.deps.WatchKernel(ctx, kick); err != nil {
			d.log.Debug("kernel change notifications; restarting", "err", err)
			kick() // something may have been missed
		}
		if backoff.Sleep(ctx, time.Second) != nil {
			return
		}
	}
}

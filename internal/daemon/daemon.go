// Package daemon is flanneld's agent: it waits for a valid network config,
// leases a subnet, brings up the backend, writes subnet.env, and then keeps
// the datapath equal to the set of peer leases until its context ends. It
// knows its lease source (etcd or Kubernetes) and its backends only
// through their interfaces, and owns every goroutine it starts.
//
// The files split it by concern: config.go waits for a usable config,
// acquire.go leases a subnet and configure.go applies it (backend, rules,
// subnet.env); feed.go buffers the source's one lease feed, peers.go folds
// it into the peer set handed to the backend, and loop.go runs it all.
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
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/masq"
	"github.com/flannel-go/flannel/internal/metrics"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// Config is flanneld's configuration, from flags and FLANNELD_* variables.
type Config struct {
	SubnetFile      string
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
	// Source is where the config and the leases come from.
	Source   lease.Source
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
	feed  *feed

	// Set during start-up, then owned by the run loop.
	net      *netconf.Config
	ext      iface.ExtIface
	be       backend.Backend
	beType   string
	beInfo   backend.Info
	rules    Rules
	own      lease.Lease
	mtu      int
	peers    *peerSet // nil until the lease is acquired
	fullSync bool     // the backend must get the whole set next
}

// New returns a daemon; Run starts it.
func New(cfg Config, deps Deps) *Daemon {
	if cfg.RepairInterval == 0 {
		cfg.RepairInterval = 5 * time.Second
	}
	if cfg.ConfigRetryBase == 0 {
		cfg.ConfigRetryBase = time.Second
	}
	if cfg.RulesResync <= 0 {
		cfg.RulesResync = 5 * time.Second
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	return &Daemon{cfg: cfg, deps: deps, log: deps.Log, feed: newFeed(), fullSync: true}
}

// Ready reports whether subnet.env has been written (/readyz).
func (d *Daemon) Ready() bool { return d.ready.Load() }

// Lease returns the daemon's current lease (zero before it has one). Only
// safe to call from Run's goroutine or after Run returned.
func (d *Daemon) Lease() lease.Lease { return d.own }

// PeerAddrs returns the sorted subnets of the peers the backend was last
// given (for status output and tests). Only safe to call from Run's
// goroutine or after Run returned.
func (d *Daemon) PeerAddrs() []netip.Prefix {
	if d.peers == nil {
		return nil
	}
	out := make([]netip.Prefix, 0, d.peers.peerN)
	for _, l := range d.peers.peers() {
		out = append(out, l.Subnet)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// Run starts the daemon and blocks until ctx ends or a fatal error occurs.
// It leaves the lease, devices, routes, rules and subnet.env in place on
// return, so a restart resumes without interrupting traffic.
func (d *Daemon) Run(ctx context.Context) error {
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	if err := d.waitConfig(ctx); err != nil {
		return err
	}
	// The one watch of the leases starts before the lease is taken:
	// acquiring on a full network waits for a removal in it, and Keep
	// learns of our own lease's fate from it. (Not before the config is
	// read: with --etcd-api=auto the config decides which keyspace to
	// watch.)
	if d.needsWatch() {
		wg.Go(func() { _ = d.deps.Source.Watch(ctx, d.feed.push) })
	} else {
		d.log.Info("not watching the other hosts' leases: the backend forwards to no peer", "backend", d.beType)
	}
	if err := d.setup(ctx); err != nil {
		return err
	}
	d.log.Info("ready", "subnet", d.own.Subnet, "mtu", d.mtu, "backend", d.beType,
		"interface", d.ext.Name, "public_ip", d.ext.ExtAddr, "startup", time.Since(start).Round(time.Millisecond))
	defer d.be.Close()
	return d.loop(ctx)
}

// peersOnlyWatcher is a lease source whose Watch serves only the set of
// peers: Acquire and Keep do their work without it (the Kubernetes source:
// the controller-manager, not the watched set, assigns the subnet, and
// Keep reads its own node when no Watch runs).
type peersOnlyWatcher interface {
	WatchOnlyForPeers() bool
}

// removeLeftovers lets every other backend remove what it keeps across
// restarts, as after a change of Backend.Type. A failure is logged, not
// fatal: our own backend can still run.
func (d *Daemon) removeLeftovers() {
	for typ, def := range d.deps.Backends {
		if typ == d.beType || def.Info.RemoveLeftovers == nil {
			continue
		}
		if err := def.Info.RemoveLeftovers(d.log); err != nil {
			d.log.Warn("could not remove what a previous flanneld's backend left", "backend", typ, "err", err)
		}
	}
}

// needsWatch says whether Run must watch the leases: unless the backend
// has no use for peers and the source's Watch serves nothing else, as
// with alloc in Kubernetes mode, where a watch would cost every node an
// informer on every other node for nothing. (With etcd the watch also
// serves Keep, so alloc hosts still watch there.)
func (d *Daemon) needsWatch() bool {
	p, ok := d.deps.Source.(peersOnlyWatcher)
	return !d.beInfo.NoPeers || !ok || !p.WatchOnlyForPeers()
}

// setup takes the daemon from a usable config to ready: backend, lease,
// configuration, subnet.env.
func (d *Daemon) setup(ctx context.Context) error {
	d.removeLeftovers()
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

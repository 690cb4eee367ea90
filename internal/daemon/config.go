package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// prevAttrser is a lease source that remembers what this host published
// before a restart or reboot (the Kubernetes source: its node's
// annotations).
type prevAttrser interface {
	PrevAttrs(ctx context.Context) (lease.Attrs, error)
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
	raw, err := d.deps.Source.Config(cctx)
	cancel()
	if errors.Is(err, lease.ErrNoConfig) {
		return err.Error(), err // the source says how to create it
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
	var prev lease.Attrs
	if p, ok := d.deps.Source.(prevAttrser); ok {
		if prev, err = p.PrevAttrs(ctx); err != nil {
			return fmt.Sprintf("read what this host published before: %v", err), err
		}
	}
	be, err := def.New(backend.Config{Options: nc.Backend, Network: nc, Ext: ext, Log: d.log, Prev: prev})
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

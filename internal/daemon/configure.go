package daemon

import (
	"context"
	"fmt"

	"github.com/flannel-go/flannel/internal/masq"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

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

package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/netconf"
)

// Prev is the subnets this host held before, as recorded in its old
// subnet.env. Acquire takes them again when they are still free, so a host
// whose lease expired while it was down keeps its pods' addresses.
type Prev struct{ Subnet, Subnet6 netip.Prefix }

// Acquire obtains this host's lease, in upstream's order of preference:
//
//  1. a lease or reservation already carrying want.PublicIP (want.PublicIPv6
//     on an IPv6-only host) that fits cfg: renewed with want as its value.
//     A reservation stays a reservation. Our leases that no longer fit are
//     revoked; reservations never are.
//  2. prev, if it fits and no lease or reservation overlaps it;
//  3. a subnet picked at random among the first 100 free ones.
//
// Losing a race for a subnet to another host (ErrExists), or the reused
// lease vanishing meanwhile (ErrNotFound), starts a new round after a short
// jittered pause; upstream exits there instead. Acquire gives up only when
// ctx ends, on a store error (returned as is, wrapped), or when no subnet is
// free (an error wrapping ErrNoFreeSubnet): the caller logs and retries.
func Acquire(ctx context.Context, s Store, cfg *netconf.Config, want Attrs, prev Prev, ttl time.Duration, log *slog.Logger) (Lease, error) {
	return acquire(ctx, s, listAll(s), cfg, want, prev, ttl, log)
}

// lister returns the leases Acquire chooses among: a listing of the
// store, made anew for each round.
type lister func(ctx context.Context) ([]Lease, error)

// listAll lists the store on every call.
func listAll(s Store) lister {
	return func(ctx context.Context) ([]Lease, error) {
		ls, _, err := s.Leases(ctx)
		return ls, err
	}
}

func acquire(ctx context.Context, s Store, list lister, cfg *netconf.Config, want Attrs, prev Prev, ttl time.Duration, log *slog.Logger) (Lease, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !cfg.EnableIPv4 {
		// Keys are <ipv4>-<len>[&<ipv6>-<len>]: the IPv4 part is mandatory.
		return Lease{}, errors.New("lease: acquire: an IPv6-only network cannot be stored (the subnet key needs an IPv4 subnet)")
	}
	delay := backoff.Backoff{Min: 20 * time.Millisecond, Max: time.Second, Jitter: backoff.Within10}
	for {
		l, err := acquireOnce(ctx, s, list, cfg, want, prev, ttl, log)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, ErrExists) && !errors.Is(err, ErrNotFound) {
			return Lease{}, err
		}
		log.Debug("lost a race for a subnet; trying again", "err", err)
		if err := backoff.Sleep(ctx, delay.Next()); err != nil {
			return Lease{}, fmt.Errorf("lease: acquire: %w", err)
		}
	}
}

func acquireOnce(ctx context.Context, s Store, list lister, cfg *netconf.Config, want Attrs, prev Prev, ttl time.Duration, log *slog.Logger) (Lease, error) {
	leases, err := list(ctx)
	if err != nil {
		return Lease{}, fmt.Errorf("lease: acquire: %w", err)
	}

	// 1. Reuse what is already ours, reservations first.
	var mine []Lease
	others := make([]Lease, 0, len(leases))
	for _, l := range leases {
		if sameHost(l.Attrs, want) {
			mine = append(mine, l)
		} else {
			others = append(others, l)
		}
	}
	slices.SortStableFunc(mine, func(a, b Lease) int {
		switch {
		case a.Reserved() == b.Reserved():
			return 0
		case a.Reserved():
			return -1
		}
		return 1
	})
	for _, l := range mine {
		if fitsConfig(cfg, l) {
			nl := l
			nl.Attrs = want
			r, err := s.Renew(ctx, nl, ttl)
			if err != nil {
				return Lease{}, fmt.Errorf("lease: acquire: reuse %s: %w", l, err)
			}
			log.Info("reusing lease", "subnet", r.Subnet, "subnet6", r.Subnet6, "reserved", r.Reserved())
			return r, nil
		}
		if l.Reserved() {
			log.Warn("reservation for this host does not fit the network config; ignoring it", "key", l.Key())
			others = append(others, l)
			continue
		}
		log.Info("revoking this host's lease: it no longer fits the network config", "key", l.Key())
		if err := s.Revoke(ctx, l); err != nil && !errors.Is(err, ErrNotFound) {
			return Lease{}, fmt.Errorf("lease: acquire: %w", err)
		}
	}

	// 2. and 3.: a new lease, on the previous subnets if they are free.
	taken := make([]netip.Prefix, 0, 2*len(others))
	for _, l := range others {
		taken = append(taken, l.Subnet, l.Subnet6)
	}
	sn, err := choose(prev.Subnet, Fits(cfg, prev.Subnet), taken, log, func() (netip.Prefix, error) {
		return PickFree(nil, cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, taken)
	})
	if err != nil {
		return Lease{}, fmt.Errorf("lease: acquire: %w", err)
	}
	var sn6 netip.Prefix
	if cfg.EnableIPv6 {
		sn6, err = choose(prev.Subnet6, Fits6(cfg, prev.Subnet6), taken, log, func() (netip.Prefix, error) {
			return PickFree(nil, cfg.IPv6Network, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax, taken)
		})
		if err != nil {
			return Lease{}, fmt.Errorf("lease: acquire: %w", err)
		}
	}
	l, err := s.Create(ctx, Lease{Subnet: sn, Subnet6: sn6, Attrs: want}, ttl)
	if err != nil {
		return Lease{}, fmt.Errorf("lease: acquire: %w", err)
	}
	log.Info("acquired new lease", "subnet", l.Subnet, "subnet6", l.Subnet6)
	return l, nil
}

// choose returns prev when it fits and is free, else pick's subnet.
func choose(prev netip.Prefix, fits bool, taken []netip.Prefix, log *slog.Logger, pick func() (netip.Prefix, error)) (netip.Prefix, error) {
	if !prev.IsValid() {
		return pick()
	}
	switch {
	case !fits:
		log.Info("previous subnet does not fit the network config; picking another", "subnet", prev)
	case slices.ContainsFunc(taken, prev.Overlaps):
		log.Info("previous subnet is taken; picking another", "subnet", prev)
	default:
		return prev, nil
	}
	return pick()
}

// sameHost reports whether a lease value names this host: by public IPv4
// address, or by IPv6 address on a host without one.
func sameHost(a, want Attrs) bool {
	if want.PublicIP.IsValid() {
		return a.PublicIP == want.PublicIP
	}
	return want.PublicIPv6.IsValid() && a.PublicIPv6 == want.PublicIPv6
}

// fitsConfig reports whether l can serve as this host's lease under cfg.
// An IPv6 part is only checked when IPv6 is on: after IPv6 is turned off
// a dual-stack lease keeps serving its IPv4 subnet, as upstream.
func fitsConfig(cfg *netconf.Config, l Lease) bool {
	if !Fits(cfg, l.Subnet) {
		return false
	}
	return !cfg.EnableIPv6 || Fits6(cfg, l.Subnet6)
}

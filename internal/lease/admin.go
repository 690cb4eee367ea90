package lease

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flannel-go/flannel/internal/netconf"
)

// The operator's operations on the lease registry (flannelctl leases):
// listing with expiries, finding a subnet, reserving and releasing.

// AdminStore is what the operator's operations need of a store: both etcd
// stores (through etcdconf.Store) and leasetest.Store have it.
type AdminStore interface {
	Store
	// Lookup reads one lease, by Lease.Key, with its expiry; ErrNotFound
	// when the key is absent.
	Lookup(ctx context.Context, key string) (Lease, error)
	// Reserve turns lease l into a reservation in place, keeping its
	// value; ErrNotFound when the key no longer holds l.
	Reserve(ctx context.Context, l Lease) (Lease, error)
}

// List returns every lease and reservation with its expiry, in subnet
// order. The v3 listing does not carry expiries, so each lease without
// one is looked up (a few at a time); leases that end meanwhile are left
// out.
func List(ctx context.Context, s AdminStore) ([]Lease, error) {
	ls, _, err := s.Leases(ctx)
	if err != nil {
		return nil, err
	}
	sem := make(chan struct{}, 8)
	gone := make([]bool, len(ls))
	errs := make([]error, len(ls))
	var wg sync.WaitGroup
	for i := range ls {
		if ls[i].Reserved() || !ls[i].Expires.IsZero() {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			l, err := s.Lookup(ctx, ls[i].Key())
			switch {
			case errors.Is(err, ErrNotFound):
				gone[i] = true
			case err != nil:
				errs[i] = err
			default:
				ls[i].Expires = l.Expires
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := ls[:0]
	for i, l := range ls {
		if !gone[i] {
			out = append(out, l)
		}
	}
	slices.SortFunc(out, func(a, b Lease) int {
		return cmp.Or(a.Subnet.Addr().Compare(b.Subnet.Addr()), cmp.Compare(a.Subnet.Bits(), b.Subnet.Bits()))
	})
	return out, nil
}

// Find returns the lease or reservation of subnet sn (and, when valid,
// sn6), with its expiry; ErrNotFound when there is none.
func Find(ctx context.Context, s AdminStore, sn, sn6 netip.Prefix) (Lease, error) {
	ls, err := List(ctx, s)
	if err != nil {
		return Lease{}, err
	}
	for _, l := range ls {
		if l.Subnet == sn && (!sn6.IsValid() || l.Subnet6 == sn6) {
			return l, nil
		}
	}
	return Lease{}, fmt.Errorf("no lease or reservation for %s: %w", sn, ErrNotFound)
}

// ParseSubnet accepts a subnet as an operator types it: as CIDR
// (10.5.34.0/24) or as its key (10.5.34.0-24, or
// 10.5.34.0-24&fc00:0:0:1::-64 for dual stack).
func ParseSubnet(s string) (sn, sn6 netip.Prefix, err error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return sn, sn6, fmt.Errorf("subnet %q: %w", s, err)
		}
		if !p.Addr().Is4() {
			return sn, sn6, fmt.Errorf("subnet %q: not IPv4 (for a dual-stack lease give its key, 10.5.34.0-24&fc00:0:0:1::-64)", s)
		}
		if p.Masked() != p {
			return sn, sn6, fmt.Errorf("subnet %q has host bits set; did you mean %s?", s, p.Masked())
		}
		return p, sn6, nil
	}
	return ParseKey(s)
}

// CheckReservation refuses a reservation flanneld would never use: one
// outside the config's subnet range, of the wrong family mix, or for a
// public IP inside the overlay.
func CheckReservation(cfg *netconf.Config, sn, sn6 netip.Prefix, ip netip.Addr) error {
	if !Fits(cfg, sn) {
		return fmt.Errorf("%s does not fit the network config: it must be a /%d inside %s between SubnetMin %s and SubnetMax %s",
			sn, cfg.SubnetLen, cfg.Network, cfg.SubnetMin, cfg.SubnetMax)
	}
	switch {
	case cfg.EnableIPv6 && !sn6.IsValid():
		return fmt.Errorf("the network is dual-stack: give the key with both subnets, e.g. %s&%s-%d",
			MakeKey(sn, netip.Prefix{}), cfg.IPv6SubnetMin, cfg.IPv6SubnetLen)
	case !cfg.EnableIPv6 && sn6.IsValid():
		return fmt.Errorf("IPv6 subnet %s given, but the network config does not enable IPv6", sn6)
	case sn6.IsValid() && !Fits6(cfg, sn6):
		return fmt.Errorf("%s does not fit the network config: it must be a /%d inside %s between IPv6SubnetMin %s and IPv6SubnetMax %s",
			sn6, cfg.IPv6SubnetLen, cfg.IPv6Network, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax)
	case cfg.Network.Contains(ip):
		return fmt.Errorf("public IP %s is inside the overlay network %s: give the host's underlay address", ip, cfg.Network)
	}
	return nil
}

// OverlapError is a reservation refused because another host's lease or
// reservation overlaps it.
type OverlapError struct {
	Subnet netip.Prefix // what was to be reserved
	Held   Lease        // what holds it
}

func (e *OverlapError) Error() string {
	return fmt.Sprintf("%s overlaps %s, %s", e.Subnet, e.Held.Subnet, Describe(e.Held))
}

// Describe names who holds a lease, for messages.
func Describe(l Lease) string {
	ip := ""
	if l.Attrs.PublicIP.IsValid() {
		ip = l.Attrs.PublicIP.String()
	}
	if l.Reserved() {
		return "reserved for " + ip
	}
	s := "leased by " + ip
	if !l.Expires.IsZero() {
		s += ", expires in " + FormatLeft(time.Until(l.Expires))
	}
	return s
}

// FormatLeft formats a lease's remaining time compactly: 23h59m, 4m05s,
// 9s, or "expired".
func FormatLeft(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d <= 0:
		return "expired"
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%ds", int(d.Seconds()))
}

// Reservation is what ReserveSubnet did.
type Reservation struct {
	Lease     Lease          // the reservation as stored
	Already   bool           // it existed already; nothing was written
	Converted bool           // it was the host's own lease, now its reservation
	Elsewhere []netip.Prefix // subnets the host currently leases besides
}

// ReserveSubnet reserves sn (and sn6) for the host with public IP ip: a
// key without TTL that only that host's flanneld takes (upstream's recipe).
// The host's own lease on exactly this subnet becomes the reservation in
// place, keeping its value, so its flanneld keeps using it. It refuses
// (*OverlapError) a subnet another lease or reservation overlaps, and
// (CheckReservation) one flanneld would never use. Should the key change
// meanwhile (the host renewing or re-taking it), it looks again.
func ReserveSubnet(ctx context.Context, s AdminStore, cfg *netconf.Config, sn, sn6 netip.Prefix, ip netip.Addr) (Reservation, error) {
	if err := CheckReservation(cfg, sn, sn6, ip); err != nil {
		return Reservation{}, err
	}
	want := Lease{Subnet: sn, Subnet6: sn6, Attrs: Attrs{PublicIP: ip}}
	for attempt := 0; ; attempt++ {
		ls, err := List(ctx, s)
		if err != nil {
			return Reservation{}, err
		}
		var res Reservation
		var convert *Lease
		for i, l := range ls {
			overlaps := l.Subnet.Overlaps(sn) || (sn6.IsValid() && l.Subnet6.IsValid() && l.Subnet6.Overlaps(sn6))
			switch {
			case overlaps && l.Key() == want.Key() && l.Attrs.PublicIP == ip:
				if l.Reserved() {
					return Reservation{Lease: l, Already: true}, nil
				}
				convert = &ls[i]
			case overlaps:
				return Reservation{}, &OverlapError{Subnet: sn, Held: l}
			case l.Attrs.PublicIP == ip && !l.Reserved():
				res.Elsewhere = append(res.Elsewhere, l.Subnet)
			}
		}
		if convert != nil {
			res.Lease, err = s.Reserve(ctx, *convert)
			res.Converted = true
		} else {
			res.Lease, err = s.Create(ctx, want, 0)
		}
		if (errors.Is(err, ErrExists) || errors.Is(err, ErrNotFound)) && attempt < 3 {
			continue
		}
		if err != nil {
			return Reservation{}, err
		}
		return res, nil
	}
}

package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/etcdstore"
	"github.com/flannel-go/flannel/internal/netconf"
)

const leasesUsage = `usage: flannelctl leases list [-o json]
       flannelctl leases show SUBNET [-o json]
       flannelctl leases reserve SUBNET PUBLICIP
       flannelctl leases release SUBNET
SUBNET is 10.5.34.0/24 or its key 10.5.34.0-24`

func leasesCmd(ctx context.Context, args []string, e opsEnv) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return fmt.Errorf("leases: missing subcommand\n%s", leasesUsage)
	}
	sub := args[0]
	nargs := map[string]int{"list": 0, "show": 1, "reserve": 2, "release": 1}
	want, known := nargs[sub]
	if !known {
		return fmt.Errorf("leases: unknown subcommand %q\n%s", sub, leasesUsage)
	}
	f := newFlags("leases "+sub, e)
	var c conn
	c.register(f)
	var output *string
	if sub == "list" || sub == "show" {
		output = outputFlag(f)
	}
	pos, err := f.parse(args[1:], e.getenv)
	if err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return err
	}
	if output != nil {
		if err := checkOutput(*output); err != nil {
			return err
		}
	}
	if len(pos) != want {
		return fmt.Errorf("leases %s: want %d arguments, got %d\n%s", sub, want, len(pos), leasesUsage)
	}
	s, err := c.open(ctx, e)
	if err != nil {
		return err
	}
	defer s.Close()
	switch sub {
	case "list":
		return leasesList(ctx, s, *output == "json", e.stdout)
	case "show":
		return leasesShow(ctx, s, pos[0], *output == "json", e.stdout)
	case "reserve":
		return leasesReserve(ctx, s, pos[0], pos[1], e.stdout)
	default:
		return leasesRelease(ctx, s, pos[0], e.stdout)
	}
}

// leaseJSON is a lease as `-o json` prints it.
type leaseJSON struct {
	Subnet      string          `json:"subnet"`
	Subnet6     string          `json:"subnet6,omitempty"`
	PublicIP    string          `json:"publicIP"`
	PublicIPv6  string          `json:"publicIPv6,omitempty"`
	Backend     string          `json:"backend"`
	BackendData json.RawMessage `json:"backendData,omitempty"`
	Reserved    bool            `json:"reserved"`
	// Expires and TTLSeconds are absent for reservations.
	Expires    *time.Time `json:"expires,omitempty"`
	TTLSeconds *int64     `json:"ttlSeconds,omitempty"`
	Key        string     `json:"key"`
	LeaseID    string     `json:"leaseID,omitempty"` // etcd lease, hex as etcdctl prints it
}

func toJSON(l lease.Lease, prefix string) leaseJSON {
	j := leaseJSON{
		Subnet:      l.Subnet.String(),
		PublicIP:    addrString(l.Attrs.PublicIP),
		Backend:     l.Attrs.BackendType,
		BackendData: l.Attrs.BackendData,
		Reserved:    l.Reserved(),
		Key:         prefix + "/subnets/" + l.Key(),
	}
	if l.Subnet6.IsValid() {
		j.Subnet6 = l.Subnet6.String()
	}
	if l.Attrs.PublicIPv6.IsValid() {
		j.PublicIPv6 = l.Attrs.PublicIPv6.String()
	}
	if !l.Reserved() {
		j.LeaseID = fmt.Sprintf("%x", l.ID)
		if !l.Expires.IsZero() {
			t := l.Expires.UTC().Round(time.Second)
			ttl := int64(max(0, time.Until(l.Expires).Round(time.Second).Seconds()))
			j.Expires, j.TTLSeconds = &t, &ttl
		}
	}
	return j
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// listLeases lists every lease with its expiry, in subnet order. Leases
// that end while being looked up are left out.
func listLeases(ctx context.Context, s store) ([]lease.Lease, error) {
	ls, _, err := s.Leases(ctx)
	if err != nil {
		return nil, err
	}
	// The v3 listing does not carry expiries: one TimeToLive per lease,
	// a few at a time.
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
			case errors.Is(err, lease.ErrNotFound):
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
	slices.SortFunc(out, func(a, b lease.Lease) int {
		return cmp.Or(a.Subnet.Addr().Compare(b.Subnet.Addr()), cmp.Compare(a.Subnet.Bits(), b.Subnet.Bits()))
	})
	return out, nil
}

func leasesList(ctx context.Context, s store, asJSON bool, w io.Writer) error {
	ls, err := listLeases(ctx, s)
	if err != nil {
		return fmt.Errorf("leases list: %w", err)
	}
	if asJSON {
		out := make([]leaseJSON, 0, len(ls))
		for _, l := range ls {
			out = append(out, toJSON(l, s.Prefix()))
		}
		return writeJSON(w, out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tBACKEND\tEXPIRES\tRESERVED")
	for _, l := range ls {
		sn, ip := l.Subnet.String(), addrString(l.Attrs.PublicIP)
		if l.Subnet6.IsValid() {
			sn += "," + l.Subnet6.String()
		}
		if l.Attrs.PublicIPv6.IsValid() {
			ip = strings.TrimPrefix(ip+","+l.Attrs.PublicIPv6.String(), ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", sn, ip, cmp.Or(l.Attrs.BackendType, "-"), expiresCol(l), yesNo(l.Reserved()))
	}
	return tw.Flush()
}

func expiresCol(l lease.Lease) string {
	switch {
	case l.Reserved():
		return "never"
	case l.Expires.IsZero():
		return "?"
	}
	return fmtLeft(time.Until(l.Expires))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// find returns the lease or reservation for a SUBNET argument.
func find(ctx context.Context, s store, arg string) (lease.Lease, error) {
	sn, sn6, err := parseSubnet(arg)
	if err != nil {
		return lease.Lease{}, err
	}
	ls, err := listLeases(ctx, s)
	if err != nil {
		return lease.Lease{}, err
	}
	for _, l := range ls {
		if l.Subnet == sn && (!sn6.IsValid() || l.Subnet6 == sn6) {
			return l, nil
		}
	}
	return lease.Lease{}, fmt.Errorf("no lease or reservation for %s under %s/subnets/ (`flannelctl leases list` shows them all)", sn, s.Prefix())
}

func leasesShow(ctx context.Context, s store, arg string, asJSON bool, w io.Writer) error {
	l, err := find(ctx, s, arg)
	if err != nil {
		return fmt.Errorf("leases show: %w", err)
	}
	j := toJSON(l, s.Prefix())
	if asJSON {
		return writeJSON(w, j)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("subnet", j.Subnet)
	row("IPv6 subnet", j.Subnet6)
	row("key", j.Key)
	row("public IP", j.PublicIP)
	row("public IPv6", j.PublicIPv6)
	row("backend", cmp.Or(j.Backend, "- (udp or alloc, or not yet taken)"))
	row("backend data", string(j.BackendData))
	if l.Reserved() {
		row("reserved", "yes: a key without TTL; only the host with this public IP takes it")
	} else {
		row("reserved", "no")
		row("etcd lease", j.LeaseID)
		if j.Expires != nil {
			row("expires", fmt.Sprintf("%s (in %s)", j.Expires.Format(time.RFC3339), fmtLeft(time.Until(l.Expires))))
		}
	}
	return tw.Flush()
}

func leasesReserve(ctx context.Context, s store, subnetArg, ipArg string, w io.Writer) error {
	sn, sn6, err := parseSubnet(subnetArg)
	if err != nil {
		return fmt.Errorf("leases reserve: %w", err)
	}
	ip, err := netip.ParseAddr(ipArg)
	if err != nil || !ip.Is4() || ip.IsUnspecified() {
		return fmt.Errorf("leases reserve: public IP %q: not an IPv4 address", ipArg)
	}
	_, cfg, err := readConfig(ctx, s)
	if err != nil {
		return fmt.Errorf("leases reserve: %w", err)
	}
	if err := checkFits(cfg, sn, sn6, ip); err != nil {
		return fmt.Errorf("leases reserve: %w", err)
	}
	want := lease.Lease{Subnet: sn, Subnet6: sn6, Attrs: lease.Attrs{PublicIP: ip}}
	// A host's own lease on exactly this subnet becomes the reservation
	// (upstream's recipe: drop the key's TTL), keeping its value. Should
	// the key change meanwhile (the host renewing or re-taking it), look
	// again.
	for attempt := 0; ; attempt++ {
		ls, err := listLeases(ctx, s)
		if err != nil {
			return fmt.Errorf("leases reserve: %w", err)
		}
		var convert *lease.Lease
		var elsewhere []string
		for i, l := range ls {
			overlaps := l.Subnet.Overlaps(sn) || (sn6.IsValid() && l.Subnet6.IsValid() && l.Subnet6.Overlaps(sn6))
			switch {
			case overlaps && l.Key() == want.Key() && l.Attrs.PublicIP == ip:
				if l.Reserved() {
					fmt.Fprintf(w, "%s is already reserved for %s\n", sn, ip)
					return nil
				}
				convert = &ls[i]
			case overlaps:
				return fmt.Errorf("leases reserve: %s overlaps %s, %s: release that first if it is stale (`flannelctl leases release %s`)",
					sn, l.Subnet, describe(l), l.Subnet)
			case l.Attrs.PublicIP == ip && !l.Reserved():
				elsewhere = append(elsewhere, l.Subnet.String())
			}
		}
		if convert != nil {
			err = toReservation(ctx, s, *convert)
		} else {
			_, err = s.Create(ctx, want, 0)
		}
		if errors.Is(err, lease.ErrExists) && attempt < 3 {
			continue
		}
		if err != nil {
			return fmt.Errorf("leases reserve: %w", err)
		}
		fmt.Fprintf(w, "reserved %s for %s (%s/subnets/%s, no TTL)\n", sn, ip, s.Prefix(), want.Key())
		if convert != nil {
			fmt.Fprintf(w, "it was %s's lease and is now its reservation; its flanneld keeps using it\n", ip)
		}
		if len(elsewhere) > 0 {
			fmt.Fprintf(w, "%s currently holds %s; its flanneld moves to %s when it restarts (restart its containers then)\n", ip, strings.Join(elsewhere, ", "), sn)
		}
		return nil
	}
}

// toReservation turns l, a lease, into a reservation with the same value.
// With v3 that is one transaction, so the key never disappears and the
// host's flanneld, seeing its key taken over, re-takes it as its
// reservation. The v2 store offers no such write: there the key is
// deleted and created again, and a flanneld quick enough to re-take the
// subnet in between makes this return lease.ErrExists (try again).
func toReservation(ctx context.Context, s store, l lease.Lease) error {
	v3, ok := s.(*etcdstore.Store)
	if !ok {
		if err := s.Revoke(ctx, l); err != nil && !errors.Is(err, lease.ErrNotFound) {
			return err
		}
		_, err := s.Create(ctx, lease.Lease{Subnet: l.Subnet, Subnet6: l.Subnet6, Attrs: l.Attrs}, 0)
		return err
	}
	key := v3.Prefix() + "/subnets/" + l.Key()
	val, err := json.Marshal(l.Attrs)
	if err != nil {
		return err
	}
	// A put without a lease detaches the key from the one it had.
	r, err := v3.Client().Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0),
			clientv3.Compare(clientv3.LeaseValue(key), "=", clientv3.LeaseID(l.ID))).
		Then(clientv3.OpPut(key, string(val))).
		Commit()
	if err != nil {
		return fmt.Errorf("detach %s from its etcd lease: %w", key, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("%s changed meanwhile: %w", key, lease.ErrExists)
	}
	// Nothing is attached to it any more; it would expire anyway.
	_, _ = v3.Client().Revoke(ctx, clientv3.LeaseID(l.ID))
	return nil
}

// checkFits refuses a reservation flanneld would never use.
func checkFits(cfg *netconf.Config, sn, sn6 netip.Prefix, ip netip.Addr) error {
	if !lease.Fits(cfg, sn) {
		return fmt.Errorf("%s does not fit the network config: it must be a /%d inside %s between SubnetMin %s and SubnetMax %s",
			sn, cfg.SubnetLen, cfg.Network, cfg.SubnetMin, cfg.SubnetMax)
	}
	switch {
	case cfg.EnableIPv6 && !sn6.IsValid():
		return fmt.Errorf("the network is dual-stack: give the key with both subnets, e.g. %s&%s-%d",
			lease.MakeKey(sn, netip.Prefix{}), cfg.IPv6SubnetMin, cfg.IPv6SubnetLen)
	case !cfg.EnableIPv6 && sn6.IsValid():
		return fmt.Errorf("IPv6 subnet %s given, but the network config does not enable IPv6", sn6)
	case sn6.IsValid() && !lease.Fits6(cfg, sn6):
		return fmt.Errorf("%s does not fit the network config: it must be a /%d inside %s between IPv6SubnetMin %s and IPv6SubnetMax %s",
			sn6, cfg.IPv6SubnetLen, cfg.IPv6Network, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax)
	case cfg.Network.Contains(ip):
		return fmt.Errorf("public IP %s is inside the overlay network %s: give the host's underlay address", ip, cfg.Network)
	}
	return nil
}

// describe names who holds a lease, for errors.
func describe(l lease.Lease) string {
	if l.Reserved() {
		return "reserved for " + addrString(l.Attrs.PublicIP)
	}
	s := "leased by " + addrString(l.Attrs.PublicIP)
	if !l.Expires.IsZero() {
		s += ", expires in " + fmtLeft(time.Until(l.Expires))
	}
	return s
}

func leasesRelease(ctx context.Context, s store, arg string, w io.Writer) error {
	l, err := find(ctx, s, arg)
	if err != nil {
		return fmt.Errorf("leases release: %w", err)
	}
	if err := s.Revoke(ctx, l); err != nil {
		if errors.Is(err, lease.ErrNotFound) {
			return fmt.Errorf("leases release: %s changed while releasing it; look again with `flannelctl leases show %s`", l.Subnet, l.Subnet)
		}
		return fmt.Errorf("leases release: %w", err)
	}
	if l.Reserved() {
		fmt.Fprintf(w, "released the reservation of %s for %s\n", l.Subnet, addrString(l.Attrs.PublicIP))
		return nil
	}
	fmt.Fprintf(w, "released %s, leased by %s; if its flanneld still runs it leases a subnet again (this one if still free)\n", l.Subnet, addrString(l.Attrs.PublicIP))
	return nil
}

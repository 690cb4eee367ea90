package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/status"
)

const leasesUsage = `usage: flannelctl leases list [-o json]
       flannelctl leases show SUBNET [-o json]
       flannelctl leases reserve SUBNET PUBLICIP
       flannelctl leases release SUBNET
SUBNET is 10.5.34.0/24 or its key 10.5.34.0-24; in Kubernetes mode (--kubeconfig)
leases show also takes a node name, and there are no reservations`

func leasesCmd(ctx context.Context, args []string, e opsEnv) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("leases: missing subcommand\n%s", leasesUsage)
	}
	sub := args[0]
	nargs := map[string]int{"list": 0, "show": 1, "reserve": 2, "release": 1}
	want, known := nargs[sub]
	if !known {
		return usagef("leases: unknown subcommand %q\n%s", sub, leasesUsage)
	}
	f := newFlags("leases "+sub, e)
	c, output := f.register()
	pos, err := f.parse(args[1:], e.getenv)
	if err != nil {
		return err
	}
	if err := c.resolve(e.getenv, *output); err != nil {
		return err
	}
	if len(pos) != want {
		return usagef("leases %s: want %d arguments, got %d\n%s", sub, want, len(pos), leasesUsage)
	}
	if c.kube.on {
		return leasesKube(ctx, c, sub, pos, *output == "json", e)
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

func leasesList(ctx context.Context, s store, asJSON bool, w io.Writer) error {
	ls, err := lease.List(ctx, s)
	if err != nil {
		return fmt.Errorf("leases list: %w", err)
	}
	if asJSON {
		out := make([]status.LeaseInfo, 0, len(ls))
		for _, l := range ls {
			out = append(out, status.Info(l, s.Prefix()))
		}
		return writeJSON(w, out)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tBACKEND\tEXPIRES\tRESERVED")
	for _, l := range ls {
		sn, ip := l.Subnet.String(), status.Addr(l.Attrs.PublicIP)
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
	return lease.FormatLeft(time.Until(l.Expires))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// find returns the lease or reservation for a SUBNET argument.
func find(ctx context.Context, s store, arg string) (lease.Lease, error) {
	sn, sn6, err := lease.ParseSubnet(arg)
	if err != nil {
		return lease.Lease{}, err
	}
	l, err := lease.Find(ctx, s, sn, sn6)
	if errors.Is(err, lease.ErrNotFound) {
		return lease.Lease{}, fmt.Errorf("no lease or reservation for %s under %s (`flannelctl leases list` shows them all)", sn, lease.SubnetsDir(s.Prefix()))
	}
	return l, err
}

func leasesShow(ctx context.Context, s store, arg string, asJSON bool, w io.Writer) error {
	l, err := find(ctx, s, arg)
	if err != nil {
		return fmt.Errorf("leases show: %w", err)
	}
	j := status.Info(l, s.Prefix())
	if asJSON {
		return writeJSON(w, j)
	}
	f := newFields(w)
	row := f.row
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
			row("expires", fmt.Sprintf("%s (in %s)", j.Expires.Format(time.RFC3339), lease.FormatLeft(time.Until(l.Expires))))
		}
	}
	return f.flush()
}

func leasesReserve(ctx context.Context, s store, subnetArg, ipArg string, w io.Writer) error {
	sn, sn6, err := lease.ParseSubnet(subnetArg)
	if err != nil {
		return fmt.Errorf("leases reserve: %w", err)
	}
	ip, err := netip.ParseAddr(ipArg)
	if err != nil || !ip.Is4() || ip.IsUnspecified() {
		return fmt.Errorf("leases reserve: public IP %q: not an IPv4 address", ipArg)
	}
	_, cfg, err := status.ReadConfig(ctx, s)
	if err != nil {
		return fmt.Errorf("leases reserve: %w", err)
	}
	r, err := lease.ReserveSubnet(ctx, s, cfg, sn, sn6, ip)
	if oe := (*lease.OverlapError)(nil); errors.As(err, &oe) {
		return fmt.Errorf("leases reserve: %w: release that first if it is stale (`flannelctl leases release %s`)", err, oe.Held.Subnet)
	}
	if err != nil {
		return fmt.Errorf("leases reserve: %w", err)
	}
	if r.Already {
		fmt.Fprintf(w, "%s is already reserved for %s\n", sn, ip)
		return nil
	}
	fmt.Fprintf(w, "reserved %s for %s (%s, no TTL)\n", sn, ip, lease.KeyPath(s.Prefix(), r.Lease.Key()))
	if r.Converted {
		fmt.Fprintf(w, "it was %s's lease and is now its reservation; its flanneld keeps using it\n", ip)
	}
	if len(r.Elsewhere) > 0 {
		var held []string
		for _, p := range r.Elsewhere {
			held = append(held, p.String())
		}
		fmt.Fprintf(w, "%s currently holds %s; its flanneld moves to %s when it restarts (restart its containers then)\n", ip, strings.Join(held, ", "), sn)
	}
	return nil
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
		fmt.Fprintf(w, "released the reservation of %s for %s\n", l.Subnet, status.Addr(l.Attrs.PublicIP))
		return nil
	}
	fmt.Fprintf(w, "released %s, leased by %s; if its flanneld still runs it leases a subnet again (this one if still free)\n", l.Subnet, status.Addr(l.Attrs.PublicIP))
	return nil
}

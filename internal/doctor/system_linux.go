package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/ethtool"
)

// linuxSystem reads the network namespace the process runs in.
type linuxSystem struct{}

// NewSystem returns the System of the calling process's network namespace.
func NewSystem() System { return linuxSystem{} }

func (linuxSystem) Sysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", filepath.Clean("/"+name)))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func toLink(l netlink.Link) (Link, error) {
	a := l.Attrs()
	out := Link{Name: a.Name, Index: a.Index, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, MAC: a.HardwareAddr}
	if v, ok := l.(*netlink.Vxlan); ok {
		out.Parent = v.VtepDevIndex
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return out, fmt.Errorf("doctor: addresses of %s: %w", a.Name, err)
	}
	for _, ad := range addrs {
		ip, ok := netip.AddrFromSlice(ad.IP)
		if !ok {
			continue
		}
		ones, _ := ad.Mask.Size()
		out.Addrs = append(out.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

func (linuxSystem) Link(name string) (Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return Link{}, fmt.Errorf("%w: %s", ErrNoLink, name)
		}
		return Link{}, fmt.Errorf("doctor: link %s: %w", name, err)
	}
	return toLink(l)
}

func (linuxSystem) LinkByIndex(index int) (Link, error) {
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return Link{}, fmt.Errorf("%w: index %d: %v", ErrNoLink, index, err)
	}
	return toLink(l)
}

func (s linuxSystem) LinkWithAddr(addr netip.Addr) (Link, error) {
	if !addr.IsValid() {
		return Link{}, ErrNoLink
	}
	links, err := netlink.LinkList()
	if err != nil {
		return Link{}, fmt.Errorf("doctor: list links: %w", err)
	}
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
				return toLink(l)
			}
		}
	}
	return Link{}, fmt.Errorf("%w: no interface holds %s", ErrNoLink, addr)
}

func (linuxSystem) RouteLink(dst netip.Addr) (Link, error) {
	rs, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(rs) == 0 {
		return Link{}, fmt.Errorf("%w: no route to %s: %v", ErrNoLink, dst, err)
	}
	l, err := netlink.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		return Link{}, fmt.Errorf("%w: route to %s: %v", ErrNoLink, dst, err)
	}
	return toLink(l)
}

func (linuxSystem) IPTablesSave(ctx context.Context, table string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "iptables-save", "-t", table).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			return nil, fmt.Errorf("iptables-save -t %s: %w: %s", table, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("iptables-save -t %s: %w", table, err)
	}
	return out, nil
}

func (linuxSystem) TxChecksumOffload(dev string) (bool, error) {
	return ethtool.Feature(dev, "tx-checksum-ip-generic")
}

func (linuxSystem) Probe(ctx context.Context, probes []Probe, timeout time.Duration) []ProbeResult {
	return probe(ctx, probes, timeout)
}

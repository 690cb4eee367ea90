package lab

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/flannel-go/flannel/internal/ns"
)

// HandMadeDatapath sets up kind's datapath ("vxlan" or "host-gw") by hand
// with ip(8) between the first two hosts of l, a lab of the alloc backend
// (whose flanneld programs nothing), and gives the containers the MTU
// flannel would: the kernel reference `lab bench` compares flanneld's
// datapath to, for "our control plane costs the datapath nothing".
func (l *Lab) HandMadeDatapath(ctx context.Context, kind string) error {
	if len(l.Hosts) < 2 {
		return errors.New("lab: a hand-made datapath needs two hosts")
	}
	a, b := l.Hosts[0], l.Hosts[1]
	run := func(h *Host, args ...string) error {
		n, err := ns.Open(h.NS)
		if err != nil {
			return err
		}
		_, err = n.Run(ctx, "ip", args...)
		return err
	}
	switch kind {
	case "host-gw":
		for _, p := range [][2]*Host{{a, b}, {b, a}} {
			if err := run(p[0], "route", "replace", p[1].Subnet.String(), "via", p[1].Addr.String(), "dev", "eth0"); err != nil {
				return err
			}
		}
		return nil
	case "vxlan":
		macs := map[*Host]string{a: "0a:00:00:00:00:01", b: "0a:00:00:00:00:02"}
		for _, h := range []*Host{a, b} {
			steps := [][]string{
				{"link", "add", "flannel.1", "address", macs[h], "type", "vxlan", "id", "1", "local", h.Addr.String(), "dev", "eth0", "dstport", "8472", "nolearning"},
				{"link", "set", "flannel.1", "mtu", "1450", "up"},
				{"addr", "add", h.Subnet.Addr().String() + "/32", "dev", "flannel.1"},
				{"link", "set", "docker0", "mtu", "1450"},
				{"link", "set", "vethc", "mtu", "1450"},
			}
			for _, s := range steps {
				if err := run(h, s...); err != nil {
					return err
				}
			}
			cn, _ := ns.Open(h.CNS)
			if _, err := cn.Run(ctx, "ip", "link", "set", "eth0", "mtu", "1450"); err != nil {
				return err
			}
		}
		for _, p := range [][2]*Host{{a, b}, {b, a}} {
			h, peer := p[0], p[1]
			gw := peer.Subnet.Addr().String()
			steps := [][]string{
				{"neigh", "replace", gw, "lladdr", macs[peer], "dev", "flannel.1", "nud", "permanent"},
				{"route", "replace", peer.Subnet.String(), "via", gw, "dev", "flannel.1", "onlink"},
			}
			for _, s := range steps {
				if err := run(h, s...); err != nil {
					return err
				}
			}
			n, _ := ns.Open(h.NS)
			if _, err := n.Run(ctx, "bridge", "fdb", "append", macs[peer], "dev", "flannel.1", "dst", peer.Addr.String()); err != nil {
				return err
			}
		}
		return nil
	}
	return errors.New("lab: no hand-made datapath for " + kind)
}

// Summary sums up the runs of one path.
type Summary struct {
	Median, Min, Max float64 // bits per second
	Retransmits      int     // over all runs
}

// Summarize sums up ts; the zero Summary for none.
func Summarize(ts []Throughput) Summary {
	if len(ts) == 0 {
		return Summary{}
	}
	v := make([]float64, len(ts))
	var s Summary
	for i, t := range ts {
		v[i] = t.BitsPerSecond
		s.Retransmits += t.Retransmits
	}
	slices.Sort(v)
	s.Min, s.Max = v[0], v[len(v)-1]
	if len(v)%2 == 1 {
		s.Median = v[len(v)/2]
	} else {
		s.Median = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return s
}

// NICWire makes every host's underlay veth behave as a NIC's wire does:
// the sending kernel segments encapsulated super-packets and finishes
// their checksums before they cross, instead of handing them whole to the
// other namespace, and the receiving side runs GRO, as a NIC's driver
// does (a veth has it off). The udp backend's eBPF datapath needs that (a
// veth underlay is why its auto mode declines); kernel vxlan is measured
// on the same wire for a fair comparison. Equivalent to, on each host:
//
//	ethtool -K eth0 tx off tso off gso off tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off tx-udp-segmentation off gro on
func (l *Lab) NICWire(ctx context.Context) error {
	for _, h := range l.Hosts {
		n, err := ns.Open(h.NS)
		if err != nil {
			return err
		}
		if _, err := n.Run(ctx, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
			"tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off", "tx-udp-segmentation", "off", "gro", "on"); err != nil {
			return fmt.Errorf("lab: %s: NIC-like offloads on eth0: %w", h.Name, err)
		}
	}
	return nil
}

package udp

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports a Backend's datapath counters as Prometheus metrics.
// It lives here, not in the metrics package, so that the daemon's metrics
// do not depend on this datapath. The backend is set once it exists
// (flanneld builds it only when the config asks for udp; Options.Collector
// wires it); before that the collector reports nothing.
type Collector struct {
	stats atomic.Pointer[func() Stats]
}

var _ prometheus.Collector = (*Collector)(nil)

var (
	descPackets     = prometheus.NewDesc("flannel_udp_packets_total", "Packets forwarded by the udp backend, by direction (out: containers to peers).", []string{"direction"}, nil)
	descBytes       = prometheus.NewDesc("flannel_udp_bytes_total", "Inner IPv4 bytes forwarded by the udp backend, by direction.", []string{"direction"}, nil)
	descDrops       = prometheus.NewDesc("flannel_udp_drops_total", "Packets the udp backend dropped, by direction and reason.", []string{"direction", "reason"}, nil)
	descEBPFPackets = prometheus.NewDesc("flannel_udp_ebpf_packets_total", "Packets the udp backend's eBPF datapath forwarded in the kernel, by direction (out: containers to peers); absent without it.", []string{"direction"}, nil)
	descEBPFBytes   = prometheus.NewDesc("flannel_udp_ebpf_bytes_total", "Inner IPv4 bytes the udp backend's eBPF datapath forwarded, by direction (a super-packet's headers count once).", []string{"direction"}, nil)
	descOffload     = prometheus.NewDesc("flannel_udp_offload", "1 for each kernel offload the udp datapath is using.", []string{"offload"}, nil)
)

func (c *Collector) set(stats func() Stats) { c.stats.Store(&stats) }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descDrops, descOffload, descEBPFPackets, descEBPFBytes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	f := c.stats.Load()
	if f == nil {
		return
	}
	s := (*f)()
	for _, d := range []struct {
		name string
		v    Direction
	}{{"out", s.Out}, {"in", s.In}} {
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(d.v.Packets), d.name)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(d.v.Bytes), d.name)
		for reason, n := range map[string]uint64{"no_route": d.v.Drops.NoRoute, "ttl": d.v.Drops.TTL,
			"malformed": d.v.Drops.Malformed, "write_error": d.v.Drops.WriteError} {
			ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(n), d.name, reason)
		}
	}
	if e := s.EBPF; e != nil {
		ch <- prometheus.MustNewConstMetric(descEBPFPackets, prometheus.CounterValue, float64(e.OutPackets), "out")
		ch <- prometheus.MustNewConstMetric(descEBPFPackets, prometheus.CounterValue, float64(e.InPackets), "in")
		ch <- prometheus.MustNewConstMetric(descEBPFBytes, prometheus.CounterValue, float64(e.OutBytes), "out")
		ch <- prometheus.MustNewConstMetric(descEBPFBytes, prometheus.CounterValue, float64(e.InBytes), "in")
	}
	for name, on := range map[string]bool{"tun_vnet": s.Offloads.TUNVnet, "udp_gso": s.Offloads.UDPGSO, "udp_gro": s.Offloads.UDPGRO} {
		v := 0.0
		if on {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descOffload, prometheus.GaugeValue, v, name)
	}
}

package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flannel-go/flannel/internal/backend/udp"
)

// UDPStatser is what the udp backend offers for metrics.
type UDPStatser interface{ Stats() udp.Stats }

// UDPCollector exports the udp backend's datapath counters. The backend is
// set once it exists; before that the collector reports nothing.
type UDPCollector struct {
	be atomic.Pointer[UDPStatser]
}

var (
	udpPackets = prometheus.NewDesc("flannel_udp_packets_total", "Packets forwarded by the udp backend, by direction (out: containers to peers).", []string{"direction"}, nil)
	udpBytes   = prometheus.NewDesc("flannel_udp_bytes_total", "Inner IPv4 bytes forwarded by the udp backend, by direction.", []string{"direction"}, nil)
	udpDrops   = prometheus.NewDesc("flannel_udp_drops_total", "Packets the udp backend dropped, by direction and reason.", []string{"direction", "reason"}, nil)
	udpOffload = prometheus.NewDesc("flannel_udp_offload", "1 for each kernel offload the udp datapath is using.", []string{"offload"}, nil)
)

// Set points the collector at a backend.
func (c *UDPCollector) Set(b UDPStatser) { c.be.Store(&b) }

// Describe implements prometheus.Collector.
func (c *UDPCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{udpPackets, udpBytes, udpDrops, udpOffload} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *UDPCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.be.Load()
	if p == nil {
		return
	}
	s := (*p).Stats()
	for _, d := range []struct {
		name string
		v    udp.Direction
	}{{"out", s.Out}, {"in", s.In}} {
		ch <- prometheus.MustNewConstMetric(udpPackets, prometheus.CounterValue, float64(d.v.Packets), d.name)
		ch <- prometheus.MustNewConstMetric(udpBytes, prometheus.CounterValue, float64(d.v.Bytes), d.name)
		for reason, n := range map[string]uint64{"no_route": d.v.Drops.NoRoute, "ttl": d.v.Drops.TTL,
			"malformed": d.v.Drops.Malformed, "write_error": d.v.Drops.WriteError} {
			ch <- prometheus.MustNewConstMetric(udpDrops, prometheus.CounterValue, float64(n), d.name, reason)
		}
	}
	for name, on := range map[string]bool{"tun_vnet": s.Offloads.TUNVnet, "udp_gso": s.Offloads.UDPGSO, "udp_gro": s.Offloads.UDPGRO} {
		ch <- prometheus.MustNewConstMetric(udpOffload, prometheus.GaugeValue, b2f(on), name)
	}
}

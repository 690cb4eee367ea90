package udp

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// ebpfSeries gathers the eBPF counters as "name direction" → value.
func ebpfSeries(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if name := mf.GetName(); name == "flannel_udp_ebpf_packets_total" || name == "flannel_udp_ebpf_bytes_total" {
			for _, m := range mf.GetMetric() {
				got[name+" "+m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	return got
}

func TestCollectorEBPF(t *testing.T) {
	var c Collector
	stats := Stats{Out: Direction{Packets: 3}}
	c.set(func() Stats { return stats })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(&c)
	if got := ebpfSeries(t, reg); len(got) != 0 {
		t.Errorf("without the eBPF datapath: %v", got)
	}
	stats.EBPF = &EBPFStats{OutPackets: 10, OutBytes: 15000, InPackets: 7, InBytes: 9000}
	want := map[string]float64{
		"flannel_udp_ebpf_packets_total out": 10, "flannel_udp_ebpf_packets_total in": 7,
		"flannel_udp_ebpf_bytes_total out": 15000, "flannel_udp_ebpf_bytes_total in": 9000,
	}
	got := ebpfSeries(t, reg)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

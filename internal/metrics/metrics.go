// Package metrics defines flanneld's Prometheus metrics. Every method is
// safe on a nil *Metrics, so code paths and tests that do not export
// metrics need no checks.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds flanneld's collectors.
type Metrics struct {
	reg *prometheus.Registry

	ready          prometheus.Gauge
	leaseInfo      *prometheus.GaugeVec
	leaseExpiry    prometheus.Gauge
	peers          prometheus.Gauge
	ignored        prometheus.Gauge
	watchEvents    *prometheus.CounterVec
	relists        prometheus.Counter
	syncDuration   prometheus.Histogram
	syncErrors     prometheus.Counter
	acquisitions   prometheus.Counter
	renewals       prometheus.Counter
	leaseLosses    prometheus.Counter
	etcdErrors     prometheus.Counter
	etcdReconnects prometheus.Counter
	etcdUp         prometheus.Gauge
	repairs        prometheus.Counter
	rulesRepaired  prometheus.Counter
}

// New returns metrics registered in a fresh registry (with Go runtime and
// process collectors).
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.ready = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flannel_ready", Help: "1 once subnet.env is written and the datapath is configured."})
	m.leaseInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flannel_lease_info", Help: "This host's lease; always 1."}, []string{"subnet", "public_ip", "backend"})
	m.leaseExpiry = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flannel_lease_expiry_timestamp_seconds", Help: "When this host's lease expires unless renewed (0 for a reservation)."})
	m.peers = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flannel_peers", Help: "Peer leases the datapath forwards to."})
	m.ignored = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flannel_leases_ignored", Help: "Leases in etcd ignored as invalid (see the warnings in the log)."})
	m.watchEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flannel_watch_events_total", Help: "Lease watch events received, by type."}, []string{"type"})
	m.relists = prometheus.NewCounter(prometheus.CounterOpts{Name: "flannel_watch_relists_total", Help: "Full re-listings of the leases (start, compaction, watch loss)."})
	m.syncDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flannel_sync_duration_seconds", Help: "Time to apply the peer set to the datapath.",
		Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5}})
	m.syncErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "flannel_sync_errors_total", Help: "Datapath syncs that failed for at least one peer."})
	m.acquisitions = prometheus.NewCounter(prometheus.CounterOpts{Name: "flannel_lease_acquisitions_total", Help: "Leases acquired (at start and after a loss)."})
	m.renewals = prometheus.NewCounter(prometheus.CounterOpts{Name: "flannel_lease_renewals_total", Help: "Successful lease renewals."})
	m.leaseLosses = prometheus.NewCounter(prometheus.CounterOpts{Name: "flannel_lease_losses_total", Help: "Times this host's lease was found deleted, expired or taken over."})
	m.etcdErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "flannel_etcd_errors_total", Help: "Failed etcd requests seen by the daemon (listing, watching, config)."})
	m.etcdReconnects = prometheus.NewCounter(prometheus.CounterOpts{Name: "flannel_etcd_reconnects_total", Help: "Times etcd became reachable again after an outage."})
	m.etcdUp = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flannel_etcd_up", Help: "1 while etcd is reachable."})
	m.repairs = prometheus.NewCounter(prometheus.CounterOpts{Name: "flannel_backend_repair_errors_total", Help: "Backend repairs that failed."})
	m.rulesRepaired = prometheus.NewCounter(prometheus.CounterOpts{Name: "flannel_rules_repaired_total", Help: "Times masquerade or forward rules were found changed and repaired."})
	for _, c := range []prometheus.Collector{m.ready, m.leaseInfo, m.leaseExpiry, m.peers, m.ignored, m.watchEvents, m.relists,
		m.syncDuration, m.syncErrors, m.acquisitions, m.renewals, m.leaseLosses, m.etcdErrors, m.etcdReconnects, m.etcdUp,
		m.repairs, m.rulesRepaired,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	m.etcdUp.Set(1)
	return m
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Register adds a collector, such as a backend's datapath counters.
func (m *Metrics) Register(c prometheus.Collector) error {
	if m == nil {
		return nil
	}
	return m.reg.Register(c)
}

// Ready records readiness.
func (m *Metrics) Ready(ok bool) {
	if m != nil {
		m.ready.Set(b2f(ok))
	}
}

// Lease records this host's lease.
func (m *Metrics) Lease(subnet, publicIP, backend string, expires time.Time) {
	if m == nil {
		return
	}
	m.leaseInfo.Reset()
	m.leaseInfo.WithLabelValues(subnet, publicIP, backend).Set(1)
	if expires.IsZero() {
		m.leaseExpiry.Set(0)
	} else {
		m.leaseExpiry.Set(float64(expires.Unix()))
	}
}

// Acquired counts an acquisition.
func (m *Metrics) Acquired() {
	if m != nil {
		m.acquisitions.Inc()
	}
}

// Renewed counts a renewal and records the new expiry.
func (m *Metrics) Renewed(expires time.Time) {
	if m != nil {
		m.renewals.Inc()
		m.leaseExpiry.Set(float64(expires.Unix()))
	}
}

// LeaseLost counts a loss of this host's lease.
func (m *Metrics) LeaseLost() {
	if m != nil {
		m.leaseLosses.Inc()
	}
}

// Peers records the peer counts after a sync.
func (m *Metrics) Peers(valid, ignored int) {
	if m != nil {
		m.peers.Set(float64(valid))
		m.ignored.Set(float64(ignored))
	}
}

// WatchEvent counts one watch event of type typ (added, removed).
func (m *Metrics) WatchEvent(typ string) {
	if m != nil {
		m.watchEvents.WithLabelValues(typ).Inc()
	}
}

// Relist counts a full listing.
func (m *Metrics) Relist() {
	if m != nil {
		m.relists.Inc()
	}
}

// Synced records one datapath sync.
func (m *Metrics) Synced(d time.Duration, err error) {
	if m == nil {
		return
	}
	m.syncDuration.Observe(d.Seconds())
	if err != nil {
		m.syncErrors.Inc()
	}
}

// EtcdError counts a failed etcd request.
func (m *Metrics) EtcdError() {
	if m != nil {
		m.etcdErrors.Inc()
	}
}

// EtcdConn records etcd becoming unreachable or reachable again.
func (m *Metrics) EtcdConn(up bool) {
	if m == nil {
		return
	}
	m.etcdUp.Set(b2f(up))
	if up {
		m.etcdReconnects.Inc()
	}
}

// RepairFailed counts a failed backend repair.
func (m *Metrics) RepairFailed() {
	if m != nil {
		m.repairs.Inc()
	}
}

// RulesRepaired counts a rules repair.
func (m *Metrics) RulesRepaired() {
	if m != nil {
		m.rulesRepaired.Inc()
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

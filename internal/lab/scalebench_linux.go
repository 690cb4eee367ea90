package lab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/lease"
)

// ScaleOptions say what RunScale measures.
type ScaleOptions struct {
	Backend   string        // required: vxlan or host-gw (the backends with per-peer kernel entries)
	Peers     int           // required: fake peer leases written before flanneld starts
	NewLeases int           // required: leases written one at a time afterwards, for the latency
	Interval  time.Duration // time between new leases
	Progress  io.Writer     // optional: a line per step
	// SyncTimeout bounds the wait for the full sync; 0 means 2 minutes.
	SyncTimeout time.Duration
}

// ScaleResult holds the figures of one RunScale.
type ScaleResult struct {
	WriteTime   time.Duration // writing the Peers leases to etcd
	SyncTime    time.Duration // flanneld's start → its last expected kernel entry
	SyncCPU     float64       // flanneld's CPU seconds until then
	SettleTime  time.Duration // then until it was idle (see settle)
	SettleCPU   float64       // and its CPU seconds in that time
	Have, Want  Counts        // kernel entries after the sync, and those expected
	RSSSync     int64         // flanneld's RssAnon after the sync
	RSSEnd      int64         // and after the new leases
	PeakRSS     int64         // VmHWM at the end
	ReqSync     EtcdRequests  // made while flanneld started and synced
	ReqNew      EtcdRequests  // made by flanneld while the new leases were written
	Latencies   []time.Duration
	Before      int     // new leases whose route appeared before the Put returned (latency 0)
	NewLeaseCPU float64 // flanneld's CPU seconds per new lease
}

// scaleRun is one benchmark run.
type scaleRun struct {
	l *Lab
	o ScaleOptions
	r ScaleResult
}

func (s *scaleRun) progress(format string, args ...any) {
	if s.o.Progress != nil {
		fmt.Fprintf(s.o.Progress, format, args...)
	}
}

// RunScale measures l's one flanneld against thousands of fake peers: the
// time from its cold start until every route, neighbour and FDB entry
// exists, its memory, its etcd requests, and the latency from a new lease
// being written to its route existing. l is a one-host lab whose config's
// network is ScaleNetwork.
func (l *Lab) RunScale(ctx context.Context, o ScaleOptions) (ScaleResult, error) {
	s := &scaleRun{l: l, o: o}
	err := s.run(ctx)
	return s.r, err
}

func (s *scaleRun) run(ctx context.Context) error {
	h := s.l.Hosts[0]
	own := h.Subnet
	s.progress("host %s: subnet %s, public IP %s\n", h.Name, own, h.Addr)

	// A cold start: no flanneld, no device, no entries; the lease and
	// subnet.env stay, as after a reboot.
	if err := s.l.StopFlanneld(h, syscall.SIGTERM); err != nil {
		return err
	}
	if err := s.l.DeleteLink(h, "flannel.1"); err != nil {
		return err
	}
	if err := s.l.AddOnLinkRoute(h, ScaleUnderlay); err != nil {
		return err
	}

	all := FakeLeases(s.o.Backend, own, s.o.Peers+s.o.NewLeases)
	initial, later := all[:s.o.Peers], all[s.o.Peers:]
	cli, err := s.l.Etcd()
	if err != nil {
		return err
	}
	defer cli.Close()
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	g, err := cli.Grant(gctx, 3600)
	cancel()
	if err != nil {
		return fmt.Errorf("grant etcd lease for the fake peers: %w", err)
	}
	start := time.Now()
	if err := s.l.PutLeases(ctx, cli, initial, g.ID); err != nil {
		return err
	}
	s.r.WriteTime = time.Since(start)
	s.progress("wrote %d fake peer leases in %s (transactions of 128)\n", len(initial), s.r.WriteTime.Round(time.Millisecond))

	w, err := WatchEntries(h.NS)
	if err != nil {
		return err
	}
	defer w.Close()
	expect, err := ExpectedEntries(s.o.Backend, initial)
	if err != nil {
		return err
	}
	w.Expect(expect)
	s.r.Want = Counts{Routes: len(expect.Routes), Neighs: len(expect.Neighs), FDB: len(expect.FDB)}

	if err := s.measureSync(ctx, w); err != nil {
		return err
	}
	if err := s.settle(ctx); err != nil {
		return err
	}
	if err := s.measureNew(ctx, w, cli, g.ID, later); err != nil {
		return err
	}
	return nil
}

// settle lets flanneld finish what its sync leaves for afterwards, so the
// CPU per new lease is that of a new lease: its first repair pass after
// the sync (every 5 s) dumps the tables once, because the sync's own
// notifications overflowed the kernel watch, and a garbage collection
// follows. It waits one repair period, then for a second in which
// flanneld used at most 20 ms of CPU (at most 30 s), and keeps the CPU
// it took.
func (s *scaleRun) settle(ctx context.Context) error {
	pid := s.l.Hosts[0].FlanneldPID
	start := time.Now()
	cpu0, err := CPUSeconds(pid)
	if err != nil {
		return err
	}
	if err := backoff.Sleep(ctx, settleRepairPeriod); err != nil {
		return err
	}
	prev, err := CPUSeconds(pid)
	if err != nil {
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if err := backoff.Sleep(ctx, time.Second); err != nil {
			return err
		}
		cur, err := CPUSeconds(pid)
		if err != nil {
			return err
		}
		quiet := cur-prev <= 0.02
		prev = cur
		if quiet {
			break
		}
	}
	s.r.SettleTime, s.r.SettleCPU = time.Since(start), prev-cpu0
	s.progress("settled after the sync in %s (%.2f s of CPU)\n", s.r.SettleTime.Round(time.Millisecond), s.r.SettleCPU)
	return nil
}

// settleRepairPeriod covers flanneld's repair interval (5 s) and a margin.
const settleRepairPeriod = 6 * time.Second

// measureSync starts flanneld and waits for every expected entry.
func (s *scaleRun) measureSync(ctx context.Context, w *EntryWatch) error {
	h := s.l.Hosts[0]
	req0, err := s.l.EtcdRequests(ctx)
	if err != nil {
		return err
	}
	s.progress("starting flanneld; waiting for %d routes, %d neighbours, %d FDB entries...\n",
		s.r.Want.Routes, s.r.Want.Neighs, s.r.Want.FDB)
	if s.r.SyncTime, s.r.RSSSync, s.r.SyncCPU, err = s.l.startAndSync(ctx, h, w, s.o.SyncTimeout); err != nil {
		return err
	}
	if s.r.ReqSync, err = s.l.EtcdRequests(ctx); err != nil {
		return err
	}
	s.r.ReqSync = s.r.ReqSync.Sub(req0)
	dev, gwIn := "flannel.1", netip.Prefix{}
	if s.o.Backend == "host-gw" {
		dev, gwIn = "", ScaleUnderlay
	}
	if s.r.Have, err = CountEntries(h.NS, dev, gwIn); err != nil {
		return err
	}
	s.progress("full sync in %s\n", s.r.SyncTime.Round(time.Millisecond))
	return nil
}

// measureNew writes leases one at a time, paced by s.o.Interval, and times
// each from its Put returning to its route existing.
func (s *scaleRun) measureNew(ctx context.Context, w *EntryWatch, cli *clientv3.Client, id clientv3.LeaseID, leases []lease.Lease) error {
	h := s.l.Hosts[0]
	pid := h.FlanneldPID
	req0, err := s.l.EtcdRequests(ctx)
	if err != nil {
		return err
	}
	s.progress("writing %d new leases, one every %s...\n", len(leases), s.o.Interval)
	n, err := timeNewPeers(ctx, w, pid, s.o.Backend, s.o.Interval, leases, func(i int, l lease.Lease) (string, error) {
		k, v, err := s.l.LeaseKV(l)
		if err != nil {
			return "", err
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := cli.Put(pctx, k, v, clientv3.WithLease(id)); err != nil {
			return "", fmt.Errorf("put new lease %d: %w", i+1, err)
		}
		return "new lease " + l.Subnet.String(), nil
	})
	if err != nil {
		return err
	}
	s.r.Latencies, s.r.Before, s.r.NewLeaseCPU = n.latencies, n.before, n.cpuPerPeer
	if s.r.ReqNew, err = s.l.EtcdRequests(ctx); err != nil {
		return err
	}
	s.r.ReqNew = s.r.ReqNew.Sub(req0)
	// Our own puts are not flanneld's.
	s.r.ReqNew.Started["Put"] -= int64(len(leases))
	if s.r.ReqNew.Started["Put"] == 0 {
		delete(s.r.ReqNew.Started, "Put")
	}
	s.r.RSSEnd, s.r.PeakRSS, err = endMemory(pid)
	return err
}

// newPeers is what timeNewPeers measured.
type newPeers struct {
	latencies  []time.Duration // from each change returning to its route existing
	before     int             // routes that existed before their change returned (latency 0)
	cpuPerPeer float64         // flanneld's CPU seconds per new peer
}

// timeNewPeers makes leases known to flanneld (pid) one at a time, paced by
// interval: add makes the i-th known and names it, and its latency is
// timed from add returning to its route (as backendType programs it)
// existing.
func timeNewPeers(ctx context.Context, w *EntryWatch, pid int, backendType string, interval time.Duration,
	leases []lease.Lease, add func(i int, l lease.Lease) (string, error)) (newPeers, error) {
	var n newPeers
	cpu0, err := CPUSeconds(pid)
	if err != nil {
		return n, err
	}
	next := time.Now()
	for i, l := range leases {
		if err := backoff.Sleep(ctx, time.Until(next)); err != nil {
			return n, err
		}
		next = next.Add(interval)
		what, err := add(i, l)
		if err != nil {
			return n, err
		}
		done := time.Now()
		r := RouteOf(backendType, l)
		at, err := w.WaitRoute(ctx, r.Dst, r.Gw, 10*time.Second, pid)
		if err != nil {
			return n, fmt.Errorf("route of %s: %w", what, err)
		}
		d := at.Sub(done)
		if d < 0 {
			// flanneld's watch event can beat the response to our write.
			n.before++
			d = 0
		}
		n.latencies = append(n.latencies, d)
	}
	cpu1, err := CPUSeconds(pid)
	if err != nil {
		return n, err
	}
	n.cpuPerPeer = (cpu1 - cpu0) / float64(len(leases))
	return n, nil
}

// startAndSync starts flanneld on h and waits until the kernel holds
// every entry w expects, for at most timeout (0: 2 minutes). It returns
// the time from the start to the last entry, and flanneld's RssAnon and
// CPU seconds then.
func (l *Lab) startAndSync(ctx context.Context, h *Host, w *EntryWatch, timeout time.Duration) (time.Duration, int64, float64, error) {
	start := time.Now()
	if err := l.StartFlanneld(h); err != nil {
		return 0, 0, 0, err
	}
	pid := h.FlanneldPID
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	last, err := w.WaitExpected(ctx, timeout, pid)
	if err != nil {
		have, want := w.Progress()
		return 0, 0, 0, fmt.Errorf("waiting for the full sync (have %+v of %+v): %w", have, want, err)
	}
	rss, err := RssAnon(pid)
	if err != nil {
		return 0, 0, 0, err
	}
	cpu, err := CPUSeconds(pid)
	if err != nil {
		return 0, 0, 0, err
	}
	return last.Sub(start), rss, cpu, nil
}

// endMemory returns pid's RssAnon and its peak RSS (VmHWM).
func endMemory(pid int) (rss, peak int64, err error) {
	if rss, err = RssAnon(pid); err != nil {
		return 0, 0, err
	}
	if peak, err = PeakRSS(pid); err != nil {
		return 0, 0, err
	}
	return rss, peak, nil
}

// MachineDescription names the CPU and the cpuidle driver (whose wake-up
// latency shows in the latency figures), as lscpu and sysfs give them.
func MachineDescription() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	idle := "none"
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpuidle/current_driver"); err == nil {
		idle = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s, %d CPUs, cpuidle driver %s, kernel %s", model, runtime.NumCPU(), idle, kernelRelease())
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/backoff"
	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lease"
)

// Targets of the scale benchmark (issue 4).
const (
	targetSync    = 5 * time.Second
	targetRSS     = 60 << 20
	targetLatency = 100 * time.Millisecond
)

// labScale measures one real flanneld against thousands of fake peers: the
// time from its start until every route, neighbour and FDB entry exists,
// its memory, its etcd requests, and the latency from a new lease being
// written to its route existing.
func labScale(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab scale", flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.String("id", "fscale", "lab name: prefix of its namespaces")
	peers := fs.Int("peers", 5000, "fake peer leases written before flanneld starts")
	newLeases := fs.Int("new", 200, "new leases written one at a time afterwards, for the latency")
	interval := fs.Duration("interval", 50*time.Millisecond,
		"time between new leases, so they span several of flanneld's 5 s repair passes")
	backendType := fs.String("backend", "vxlan", "backend: vxlan or host-gw")
	flanneld := fs.String("flanneld", "", "flanneld binary (default: next to flannelctl, else $PATH)")
	etcdKind := fs.String("etcd", "embedded", "etcd to start: embedded or system")
	keep := fs.Bool("keep", false, "leave the lab up after a successful run, to look around (then: flannelctl lab down --id ID)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *backendType != "vxlan" && *backendType != "host-gw" {
		return fmt.Errorf("lab scale: --backend %q: only vxlan and host-gw program per-peer kernel entries", *backendType)
	}
	if *peers < 1 || *newLeases < 1 || *peers+*newLeases > 60000 {
		return errors.New("lab scale: --peers and --new must be at least 1 and add up to at most 60000")
	}
	bin, err := findFlanneld(*flanneld)
	if err != nil {
		return err
	}
	etcdCmd, err := etcdCommand(*etcdKind)
	if err != nil {
		return err
	}
	s := &scaleRun{out: stdout, backend: *backendType, peers: *peers, newLeases: *newLeases, interval: *interval}
	_ = lab.Down(*id)
	cfg := fmt.Sprintf(`{"Network":%q,"SubnetLen":24,"Backend":{"Type":%q}}`, lab.ScaleNetwork, *backendType)
	fmt.Fprintf(stdout, "building lab %s: 1 host, config %s\n", *id, cfg)
	s.lab, err = lab.Up(ctx, lab.Options{ID: *id, Hosts: 1, Config: cfg, Flanneld: bin, EtcdCmd: etcdCmd})
	if err != nil {
		return err
	}
	// The lab comes down on every return, including Ctrl-C (ctx ending
	// makes each wait in run return) and a panic.
	keepUp := false
	defer func() {
		if keepUp {
			return
		}
		if derr := s.lab.Down(); derr != nil {
			fmt.Fprintf(stderr, "lab scale: tear down %s: %v\n", *id, derr)
		}
	}()
	if err := s.run(ctx); err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(stderr, "last lines of flanneld's log:\n%s\n", tailFile(s.lab.LogFile(s.lab.Hosts[0]), 15))
		}
		return fmt.Errorf("lab scale: %w", err)
	}
	if *keep {
		keepUp = true
		fmt.Fprintf(stdout, "\nlab %s is still up (flanneld log: %s); flannelctl lab down --id %s\n", *id, s.lab.LogFile(s.lab.Hosts[0]), *id)
	}
	return nil
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// scaleRun is one benchmark run and its figures.
type scaleRun struct {
	out       io.Writer
	lab       *lab.Lab
	backend   string
	peers     int
	newLeases int
	interval  time.Duration

	writeTime   time.Duration
	syncTime    time.Duration
	syncCPU     float64
	have        lab.Counts // from kernel dumps after the sync
	want        lab.Counts
	rssSync     int64
	rssEnd      int64
	peakRSS     int64
	reqSync     lab.EtcdRequests // made while flanneld started and synced
	reqNew      lab.EtcdRequests // made while the new leases were written
	latencies   []time.Duration
	before      int // new leases whose route appeared before Put returned
	newLeaseCPU float64
}

func (s *scaleRun) run(ctx context.Context) error {
	h := s.lab.Hosts[0]
	own := h.Subnet
	fmt.Fprintf(s.out, "host %s: subnet %s, public IP %s\n", h.Name, own, h.Addr)

	// A cold start: no flanneld, no device, no entries; the lease and
	// subnet.env stay, as after a reboot.
	if err := s.lab.StopFlanneld(h, syscall.SIGTERM); err != nil {
		return err
	}
	if err := s.lab.DeleteLink(h, "flannel.1"); err != nil {
		return err
	}
	if err := s.lab.AddOnLinkRoute(h, lab.ScaleUnderlay); err != nil {
		return err
	}

	all := lab.FakeLeases(s.backend, own, s.peers+s.newLeases)
	initial, later := all[:s.peers], all[s.peers:]
	cli, err := s.lab.Etcd()
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
	if err := s.lab.PutLeases(ctx, cli, initial, g.ID); err != nil {
		return err
	}
	s.writeTime = time.Since(start)
	fmt.Fprintf(s.out, "wrote %d fake peer leases in %s (transactions of 128)\n", len(initial), s.writeTime.Round(time.Millisecond))

	w, err := lab.WatchEntries(h.NS)
	if err != nil {
		return err
	}
	defer w.Close()
	expect, err := lab.ExpectedEntries(s.backend, initial)
	if err != nil {
		return err
	}
	w.Expect(expect)
	s.want = lab.Counts{Routes: len(expect.Routes), Neighs: len(expect.Neighs), FDB: len(expect.FDB)}

	if err := s.measureSync(ctx, w); err != nil {
		return err
	}
	if err := s.measureNew(ctx, w, cli, g.ID, later); err != nil {
		return err
	}
	s.report()
	return nil
}

// measureSync starts flanneld and waits for every expected entry.
func (s *scaleRun) measureSync(ctx context.Context, w *lab.EntryWatch) error {
	h := s.lab.Hosts[0]
	req0, err := s.lab.EtcdRequests(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.out, "starting flanneld; waiting for %d routes, %d neighbours, %d FDB entries...\n",
		s.want.Routes, s.want.Neighs, s.want.FDB)
	start := time.Now()
	if err := s.lab.StartFlanneld(h); err != nil {
		return err
	}
	pid := h.FlanneldPID
	last, err := w.WaitExpected(ctx, 2*time.Minute, pid)
	if err != nil {
		have, want := w.Progress()
		return fmt.Errorf("waiting for the full sync (have %+v of %+v): %w", have, want, err)
	}
	s.syncTime = last.Sub(start)
	if s.rssSync, err = lab.RssAnon(pid); err != nil {
		return err
	}
	if s.syncCPU, err = lab.CPUSeconds(pid); err != nil {
		return err
	}
	if s.reqSync, err = s.lab.EtcdRequests(ctx); err != nil {
		return err
	}
	s.reqSync = s.reqSync.Sub(req0)
	dev, gwIn := "flannel.1", netip.Prefix{}
	if s.backend == "host-gw" {
		dev, gwIn = "", lab.ScaleUnderlay
	}
	if s.have, err = lab.CountEntries(h.NS, dev, gwIn); err != nil {
		return err
	}
	fmt.Fprintf(s.out, "full sync in %s\n", s.syncTime.Round(time.Millisecond))
	return nil
}

// measureNew writes leases one at a time, paced by s.interval, and times
// each from its Put returning to its route existing.
func (s *scaleRun) measureNew(ctx context.Context, w *lab.EntryWatch, cli *clientv3.Client, id clientv3.LeaseID, leases []lease.Lease) error {
	h := s.lab.Hosts[0]
	pid := h.FlanneldPID
	req0, err := s.lab.EtcdRequests(ctx)
	if err != nil {
		return err
	}
	cpu0, err := lab.CPUSeconds(pid)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.out, "writing %d new leases, one every %s...\n", len(leases), s.interval)
	next := time.Now()
	for i, l := range leases {
		if err := backoff.Sleep(ctx, time.Until(next)); err != nil {
			return err
		}
		next = next.Add(s.interval)
		k, v, err := s.lab.LeaseKV(l)
		if err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = cli.Put(pctx, k, v, clientv3.WithLease(id))
		cancel()
		if err != nil {
			return fmt.Errorf("put new lease %d: %w", i+1, err)
		}
		put := time.Now()
		r := lab.RouteOf(s.backend, l)
		at, err := w.WaitRoute(ctx, r.Dst, r.Gw, 10*time.Second, pid)
		if err != nil {
			return fmt.Errorf("route of new lease %s: %w", l.Subnet, err)
		}
		d := at.Sub(put)
		if d < 0 {
			// flanneld's watch event can beat our Put's response.
			s.before++
			d = 0
		}
		s.latencies = append(s.latencies, d)
	}
	cpu1, err := lab.CPUSeconds(pid)
	if err != nil {
		return err
	}
	s.newLeaseCPU = (cpu1 - cpu0) / float64(len(leases))
	if s.reqNew, err = s.lab.EtcdRequests(ctx); err != nil {
		return err
	}
	s.reqNew = s.reqNew.Sub(req0)
	// Our own puts are not flanneld's.
	s.reqNew.Started["Put"] -= int64(len(leases))
	if s.reqNew.Started["Put"] == 0 {
		delete(s.reqNew.Started, "Put")
	}
	if s.rssEnd, err = lab.RssAnon(pid); err != nil {
		return err
	}
	if s.peakRSS, err = lab.PeakRSS(pid); err != nil {
		return err
	}
	return nil
}

func (s *scaleRun) report() {
	lat := slices.Clone(s.latencies)
	slices.Sort(lat)
	p50, p99, worst := percentile(lat, 50), percentile(lat, 99), lat[len(lat)-1]
	// "No etcd request per peer": what flanneld asked for while starting
	// and syncing must not grow with the number of peers.
	reqLimit := int64(max(s.peers/100, 20))
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
	mb := func(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }
	verdict := func(ok bool) string {
		if ok {
			return "ok"
		}
		return "MISSED"
	}
	entriesOK := s.have == s.want

	fmt.Fprintf(s.out, "\nflanneld (%s) against %d peers, %d new leases one every %s:\n", s.backend, s.peers, s.newLeases, s.interval)
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tMEASURED\tTARGET\t")
	fmt.Fprintf(tw, "full sync: start → last entry\t%s\t≤ %s\t%s\n", ms(s.syncTime), targetSync, verdict(s.syncTime <= targetSync))
	fmt.Fprintf(tw, "entries in the kernel (route/neigh/fdb)\t%d/%d/%d\t%d/%d/%d\t%s\n",
		s.have.Routes, s.have.Neighs, s.have.FDB, s.want.Routes, s.want.Neighs, s.want.FDB, verdict(entriesOK))
	fmt.Fprintf(tw, "RssAnon after the sync\t%s\t≤ %s\t%s\n", mb(s.rssSync), mb(targetRSS), verdict(s.rssSync <= targetRSS))
	fmt.Fprintf(tw, "RssAnon after the new leases\t%s\t≤ %s\t%s\n", mb(s.rssEnd), mb(targetRSS), verdict(s.rssEnd <= targetRSS))
	fmt.Fprintf(tw, "new lease → route, p50\t%s\t\t\n", ms(p50))
	fmt.Fprintf(tw, "new lease → route, p99\t%s\t≤ %s\t%s\n", ms(p99), ms(targetLatency), verdict(p99 <= targetLatency))
	fmt.Fprintf(tw, "new lease → route, max\t%s\t\t\n", ms(worst))
	fmt.Fprintf(tw, "etcd requests, start + sync\t%d\t≪ %d peers (≤ %d)\t%s\n", s.reqSync.Total(), s.peers, reqLimit, verdict(s.reqSync.Total() <= reqLimit))
	fmt.Fprintf(tw, "etcd requests, %d new leases\t%d\t0\t%s\n", s.newLeases, s.reqNew.Total(), verdict(s.reqNew.Total() == 0))
	tw.Flush()

	fmt.Fprintf(s.out, "\netcd requests by method (start + sync): %s; watchers opened: %d\n", methods(s.reqSync), s.reqSync.Watchers)
	fmt.Fprintf(s.out, "etcd requests by method (new leases, besides our %d puts): %s\n", s.newLeases, methods(s.reqNew))
	fmt.Fprintf(s.out, "flanneld CPU: %.2f s from start to full sync, %.1f ms per new lease; peak RSS (VmHWM, incl. text) %s\n",
		s.syncCPU, s.newLeaseCPU*1000, mb(s.peakRSS))
	if s.before > 0 {
		fmt.Fprintf(s.out, "%d of %d new routes appeared before the Put returned (counted as 0 ms)\n", s.before, s.newLeases)
	}
	fmt.Fprintf(s.out, "writing the %d leases to etcd took %s\n", s.peers, s.writeTime.Round(time.Millisecond))
}

func methods(r lab.EtcdRequests) string {
	if len(r.Started) == 0 {
		return "none"
	}
	names := make([]string, 0, len(r.Started))
	for m := range r.Started {
		names = append(names, m)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, m := range names {
		parts[i] = fmt.Sprintf("%s %d", m, r.Started[m])
	}
	return strings.Join(parts, ", ")
}

// percentile returns the nearest-rank p-th percentile of sorted ds.
func percentile(ds []time.Duration, p int) time.Duration {
	i := (len(ds)*p + 99) / 100
	return ds[max(i-1, 0)]
}

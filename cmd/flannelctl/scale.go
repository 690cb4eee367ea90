package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
)

// Targets of the scale benchmark (issue 15): a full sync of ≤ 1 s at
// 5,000 peers and ≤ 5 s at 65,535, work per new lease independent of the
// number of peers.
const (
	targetRSS     = 100 << 20
	targetLatency = 50 * time.Millisecond
	targetCPU     = 2 * time.Millisecond // flanneld CPU per new lease
)

// maxPeers is the scale lab's address plan: the /24s of a /8, less ours.
const maxPeers = 1<<16 - 1

// targetSync scales the full-sync target between the two points.
func targetSync(peers int) time.Duration {
	if peers <= 5000 {
		return time.Second
	}
	return 5 * time.Second
}

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
	syncTimeout := fs.Duration("sync-timeout", 5*time.Minute, "how long to wait for the full sync")
	keep := fs.Bool("keep", false, "leave the lab up after a successful run, to look around (then: flannelctl lab down --id ID)")
	kubeMode := fs.Bool("kube", false, "Kubernetes mode (kubescale.go): the peers are Nodes in a real kube-apiserver, flanneld runs with --kube-subnet-mgr (vxlan)")
	updates := fs.Int("updates", 200, "with --kube: kubelet status updates the watch bytes per update are taken over")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kubeMode {
		return labScaleKube(ctx, kubeScaleFlags{id: *id, peers: *peers, newNodes: *newLeases, interval: *interval,
			flanneld: *flanneld, etcd: *etcdKind, syncTimeout: *syncTimeout, keep: *keep, updates: *updates}, stdout, stderr)
	}
	if *backendType != "vxlan" && *backendType != "host-gw" {
		return fmt.Errorf("lab scale: --backend %q: only vxlan and host-gw program per-peer kernel entries", *backendType)
	}
	if *peers < 1 || *newLeases < 1 || *peers+*newLeases > maxPeers {
		return fmt.Errorf("lab scale: --peers and --new must be at least 1 and add up to at most %d (the /24s of %s, less ours)", maxPeers, lab.ScaleNetwork)
	}
	bin, err := findFlanneld(*flanneld)
	if err != nil {
		return err
	}
	etcdCmd, err := etcdCommand(*etcdKind)
	if err != nil {
		return err
	}
	o := lab.ScaleOptions{Backend: *backendType, Peers: *peers, NewLeases: *newLeases, Interval: *interval, Progress: stdout,
		SyncTimeout: *syncTimeout}
	cfg := fmt.Sprintf(`{"Network":%q,"SubnetLen":24,"Backend":{"Type":%q}}`, lab.ScaleNetwork, *backendType)
	fmt.Fprintf(stdout, "building lab %s: 1 host, config %s\n", *id, cfg)
	lo := lab.Options{ID: *id, Hosts: 1, Config: cfg, Flanneld: bin, EtcdCmd: etcdCmd}
	return runScaleLab(ctx, "lab scale", lo, *keep, "", stdout, stderr, func(l *lab.Lab) error {
		r, err := l.RunScale(ctx, o)
		if err != nil {
			return err
		}
		report(stdout, o, r)
		return nil
	})
}

// runScaleLab brings up a lab with o (taking down what is left of an
// earlier one with its ID first) and runs bench on it. The lab comes down
// on every return, including Ctrl-C (ctx ending makes each wait in bench
// return) and a panic, unless keep is set and bench succeeded; keptNote
// then says what of the lab is not kept. When bench fails, the end of
// flanneld's log is printed.
func runScaleLab(ctx context.Context, name string, o lab.Options, keep bool, keptNote string, stdout, stderr io.Writer,
	bench func(*lab.Lab) error) error {
	_ = lab.Down(o.ID)
	l, err := lab.Up(ctx, o)
	if err != nil {
		return err
	}
	keepUp := false
	defer func() {
		if keepUp {
			return
		}
		if derr := l.Down(); derr != nil {
			fmt.Fprintf(stderr, "lab scale: tear down %s: %v\n", o.ID, derr)
		}
	}()
	if err := bench(l); err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(stderr, "last lines of flanneld's log:\n%s\n", tailFile(l.LogFile(l.Hosts[0]), 15))
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	if keep {
		keepUp = true
		fmt.Fprintf(stdout, "\nlab %s is still up%s (flanneld log: %s); flannelctl lab down --id %s\n",
			o.ID, keptNote, l.LogFile(l.Hosts[0]), o.ID)
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

// report prints r against the targets.
func report(out io.Writer, o lab.ScaleOptions, r lab.ScaleResult) {
	lat := slices.Clone(r.Latencies)
	slices.Sort(lat)
	p50, p99, worst := percentile(lat, 50), percentile(lat, 99), lat[len(lat)-1]
	// "No etcd request per peer": what flanneld asked for while starting
	// and syncing must not grow with the number of peers.
	reqLimit := int64(max(o.Peers/100, 20))
	entriesOK := r.Have == r.Want

	fmt.Fprintf(out, "\nmachine: %s\n", lab.MachineDescription())
	fmt.Fprintf(out, "flanneld (%s) against %d peers, %d new leases one every %s:\n", o.Backend, o.Peers, o.NewLeases, o.Interval)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tMEASURED\tTARGET\t")
	ts := targetSync(o.Peers)
	cpu := time.Duration(r.NewLeaseCPU * float64(time.Second))
	fmt.Fprintf(tw, "full sync: start → last entry\t%s\t≤ %s\t%s\n", ms(r.SyncTime), ts, verdict(r.SyncTime <= ts))
	fmt.Fprintf(tw, "entries in the kernel (route/neigh/fdb)\t%d/%d/%d\t%d/%d/%d\t%s\n",
		r.Have.Routes, r.Have.Neighs, r.Have.FDB, r.Want.Routes, r.Want.Neighs, r.Want.FDB, verdict(entriesOK))
	fmt.Fprintf(tw, "RssAnon after the sync\t%s\t≤ %s\t%s\n", mb(r.RSSSync), mb(targetRSS), verdict(r.RSSSync <= targetRSS))
	fmt.Fprintf(tw, "RssAnon after the new leases\t%s\t≤ %s\t%s\n", mb(r.RSSEnd), mb(targetRSS), verdict(r.RSSEnd <= targetRSS))
	fmt.Fprintf(tw, "new lease → route, p50\t%s\t\t\n", ms(p50))
	fmt.Fprintf(tw, "new lease → route, p99\t%s\t≤ %s\t%s\n", ms(p99), ms(targetLatency), verdict(p99 <= targetLatency))
	fmt.Fprintf(tw, "new lease → route, max\t%s\t\t\n", ms(worst))
	fmt.Fprintf(tw, "flanneld CPU per new lease\t%s\t≤ %s\t%s\n", ms(cpu), ms(targetCPU), verdict(cpu <= targetCPU))
	fmt.Fprintf(tw, "etcd requests, start + sync\t%d\t≪ %d peers (≤ %d)\t%s\n", r.ReqSync.Total(), o.Peers, reqLimit, verdict(r.ReqSync.Total() <= reqLimit))
	fmt.Fprintf(tw, "etcd requests, %d new leases\t%d\t0\t%s\n", o.NewLeases, r.ReqNew.Total(), verdict(r.ReqNew.Total() == 0))
	tw.Flush()

	fmt.Fprintf(out, "\n| peers | full sync | new lease → route p50 / p99 | flanneld CPU per new lease | RssAnon | etcd requests (sync / new) |\n|---|---|---|---|---|---|\n")
	fmt.Fprintf(out, "| %d | %.2f s | %.0f / %.0f ms | %.1f ms | %.0f-%.0f MB | %d / %d |\n", o.Peers, r.SyncTime.Seconds(),
		float64(p50.Microseconds())/1000, float64(p99.Microseconds())/1000, float64(cpu.Microseconds())/1000,
		float64(min(r.RSSSync, r.RSSEnd))/(1<<20), float64(max(r.RSSSync, r.RSSEnd))/(1<<20), r.ReqSync.Total(), r.ReqNew.Total())

	fmt.Fprintf(out, "\netcd requests by method (start + sync): %s; watchers opened: %d\n", methods(r.ReqSync), r.ReqSync.Watchers)
	fmt.Fprintf(out, "etcd requests by method (new leases, besides our %d puts): %s\n", o.NewLeases, methods(r.ReqNew))
	fmt.Fprintf(out, "flanneld CPU: %.2f s from start to full sync, %.2f s settling after it (its first repair pass, in %s), %.1f ms per new lease; peak RSS (VmHWM, incl. text) %s\n",
		r.SyncCPU, r.SettleCPU, r.SettleTime.Round(100*time.Millisecond), r.NewLeaseCPU*1000, mb(r.PeakRSS))
	if r.Before > 0 {
		fmt.Fprintf(out, "%d of %d new routes appeared before the Put returned (counted as 0 ms)\n", r.Before, o.NewLeases)
	}
	fmt.Fprintf(out, "writing the %d leases to etcd took %s\n", o.Peers, r.WriteTime.Round(time.Millisecond))
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

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

// percentile returns the nearest-rank p-th percentile of sorted ds.
func percentile(ds []time.Duration, p int) time.Duration {
	i := (len(ds)*p + 99) / 100
	return ds[max(i-1, 0)]
}

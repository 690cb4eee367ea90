package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
)

// Targets of the Kubernetes-mode scale benchmark (issue 10) at 5,000
// Nodes.
const (
	kubeTargetSync    = 5 * time.Second
	kubeTargetRSS     = 80 << 20
	kubeTargetLatency = 100 * time.Millisecond
)

// kubeScaleFlags are `lab scale`'s flags that --kube uses.
type kubeScaleFlags struct {
	id, flanneld, etcd string
	peers, newNodes    int
	updates            int
	interval           time.Duration
	syncTimeout        time.Duration
	keep               bool
}

// labScaleKube is `lab scale --kube`: one real flanneld in Kubernetes
// mode against thousands of kubelet-like Nodes in a real API server.
func labScaleKube(ctx context.Context, f kubeScaleFlags, stdout, stderr io.Writer) error {
	if f.peers < 1 || f.newNodes < 1 || f.peers+f.newNodes > maxPeers {
		return fmt.Errorf("lab scale --kube: --peers and --new must be at least 1 and add up to at most %d", maxPeers)
	}
	bin, err := findFlanneld(f.flanneld)
	if err != nil {
		return err
	}
	api, err := kubeapi.Binary()
	if err != nil {
		return fmt.Errorf("lab scale --kube: %w", err)
	}
	etcdCmd, err := etcdCommand(f.etcd)
	if err != nil {
		return err
	}
	o := lab.KubeScaleOptions{APIServer: api, Peers: f.peers, NewNodes: f.newNodes, Interval: f.interval,
		Updates: f.updates, Progress: stdout, SyncTimeout: f.syncTimeout}
	fmt.Fprintf(stdout, "building lab %s: 1 host, Kubernetes mode (vxlan, Network %s)\n", f.id, lab.ScaleNetwork)
	cfg := fmt.Sprintf(`{"Network":%q,"SubnetLen":24,"Backend":{"Type":"vxlan"}}`, lab.ScaleNetwork)
	lo := lab.Options{ID: f.id, Hosts: 1, Config: cfg, Flanneld: bin, EtcdCmd: etcdCmd, NoFlanneld: true}
	return runScaleLab(ctx, "lab scale --kube", lo, f.keep, ", without its API server", stdout, stderr, func(l *lab.Lab) error {
		r, err := l.RunKubeScale(ctx, o)
		if err != nil {
			return err
		}
		reportKube(stdout, o, r)
		return nil
	})
}

// reportKube prints r against the targets.
func reportKube(out io.Writer, o lab.KubeScaleOptions, r lab.KubeScaleResult) {
	lat := slices.Clone(r.Latencies)
	slices.Sort(lat)
	p50, p99, worst := percentile(lat, 50), percentile(lat, 99), lat[len(lat)-1]
	ratio := r.Ours.BytesPerUpdate / r.Upstream.BytesPerUpdate

	fmt.Fprintf(out, "\nmachine: %s\n", lab.MachineDescription())
	fmt.Fprintf(out, "flanneld (Kubernetes mode, vxlan) against %d Nodes (%d B each in protobuf), %d new nodes one every %s:\n",
		o.Peers, r.BytesPerObj, o.NewNodes, o.Interval)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tMEASURED\tTARGET\t")
	fmt.Fprintf(tw, "full sync: start → last entry\t%s\t≤ %s\t%s\n", ms(r.SyncTime), kubeTargetSync, verdict(r.SyncTime <= kubeTargetSync))
	fmt.Fprintf(tw, "entries in the kernel (route/neigh/fdb)\t%d/%d/%d\t%d/%d/%d\t%s\n",
		r.Have.Routes, r.Have.Neighs, r.Have.FDB, r.Want.Routes, r.Want.Neighs, r.Want.FDB, verdict(r.Have == r.Want))
	fmt.Fprintf(tw, "RssAnon after the sync\t%s\t≤ %s\t%s\n", mb(r.RSSSync), mb(kubeTargetRSS), verdict(r.RSSSync <= kubeTargetRSS))
	fmt.Fprintf(tw, "RssAnon after the new nodes\t%s\t≤ %s\t%s\n", mb(r.RSSEnd), mb(kubeTargetRSS), verdict(r.RSSEnd <= kubeTargetRSS))
	fmt.Fprintf(tw, "new node → route, p50\t%s\t\t\n", ms(p50))
	fmt.Fprintf(tw, "new node → route, p99\t%s\t≤ %s\t%s\n", ms(p99), ms(kubeTargetLatency), verdict(p99 <= kubeTargetLatency))
	fmt.Fprintf(tw, "new node → route, max\t%s\t\t\n", ms(worst))
	fmt.Fprintf(tw, "watch bytes per node update: ours / upstream's way\t%.0f / %.0f B (%.0f%%)\t≤ 33%%\t%s\n",
		r.Ours.BytesPerUpdate, r.Upstream.BytesPerUpdate, 100*ratio, verdict(3*r.Ours.BytesPerUpdate <= r.Upstream.BytesPerUpdate))
	tw.Flush()

	fmt.Fprintf(out, "\nwatching the Nodes in this process, with flanneld's code, ours beside upstream's way (JSON, whole Nodes kept):\n")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WAY\tINITIAL SYNC\tREAD PER NODE\tHEAP PER NODE\tREAD PER UPDATE\t")
	for _, w := range []struct {
		name string
		c    lab.WatchCost
	}{{"ours (protobuf; updates as metadata)", r.Ours}, {"upstream's (JSON, whole Nodes)", r.Upstream}} {
		fmt.Fprintf(tw, "%s\t%s\t%.0f B\t%.0f B\t%.0f B\t\n", w.name, ms(w.c.SyncTime), w.c.SyncBytesPerNode, w.c.HeapPerNode, w.c.BytesPerUpdate)
	}
	tw.Flush()
	fmt.Fprintf(out, "(per update: over %d kubelet status updates to random nodes and one annotation change)\n", r.Updates)

	fmt.Fprintf(out, "\n| Nodes | full sync | new node → route p50 / p99 | flanneld CPU per new node | RssAnon | watch bytes per update, ours / upstream's way |\n|---|---|---|---|---|---|\n")
	fmt.Fprintf(out, "| %d | %.2f s | %.0f / %.0f ms | %.1f ms | %.0f-%.0f MB | %.0f / %.0f B (%.0f%%) |\n", o.Peers, r.SyncTime.Seconds(),
		float64(p50.Microseconds())/1000, float64(p99.Microseconds())/1000, r.NewNodeCPU*1000,
		float64(min(r.RSSSync, r.RSSEnd))/(1<<20), float64(max(r.RSSSync, r.RSSEnd))/(1<<20),
		r.Ours.BytesPerUpdate, r.Upstream.BytesPerUpdate, 100*ratio)
	fmt.Fprintf(out, "\nflanneld CPU: %.2f s from start to full sync, %.1f ms per new node; peak RSS (VmHWM, incl. text) %s\n",
		r.SyncCPU, r.NewNodeCPU*1000, mb(r.PeakRSS))
	if r.Before > 0 {
		fmt.Fprintf(out, "%d of %d new routes appeared before the annotation patch returned (counted as 0 ms)\n", r.Before, o.NewNodes)
	}
	fmt.Fprintf(out, "creating the %d Nodes (kubelet, controller-manager, flanneld: 4 writes each) took %s\n", o.Peers, r.CreateTime.Round(time.Millisecond))
}

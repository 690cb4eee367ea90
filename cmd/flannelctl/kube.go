package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/flannel-go/flannel/internal/doctor"
	"github.com/flannel-go/flannel/internal/etcdconf"
	"github.com/flannel-go/flannel/internal/flagenv"
	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/kubestate"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/status"
)

// kubeFlags select Kubernetes mode, where the leases are the Nodes'
// podCIDRs and flannel's annotations on them.
type kubeFlags struct {
	on         bool // Kubernetes mode; set by resolve
	subnetMgr  bool
	kubeconfig string
	context    string
	prefix     string
	nodeName   string
	netConf    string
}

// kubeEnvFlags fall back to FLANNELD_<NAME> as flanneld's do.
var kubeEnvFlags = map[string]bool{"kube-subnet-mgr": true, "kube-annotation-prefix": true, "net-config-path": true}

func (k *kubeFlags) register(fs *flag.FlagSet) {
	env := func(name string) string { return " (env " + flagenv.Name(etcdconf.EnvPrefix, name) + ")" }
	fs.BoolVar(&k.subnetMgr, "kube-subnet-mgr", false, "Kubernetes mode: leases are the nodes' podCIDRs and annotations (implied by --kubeconfig, or by $KUBECONFIG without --etcd-* flags)"+env("kube-subnet-mgr"))
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file, as kubectl's; default: $KUBECONFIG, else ~/.kube/config, else the in-cluster config")
	fs.StringVar(&k.context, "context", "", "kubeconfig context, as kubectl's")
	fs.StringVar(&k.prefix, "kube-annotation-prefix", kube.DefaultAnnotationPrefix, "prefix of flannel's node annotations, as flanneld's"+env("kube-annotation-prefix"))
	fs.StringVar(&k.nodeName, "node-name", "", "this host's node (default: $NODE_NAME, else the node of the pod $POD_NAME in $POD_NAMESPACE, as flanneld)")
	fs.StringVar(&k.netConf, "net-config-path", kube.DefaultNetConfPath, "network config file, as flanneld's; when absent, the kube-flannel-cfg ConfigMap"+env("net-config-path"))
}

// resolve decides the mode, before the etcd flags take their variables:
// --kube-subnet-mgr (or FLANNELD_KUBE_SUBNET_MGR) says it; else
// --kubeconfig means Kubernetes; else $KUBECONFIG does, unless an --etcd-*
// flag or FLANNELD_ETCD_ENDPOINTS was given.
func (k *kubeFlags) resolve(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	etcdGiven := ""
	fs.Visit(func(f *flag.Flag) {
		given[f.Name] = true
		if strings.HasPrefix(f.Name, "etcd-") {
			etcdGiven = f.Name
		}
	})
	if err := flagenv.Set(fs, etcdconf.EnvPrefix, getenv, func(name string) bool { return kubeEnvFlags[name] }); err != nil {
		return usageError{err}
	}
	mgrSet := given["kube-subnet-mgr"] || getenv(flagenv.Name(etcdconf.EnvPrefix, "kube-subnet-mgr")) != ""
	switch {
	case mgrSet:
		k.on = k.subnetMgr
	case k.kubeconfig != "":
		k.on = true
	default:
		// A kubeconfig in the environment means Kubernetes, as for
		// kubectl, unless etcd is named too.
		etcdEnv := getenv(flagenv.Name(etcdconf.EnvPrefix, "etcd-endpoints")) != ""
		k.on = getenv("KUBECONFIG") != "" && etcdGiven == "" && !etcdEnv
	}
	switch {
	case k.on && etcdGiven != "":
		return usagef("--%s: Kubernetes mode (--kube-subnet-mgr, --kubeconfig) reads no etcd", etcdGiven)
	case !k.on && k.kubeconfig != "":
		return usagef("--kubeconfig needs Kubernetes mode, but --kube-subnet-mgr=false")
	}
	if _, err := kube.ParseAnnotationPrefix(k.prefix); err != nil {
		return usageError{err}
	}
	return nil
}

// openKube builds the API client; it sends no request.
func (c *conn) openKube(e opsEnv) (*kubestate.Cluster, error) {
	return kubestate.Open(kubestate.Options{
		Kubeconfig:       c.kube.kubeconfig,
		Context:          c.kube.context,
		AnnotationPrefix: c.kube.prefix,
		NodeName:         c.kube.nodeName,
		NetConfPath:      c.kube.netConf,
		Timeout:          c.timeout,
		Getenv:           e.getenv,
	})
}

// kubeNetConfig is the network config when one can be read; the commands
// work without it (the nodes say their families), saying why on stderr
// when it is broken rather than missing.
func kubeNetConfig(ctx context.Context, k *kubestate.Cluster, e opsEnv) *netconf.Config {
	cfg, _, err := k.NetConfig(ctx)
	if ne := (*netconf.Error)(nil); errors.As(err, &ne) {
		fmt.Fprintf(e.stderr, "flannelctl: warning: %v\n", err)
	}
	return cfg
}

// configGetKube prints the network config flanneld reads in Kubernetes
// mode, saying on stderr where it came from.
func configGetKube(ctx context.Context, c *conn, e opsEnv) error {
	k, err := c.openKube(e)
	if err != nil {
		return fmt.Errorf("config get: %w", err)
	}
	raw, where, err := k.RawNetConfig(ctx)
	if err != nil {
		return fmt.Errorf("config get: %w", err)
	}
	fmt.Fprintf(e.stderr, "flannelctl: network config from %s\n", where)
	if !bytes.HasSuffix(raw, []byte("\n")) {
		raw = append(raw, '\n')
	}
	_, err = e.stdout.Write(raw)
	return err
}

func leasesKube(ctx context.Context, c *conn, sub string, pos []string, asJSON bool, e opsEnv) error {
	if sub == "reserve" || sub == "release" {
		return fmt.Errorf("leases %s: in Kubernetes mode a node's subnet is its spec.podCIDR, which kube-controller-manager assigns; there is nothing to %s", sub, sub)
	}
	k, err := c.openKube(e)
	if err != nil {
		return fmt.Errorf("leases %s: %w", sub, err)
	}
	cfg := kubeNetConfig(ctx, k, e)
	if sub == "list" {
		ls, err := k.Leases(ctx, cfg)
		if err != nil {
			return fmt.Errorf("leases list: %w", err)
		}
		return kubeLeasesList(ls, asJSON, e)
	}
	l, err := k.Find(ctx, pos[0], cfg)
	if err != nil {
		return fmt.Errorf("leases show: %w", err)
	}
	if l.Err != nil {
		return fmt.Errorf("leases show: node %q: %w (its peers ignore it)", l.Node, l.Err)
	}
	n, err := k.Node(ctx, l.Node, cfg)
	if err != nil {
		return fmt.Errorf("leases show: %w", err)
	}
	return kubeLeaseShow(n, asJSON, e.stdout)
}

func kubeLeasesList(ls []kubestate.NodeLease, asJSON bool, e opsEnv) error {
	for _, l := range ls {
		if l.Err != nil {
			fmt.Fprintf(e.stderr, "flannelctl: warning: node %q: %v (its peers ignore it)\n", l.Node, l.Err)
		}
	}
	if asJSON {
		out := make([]status.LeaseInfo, 0, len(ls))
		for _, l := range ls {
			j := status.NodeInfo(l.Node, l.Lease)
			if l.Err != nil {
				j.Error = l.Err.Error()
			}
			out = append(out, j)
		}
		return writeJSON(e.stdout, out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tBACKEND\tVTEP MAC\tNODE")
	for _, l := range ls {
		j := status.NodeInfo(l.Node, l.Lease)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", dash(joinNonEmpty(j.Subnet, j.Subnet6)), dash(joinNonEmpty(j.PublicIP, j.PublicIPv6)),
			dash(j.Backend), dash(status.VtepMAC(l.Lease)), l.Node)
	}
	return tw.Flush()
}

func kubeLeaseShow(n kubestate.Node, asJSON bool, w io.Writer) error {
	j := status.NodeInfo(n.Name, n.Lease)
	if asJSON {
		return writeJSON(w, j)
	}
	f := newFields(w)
	row := f.row
	row("node", n.Name)
	row("subnet", j.Subnet)
	row("IPv6 subnet", j.Subnet6)
	row("public IP", j.PublicIP)
	row("public IPv6", j.PublicIPv6)
	row("backend", cmp.Or(j.Backend, "- (udp or alloc)"))
	row("backend data", string(j.BackendData))
	row("backend v6 data", string(j.BackendV6Data))
	row("VTEP MAC", status.VtepMAC(n.Lease))
	for _, k := range []string{n.Keys.PublicIPOverwrite, n.Keys.PublicIPv6Overwrite} {
		if v, ok := n.Annotations[k]; ok {
			row("overwritten by", k+"="+v)
		}
	}
	cond := "none"
	if c := n.NetworkUnavailable; c != nil {
		cond = c.Status
		if c.Reason != "" {
			cond += " (" + c.Reason + ")"
		}
	}
	row("NetworkUnavailable", cond)
	return f.flush()
}

func joinNonEmpty(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "," + b
}

func dash(s string) string { return cmp.Or(s, "-") }

// statusKube is status in Kubernetes mode.
func statusKube(ctx context.Context, c *conn, o status.Options, e opsEnv) status.Status {
	k, err := c.openKube(e)
	if err != nil {
		return status.CollectKube(ctx, o, nil, err, doctor.NewSystem())
	}
	return status.CollectKube(ctx, o, k, nil, doctor.NewSystem())
}

// doctorKube fills the doctor's input in Kubernetes mode.
func doctorKube(ctx context.Context, c *conn, in *doctor.Input, e opsEnv) {
	in.Kube = &doctor.KubeInput{}
	k, err := c.openKube(e)
	if err != nil {
		in.Kube.Err, in.EtcdErr = err, err
		return
	}
	in.Config = kubeNetConfig(ctx, k, e)
	name, err := k.NodeName(ctx)
	if err == nil {
		in.Kube.Node, err = k.Node(ctx, name, in.Config)
	}
	in.Kube.Err = err
	ls, err := k.Leases(ctx, in.Config)
	if err != nil {
		in.EtcdErr = err
		return
	}
	for _, l := range ls {
		if l.Err == nil {
			in.Leases = append(in.Leases, l.Lease)
		}
	}
}

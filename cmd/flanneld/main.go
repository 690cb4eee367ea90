// Command flanneld is the flannel overlay network agent: one runs on every
// host, leases the host a subnet of the overlay from etcd, writes
// /run/flannel/subnet.env for Docker or CNI, and forwards traffic to the
// other hosts' subnets through the configured backend.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"k8s.io/klog/v2"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/backend/alloc"
	"github.com/flannel-go/flannel/internal/backend/hostgw"
	"github.com/flannel-go/flannel/internal/backend/udp"
	"github.com/flannel-go/flannel/internal/backend/vxlan"
	"github.com/flannel-go/flannel/internal/backend/wireguard"
	"github.com/flannel-go/flannel/internal/daemon"
	"github.com/flannel-go/flannel/internal/etcdconf"
	"github.com/flannel-go/flannel/internal/health"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/kube"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/masq"
	"github.com/flannel-go/flannel/internal/metrics"
	"github.com/flannel-go/flannel/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	o, err := parseOptions(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "flanneld: %v\n", err)
		return 1
	}
	if o.version {
		fmt.Fprintln(stderr, version.Version)
		return 0
	}
	log := newLogger(o, stderr)
	warnStray(log, o.stray)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The udp backend's settings that concern the whole process are
	// decided here: offloads, the datapath (eBPF or userspace) and how
	// the eBPF one delivers to containers come from the environment (the
	// last also from the subnet manager), and the userspace datapath may
	// take one more P per forwarding loop.
	udpOpts := udp.Options{
		Offloads: getenv(udp.OffloadEnv), Datapath: getenv(udp.DatapathEnv), RaiseGOMAXPROCS: true,
		Deliver: getenv(udp.DeliverEnv),
		XDP:     getenv(udp.XDPEnv),
	}
	if err := serve(ctx, o, getenv, udpOpts, log); err != nil {
		log.Error("exiting", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// warnStray warns once per stray positional argument, naming the flag it
// was probably meant as, and goes on: upstream starts with them too.
func warnStray(log *slog.Logger, stray []string) {
	isFlag := func(name string) bool { return newFlagSet(&options{}).Lookup(name) != nil }
	ifaceExists := func(name string) bool {
		_, err := net.InterfaceByName(name)
		return err == nil
	}
	for _, a := range stray {
		log.Warn(fmt.Sprintf("ignoring argument %q: flanneld takes only flags; %s", a, strayHint(a, isFlag, ifaceExists)))
	}
}

func newLogger(o *options, w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if o.verbosity > 0 {
		level = slog.LevelDebug
	}
	hopts := &slog.HandlerOptions{Level: level}
	if o.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, hopts))
	}
	return slog.New(slog.NewTextHandler(w, hopts))
}

// backends is every datapath this flanneld can run, by config Type.
func backends(udpOpts udp.Options, wgOpts wireguard.Options) map[string]backend.Def {
	return map[string]backend.Def{
		vxlan.Type:     {Info: vxlan.Info, New: vxlan.New},
		hostgw.Type:    {Info: hostgw.Info, New: hostgw.New},
		udp.Type:       {Info: udp.Info, New: udpOpts.New},
		alloc.Type:     {Info: alloc.Info, New: alloc.New},
		wireguard.Type: {Info: wireguard.Info, New: wgOpts.New},
	}
}

func serve(ctx context.Context, o *options, getenv func(string) string, udpOpts udp.Options, log *slog.Logger) error {
	m := metrics.New()
	udpOpts.Collector = &udp.Collector{}
	if err := m.Register(udpOpts.Collector); err != nil {
		return err
	}
	src, closeSrc, err := openSource(ctx, o, getenv, log, m)
	if err != nil {
		return err
	}
	defer closeSrc()

	d := daemon.New(daemon.Config{
		SubnetFile:     o.subnetFile,
		IPMasq:         o.ipMasq,
		FullyRandom:    !o.fullyRandomOff,
		ForwardRules:   o.iptablesForward,
		RulesResync:    secs(o.iptablesResync),
		BlackholeRoute: o.ipBlackholeRoute,
	}, daemon.Deps{
		Source:   src,
		Backends: backends(udpOpts, wireguard.Options{KeyFile: getenv(wireguard.KeyFileEnv)}),
		Ext: func(ipv6 bool) (iface.ExtIface, error) {
			pub, pub6, err := publicIPs(ctx, o, src)
			if err != nil {
				return iface.ExtIface{}, err
			}
			return iface.Lookup(iface.Options{
				Ifaces: o.ifaces, Regexes: o.ifaceRegexes, CanReach: o.ifaceCanReach,
				PublicIP: pub, PublicIPv6: pub6, IPv6: ipv6,
			})
		},
		NewRules: func(nft bool) (daemon.Rules, error) {
			kind := masq.IPTables
			if nft {
				kind = masq.NFTables
			}
			return masq.New(kind, log.With("component", "rules"))
		},
		Notify: func() {
			if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
				log.Warn("sd_notify", "err", err)
			}
		},
		Log:         log,
		Metrics:     m,
		WatchKernel: daemon.WatchKernelDeletes,
	})

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.healthzPort > 0 {
		hs, err := health.Listen(o.healthAddr(), d.Ready, map[string]http.Handler{"/metrics": m.Handler()})
		if err != nil {
			return err
		}
		log.Info("serving /healthz, /readyz and /metrics", "addr", hs.Addr())
		wg.Go(func() {
			if err := hs.Serve(ctx, log); err != nil {
				log.Error("health server", "err", err)
			}
		})
	}
	return d.Run(ctx)
}

func netJoin(host, port string) string { return net.JoinHostPort(host, port) }

// openSource opens where the config and the leases come from: the
// Kubernetes API with --kube-subnet-mgr, else etcd (the keyspace
// --etcd-api names, or the one holding the config).
func openSource(ctx context.Context, o *options, getenv func(string) string, log *slog.Logger, m *metrics.Metrics) (lease.Source, func(), error) {
	if o.kubeSubnetMgr {
		log.Info("starting flanneld", "version", version.Version, "mode", "kubernetes", "net_conf", o.netConfigPath)
		// client-go logs through klog: into our log, in our format.
		klog.SetSlogLogger(log.With("component", "client-go"))
		ks, err := kube.New(ctx, kube.Options{
			APIURL: o.kubeAPIURL, Kubeconfig: o.kubeconfigFile, AnnotationPrefix: o.kubeAnnotation,
			NetConfPath: o.netConfigPath, SetNodeNetworkUnavailable: o.setNodeNetUnavail,
			Getenv: getenv, Log: log.With("component", "kube"),
		})
		if err != nil {
			return nil, nil, err
		}
		return ks, func() {}, nil
	}
	log.Info("starting flanneld", "version", version.Version, "etcd", strings.Join(o.etcd.Endpoints, ","), "prefix", o.etcd.Prefix)
	store, err := etcdconf.Open(o.etcd, log, etcdconf.Hooks{OnConnState: m.EtcdConn})
	if err != nil {
		return nil, nil, err
	}
	src := lease.NewStoreSource(store, lease.StoreSourceOptions{
		TTL: o.leaseTTL, RenewMargin: o.renewMarginFor(), Prefix: o.etcd.Prefix,
		OnError: func(error) { m.EtcdError() }, Log: log,
	})
	return src, func() { store.Close() }, nil
}

// nodePublicIPer is a lease source that can name this host's public
// addresses (the Kubernetes source: the node-public-ip annotations).
type nodePublicIPer interface {
	NodePublicIP(ctx context.Context) (v4, v6 netip.Addr, err error)
}

// publicIPs returns --public-ip and --public-ipv6, overridden by what the
// lease source says of this host (as upstream honours node-public-ip).
func publicIPs(ctx context.Context, o *options, src lease.Source) (v4, v6 string, err error) {
	v4, v6 = o.publicIP, o.publicIPv6
	p, ok := src.(nodePublicIPer)
	if !ok {
		return v4, v6, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	a4, a6, err := p.NodePublicIP(ctx)
	if err != nil {
		return "", "", err
	}
	if a4.IsValid() {
		v4 = a4.String()
	}
	if a6.IsValid() {
		v6 = a6.String()
	}
	return v4, v6, nil
}

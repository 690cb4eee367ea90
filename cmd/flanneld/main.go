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
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The udp backend's settings that concern the whole process are
	// decided here: offloads come from the environment, and the datapath
	// may take one more P per forwarding loop.
	udpOpts := udp.Options{Offloads: getenv(udp.OffloadEnv), RaiseGOMAXPROCS: true}
	if err := serve(ctx, o, udpOpts, log); err != nil {
		log.Error("exiting", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
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
func backends(udpOpts udp.Options) map[string]backend.Def {
	return map[string]backend.Def{
		vxlan.Type:     {Info: vxlan.Info, New: vxlan.New},
		hostgw.Type:    {Info: hostgw.Info, New: hostgw.New},
		udp.Type:       {Info: udp.Info, New: udpOpts.New},
		alloc.Type:     {Info: alloc.Info, New: alloc.New},
		wireguard.Type: {Info: wireguard.Info, New: wireguard.Options{KeyFile: os.Getenv(wireguard.KeyFileEnv)}.New},
	}
}

func serve(ctx context.Context, o *options, udpOpts udp.Options, log *slog.Logger) error {
	log.Info("starting flanneld", "version", version.Version, "etcd", strings.Join(o.etcd.Endpoints, ","), "prefix", o.etcd.Prefix)
	m := metrics.New()
	udpOpts.Collector = &udp.Collector{}
	if err := m.Register(udpOpts.Collector); err != nil {
		return err
	}
	store, err := etcdconf.Open(o.etcd, log, etcdconf.Hooks{OnConnState: m.EtcdConn})
	if err != nil {
		return err
	}
	defer store.Close()

	src := lease.NewStoreSource(store, lease.StoreSourceOptions{
		TTL: o.leaseTTL, RenewMargin: o.renewMarginFor(), Prefix: o.etcd.Prefix,
		OnError: func(error) { m.EtcdError() }, Log: log,
	})
	d := daemon.New(daemon.Config{
		SubnetFile:     o.subnetFile,
		IPMasq:         o.ipMasq,
		FullyRandom:    !o.fullyRandomOff,
		ForwardRules:   o.iptablesForward,
		RulesResync:    secs(o.iptablesResync),
		BlackholeRoute: o.ipBlackholeRoute,
	}, daemon.Deps{
		Source:   src,
		Backends: backends(udpOpts),
		Ext: func(ipv6 bool) (iface.ExtIface, error) {
			return iface.Lookup(iface.Options{
				Ifaces: o.ifaces, Regexes: o.ifaceRegexes, CanReach: o.ifaceCanReach,
				PublicIP: o.publicIP, PublicIPv6: o.publicIPv6, IPv6: ipv6,
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

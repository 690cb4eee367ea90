// Package lab builds a multi-host flannel overlay on one machine: hosts are
// network namespaces joined by a bridge in a "switch" namespace, a real etcd
// (or a cluster of etcd members) runs in its own namespace, one flanneld
// process runs per host, and each host has a "container" namespace behind a
// docker0-style bridge configured from subnet.env the way Docker's
// --bip/--mtu would. In Kubernetes mode (Options.Kube) a real
// kube-apiserver runs on the lab's etcd, each host is a Node, flanneld runs
// with --kube-subnet-mgr and the "containers" are pods created through CNI.
// `flannelctl lab` and the end-to-end tests both use it;
// the fault tests also stop and restart etcd, kill etcd members and ping in
// the background. Nothing is added to the root namespace.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/flannel-go/flannel/internal/backend/wireguard"
	"github.com/flannel-go/flannel/internal/lab/proc"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/ns"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// StateRoot holds one directory per lab: state.json, logs, subnet files
// and etcd data.
const StateRoot = "/run/flannel-lab"

// Options describe a lab.
type Options struct {
	ID       string // names every namespace: <ID>-sw, <ID>-etcd, <ID>-h1, <ID>-c1, ...
	Hosts    int
	Config   string // network config JSON written to <Prefix>/config
	Prefix   string // etcd prefix, default /coreos.com/network
	Flanneld string // path to the flanneld binary
	// EtcdCmd starts etcd inside the etcd namespace; it is given the
	// client URL to listen on and the data dir. Empty EtcdEndpoints means
	// the lab runs its own.
	EtcdCmd       func(listen, dataDir string) []string
	EtcdEndpoints []string
	FlanneldArgs  []string // extra flags for every flanneld
	// FlanneldWrap, when set, is put in front of every flanneld's command
	// line (inside the host's namespace), e.g. confine.Unit.Prefix to run
	// it as a systemd unit confines it.
	FlanneldWrap []string
	Underlay     netip.Prefix
	// Underlay6, when valid, also gives every host an IPv6 address of
	// it on eth0 (hosts ::11, ::12, ...; etcd stays on IPv4), for
	// backends whose endpoints can be IPv6.
	Underlay6 netip.Prefix
	Log       *slog.Logger

	// EtcdMembers > 1 runs an etcd cluster of that many members instead of
	// EtcdCmd's single one, each in its own namespace <ID>-e1, <ID>-e2, ...
	// started with EtcdMemberCmd (see SystemEtcdMember).
	EtcdMembers   int
	EtcdMemberCmd func(m EtcdMember) []string

	// NoFlanneld builds the hosts and writes the config but starts no
	// flanneld and no container: the caller starts each host with
	// StartFlanneld, WaitSubnet and SetupContainer when it wants to.
	NoFlanneld bool
	// NoContainers starts every flanneld but gives no host a container.
	NoContainers bool
	// Kube, when set, runs the lab in Kubernetes mode; Config is then
	// flanneld's net-conf.json and nothing is written to etcd but the
	// API server's own keys.
	Kube *KubeOptions
}

// Host is one lab host.
type Host struct {
	Name        string       // h1, h2, ...
	NS          string       // namespace of the host
	CNS         string       // namespace of its container
	Addr        netip.Addr   // underlay address (eth0)
	Addr6       netip.Addr   // IPv6 underlay address, with Options.Underlay6
	Subnet      netip.Prefix // leased subnet, from subnet.env
	MTU         int
	Container   netip.Addr // container's address
	FlanneldPID int
	Args        []string // extra flags for this host's flanneld, after the lab's
	Env         []string // extra environment for this host's flanneld (NODE_NAME=…)
}

// State is what `lab up` records for `lab status`, `lab exec` and `lab down`.
type State struct {
	ID            string
	Dir           string
	Prefix        string
	EtcdNS        string
	EtcdPID       int
	EtcdArgv      []string      // how the lab's single etcd was started, for StartEtcd
	Members       []*EtcdMember // the members of a lab-run etcd cluster
	EtcdEndpoints []string
	SwitchNS      string
	Hosts         []*Host
	Flanneld      string
	FlanneldArgs  []string
	FlanneldWrap  []string   `json:",omitempty"`
	Kube          *KubeState `json:",omitempty"` // in Kubernetes mode
}

// Lab is a running lab.
type Lab struct {
	State
	log *slog.Logger
}

func (o *Options) defaults() {
	if o.ID == "" {
		o.ID = "flab"
	}
	if o.Hosts == 0 {
		o.Hosts = 3
	}
	if o.Prefix == "" {
		o.Prefix = "/coreos.com/network"
	}
	if o.Config == "" {
		o.Config = `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`
	}
	if !o.Underlay.IsValid() {
		o.Underlay = netip.MustParsePrefix("192.168.100.0/24")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// Dir returns the state directory of lab id.
func Dir(id string) string { return filepath.Join(StateRoot, id) }

// Up builds the lab and starts etcd and every flanneld, waiting until each
// host has written subnet.env and its container is configured. On error it
// tears down what it built.
func Up(ctx context.Context, o Options) (l *Lab, err error) {
	o.defaults()
	if o.Hosts < 1 || o.Hosts > 200 {
		return nil, fmt.Errorf("lab: --hosts %d: must be between 1 and 200", o.Hosts)
	}
	if _, err := os.Stat(o.Flanneld); err != nil {
		return nil, fmt.Errorf("lab: flanneld binary: %w", err)
	}
	if o.Kube != nil && o.Kube.APIServer == "" {
		return nil, errors.New("lab: Kubernetes mode needs the kube-apiserver binary")
	}
	if _, err := os.Stat(filepath.Join(Dir(o.ID), "state.json")); err == nil {
		return nil, fmt.Errorf("lab %s is already up; run `flannelctl lab down` first", o.ID)
	}
	l = &Lab{log: o.Log, State: State{
		ID: o.ID, Dir: Dir(o.ID), Prefix: o.Prefix, Flanneld: o.Flanneld, FlanneldArgs: o.FlanneldArgs, FlanneldWrap: o.FlanneldWrap,
		SwitchNS: o.ID + "-sw", EtcdNS: o.ID + "-etcd",
	}}
	defer func() {
		if err != nil {
			_ = l.Down()
			l = nil
		}
	}()
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return l, fmt.Errorf("lab: %w", err)
	}
	if err := l.save(); err != nil {
		return l, err
	}
	if err := l.buildUnderlay(o); err != nil {
		return l, err
	}
	switch {
	case len(o.EtcdEndpoints) > 0:
		l.EtcdEndpoints = o.EtcdEndpoints
	case o.EtcdMembers > 1:
		if err := l.startCluster(ctx, o); err != nil {
			return l, err
		}
	default:
		if err := l.startEtcd(ctx, o); err != nil {
			return l, err
		}
	}
	if err := l.save(); err != nil {
		return l, err
	}
	if err := l.writeConfig(ctx, o); err != nil {
		return l, err
	}
	if o.NoFlanneld {
		return l, l.save()
	}
	for _, h := range l.Hosts {
		if err := l.StartFlanneld(h); err != nil {
			return l, err
		}
	}
	if err := l.save(); err != nil {
		return l, err
	}
	for _, h := range l.Hosts {
		if err := l.WaitSubnet(ctx, h, 30*time.Second); err != nil {
			return l, err
		}
		switch {
		case o.NoContainers:
		case o.Kube != nil && len(o.Kube.CNIPath) > 0:
			if err := l.AddPod(ctx, h); err != nil {
				return l, err
			}
		default:
			if err := l.SetupContainer(h); err != nil {
				return l, err
			}
		}
	}
	// subnet.env comes before a host has heard of the peers that joined
	// after it; return the overlay as a user will find it a moment later.
	// A pair that never answers is left for the caller to report.
	if nc, err := netconf.Parse([]byte(o.Config)); !o.NoContainers && err == nil && nc.BackendType != "alloc" {
		l.WaitConverged(ctx, 15*time.Second)
	}
	return l, l.save()
}

// writeConfig gives flanneld its network config: in etcd, or in Kubernetes
// mode through the API server StartKube runs.
func (l *Lab) writeConfig(ctx context.Context, o Options) error {
	if o.Kube != nil {
		ko := *o.Kube
		if ko.NetConf == "" {
			ko.NetConf = o.Config
		}
		if len(ko.CNIPath) > 0 {
			manifest, err := os.ReadFile(ko.Manifest)
			if err != nil {
				return fmt.Errorf("lab: %w", err)
			}
			conflist, err := ManifestConflist(manifest)
			if err != nil {
				return fmt.Errorf("lab: %s: %w", ko.Manifest, err)
			}
			if err := l.WriteConflist(conflist); err != nil {
				return err
			}
		}
		_, err := l.StartKube(ctx, ko)
		return err
	}
	cli, err := l.Etcd()
	if err != nil {
		return err
	}
	defer cli.Close()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Put(pctx, o.Prefix+"/config", o.Config); err != nil {
		return fmt.Errorf("lab: write network config: %w", err)
	}
	return nil
}

// Load reads the state of a running lab.
func Load(id string) (*Lab, error) {
	b, err := os.ReadFile(filepath.Join(Dir(id), "state.json"))
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", id, err)
	}
	l := &Lab{log: slog.New(slog.DiscardHandler)}
	if err := json.Unmarshal(b, &l.State); err != nil {
		return nil, fmt.Errorf("lab %s: state: %w", id, err)
	}
	return l, nil
}

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l.State, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(l.Dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("lab: save state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(l.Dir, "state.json"))
}

// buildUnderlay creates the switch, etcd and host namespaces, a bridge in
// the switch and one veth per namespace into it.
func (l *Lab) buildUnderlay(o Options) error {
	sw, err := ns.Create(l.SwitchNS)
	if err != nil {
		return err
	}
	if err := sw.Do(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	}); err != nil {
		return fmt.Errorf("lab: switch bridge: %w", err)
	}
	base := o.Underlay.Addr()
	etcdAddr := nthAddr(base, 1)
	if _, err := ns.Create(l.EtcdNS); err != nil {
		return err
	}
	if err := l.plug(l.EtcdNS, "etcd", netip.PrefixFrom(etcdAddr, o.Underlay.Bits()), netip.Addr{}, netip.Prefix{}); err != nil {
		return err
	}
	if o.EtcdMembers > 1 {
		if err := l.buildMembers(o); err != nil {
			return err
		}
	}
	for i := 1; i <= o.Hosts; i++ {
		h := &Host{
			Name: "h" + strconv.Itoa(i),
			NS:   fmt.Sprintf("%s-h%d", l.ID, i),
			CNS:  fmt.Sprintf("%s-c%d", l.ID, i),
			Addr: nthAddr(base, 10+i),
		}
		var addr6 netip.Prefix
		if o.Underlay6.IsValid() {
			h.Addr6 = nthAddr(o.Underlay6.Masked().Addr(), 0x10+i)
			addr6 = netip.PrefixFrom(h.Addr6, o.Underlay6.Bits())
		}
		l.Hosts = append(l.Hosts, h)
		if _, err := ns.Create(h.NS); err != nil {
			return err
		}
		if err := l.plug(h.NS, h.Name, netip.PrefixFrom(h.Addr, o.Underlay.Bits()), etcdAddr, addr6); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(l.Dir, h.Name), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// plug connects namespace nsName to the switch with a veth: eth0 inside,
// the port named port on the bridge. A valid gw becomes the default route
// and turns on forwarding (a host); without one it is a plain end node. A
// valid addr6 is added too, without duplicate address detection (nothing
// else on the switch has it, and DAD would keep it unusable a while).
func (l *Lab) plug(nsName, port string, addr netip.Prefix, gw netip.Addr, addr6 netip.Prefix) error {
	swh, err := netns.GetFromName(l.SwitchNS)
	if err != nil {
		return err
	}
	defer swh.Close()
	h, err := ns.Open(nsName)
	if err != nil {
		return err
	}
	// Created directly inside the two namespaces: the root namespace never
	// holds either end, so parallel labs cannot collide on names.
	err = h.Do(func() error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "eth0", MTU: 1500},
			PeerName:      port,
			PeerNamespace: netlink.NsFd(swh),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("veth: %w", err)
		}
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet(addr)}); err != nil {
			return err
		}
		if addr6.IsValid() {
			if err := netlink.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet(addr6), Flags: unix.IFA_F_NODAD}); err != nil {
				return fmt.Errorf("ipv6 address: %w", err)
			}
		}
		if err := netlink.LinkSetUp(eth0); err != nil {
			return err
		}
		if !gw.IsValid() {
			return nil
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route: %w", err)
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("lab: plug %s: %w", nsName, err)
	}
	sw, err := ns.Open(l.SwitchNS)
	if err != nil {
		return err
	}
	return sw.Do(func() error {
		p, err := netlink.LinkByName(port)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName("br0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(p, br); err != nil {
			return fmt.Errorf("lab: attach %s to switch: %w", port, err)
		}
		return netlink.LinkSetUp(p)
	})
}

func (l *Lab) startEtcd(ctx context.Context, o Options) error {
	if o.EtcdCmd == nil {
		return errors.New("lab: no etcd command and no --etcd-endpoints")
	}
	etcdNS, _ := ns.Open(l.EtcdNS)
	var addr netip.Addr
	if err := etcdNS.Do(func() error {
		a, err := firstAddr("eth0")
		addr = a
		return err
	}); err != nil {
		return err
	}
	url := "http://" + net.JoinHostPort(addr.String(), "2379")
	l.EtcdArgv = o.EtcdCmd(url, filepath.Join(l.Dir, "etcd"))
	l.EtcdEndpoints = []string{url}
	return l.StartEtcd(ctx)
}

// spawn starts argv inside namespace nsName in its own session, so it
// outlives `flannelctl lab up`, with output to logName in the lab dir.
func (l *Lab) spawn(nsName, logName string, argv []string, env ...string) (int, error) {
	logf, err := os.OpenFile(filepath.Join(l.Dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", nsName}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	// Reap it when it exits while we are still around; after we exit,
	// init does.
	go func() { _ = cmd.Wait() }()
	return pid, nil
}

// FlanneldArgv is the command line the lab runs for host h.
func (l *Lab) FlanneldArgv(h *Host) []string {
	args := []string{l.Flanneld,
		"-etcd-endpoints=" + strings.Join(l.EtcdEndpoints, ","),
		"-etcd-prefix=" + l.Prefix,
		"-subnet-file=" + l.SubnetFile(h),
		"-ip-masq",
	}
	args = append(args, l.FlanneldArgs...)
	return append(args, h.Args...)
}

// SubnetFile is host h's subnet.env.
func (l *Lab) SubnetFile(h *Host) string { return filepath.Join(l.Dir, h.Name, "subnet.env") }

// KeyFile is host h's WireGuard private key (flanneld's WIREGUARD_KEY_FILE).
func (l *Lab) KeyFile(h *Host) string { return filepath.Join(l.Dir, h.Name, "wgkey") }

// LogFile is host h's flanneld log.
func (l *Lab) LogFile(h *Host) string { return filepath.Join(l.Dir, h.Name, "flanneld.log") }

// StartFlanneld starts flanneld on host h.
func (l *Lab) StartFlanneld(h *Host) error {
	argv := append(slices.Clone(l.FlanneldWrap), l.FlanneldArgv(h)...)
	// Hosts share the filesystem: each keeps its own WireGuard key.
	env := append([]string{"WIREGUARD_KEY_FILE=" + l.KeyFile(h)}, h.Env...)
	pid, err := l.spawn(h.NS, filepath.Join(h.Name, "flanneld.log"), argv, env...)
	if err != nil {
		return fmt.Errorf("lab: start flanneld on %s: %w", h.Name, err)
	}
	h.FlanneldPID = pid
	return l.save()
}

// StopFlanneld sends sig to host h's flanneld and waits for it to exit.
func (l *Lab) StopFlanneld(h *Host, sig syscall.Signal) error {
	return l.stop(&h.FlanneldPID, sig)
}

// stop sends sig to the process *pid, if any, waits up to 10 s for it to
// exit, and records that it is gone.
func (l *Lab) stop(pid *int, sig syscall.Signal) error {
	if *pid == 0 {
		return nil
	}
	err := stopPID(*pid, l.Dir, sig, 10*time.Second)
	*pid = 0
	_ = l.save()
	return err
}

// WaitSubnet waits until host h's subnet.env exists and parses, and records
// its subnet and MTU.
func (l *Lab) WaitSubnet(ctx context.Context, h *Host, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		env, err := subnetenv.Read(l.SubnetFile(h))
		if err == nil && env.Subnet.IsValid() {
			h.Subnet, h.MTU = env.Subnet.Masked(), env.MTU
			return nil
		}
		if h.FlanneldPID != 0 && !proc.Alive(h.FlanneldPID) {
			return fmt.Errorf("lab: flanneld on %s exited before writing subnet.env; log %s:\n%s", h.Name, l.LogFile(h), tail(l.LogFile(h), 20))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("lab: %s wrote no subnet.env within %s; log %s:\n%s", h.Name, timeout, l.LogFile(h), tail(l.LogFile(h), 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SetupContainer gives host h a docker0 bridge holding FLANNEL_SUBNET with
// FLANNEL_MTU (what dockerd --bip --mtu does) and a container namespace on
// it with the subnet's second address and a default route via the bridge.
func (l *Lab) SetupContainer(h *Host) error {
	env, err := subnetenv.Read(l.SubnetFile(h))
	if err != nil {
		return err
	}
	bip := env.Subnet // 10.5.72.1/24
	caddr := netip.PrefixFrom(bip.Addr().Next(), bip.Bits())
	if !ns.Exists(h.CNS) {
		if _, err := ns.Create(h.CNS); err != nil {
			return err
		}
	}
	cnsH, err := netns.GetFromName(h.CNS)
	if err != nil {
		return err
	}
	defer cnsH.Close()
	hostNS, _ := ns.Open(h.NS)
	err = hostNS.Do(func() error {
		br, err := netlink.LinkByName("docker0")
		if err != nil {
			br = &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "docker0", MTU: env.MTU}}
			if err := netlink.LinkAdd(br); err != nil {
				return fmt.Errorf("docker0: %w", err)
			}
			if br, err = netlink.LinkByName("docker0"); err != nil {
				return err
			}
		}
		addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
		for _, a := range addrs {
			_ = netlink.AddrDel(br, &a)
		}
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipnet(bip)}); err != nil {
			return fmt.Errorf("docker0 address: %w", err)
		}
		if err := netlink.LinkSetMTU(br, env.MTU); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		if old, err := netlink.LinkByName("vethc"); err == nil {
			_ = netlink.LinkDel(old)
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "vethc", MTU: env.MTU, MasterIndex: br.Attrs().Index},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(cnsH),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("container veth: %w", err)
		}
		v, err := netlink.LinkByName("vethc")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(v)
	})
	if err != nil {
		return fmt.Errorf("lab: container of %s: %w", h.Name, err)
	}
	cns, _ := ns.Open(h.CNS)
	err = cns.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(eth0, env.MTU); err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet(caddr)}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(eth0); err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: bip.Addr().AsSlice()})
	})
	if err != nil {
		return fmt.Errorf("lab: container of %s: %w", h.Name, err)
	}
	h.Subnet, h.MTU, h.Container = env.Subnet.Masked(), env.MTU, caddr.Addr()
	return l.save()
}

// Etcd returns a client for the lab's etcd. Its connections are made from
// inside the lab (the etcd namespace, or the first host), since the lab's
// addresses do not exist in the root namespace.
func (l *Lab) Etcd() (*clientv3.Client, error) {
	from := l.EtcdNS
	if l.EtcdPID == 0 && len(l.Members) == 0 && len(l.Hosts) > 0 {
		from = l.Hosts[0].NS
	}
	return clientv3.New(clientv3.Config{
		Endpoints:   l.EtcdEndpoints,
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(DialerIn(from))},
		Logger:      zap.NewNop(),
	})
}

// DialerIn returns a dial function whose sockets are created inside
// namespace name.
func DialerIn(name string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		n, err := ns.Open(name)
		if err != nil {
			return nil, err
		}
		var c net.Conn
		err = n.Do(func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, "tcp", strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "unix://"))
			return err
		})
		return c, err
	}
}

// Host returns the host named name (h1, h2, ...).
func (l *Lab) Host(name string) (*Host, error) {
	for _, h := range l.Hosts {
		if h.Name == name {
			return h, nil
		}
	}
	return nil, fmt.Errorf("lab %s has no host %q (hosts h1..h%d)", l.ID, name, len(l.Hosts))
}

// Ping sends count pings from h's container to dst and returns how many
// were answered.
func (l *Lab) Ping(ctx context.Context, h *Host, dst netip.Addr, count int, interval time.Duration) (int, string, error) {
	cns, err := ns.Open(h.CNS)
	if err != nil {
		return 0, "", err
	}
	iv := strconv.FormatFloat(interval.Seconds(), 'f', 3, 64)
	out, _ := cns.Command(ctx, "ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", iv, "-W", "1", dst.String()).CombinedOutput()
	return parseReceived(string(out)), string(out), nil
}

func parseReceived(out string) int {
	// "3 packets transmitted, 3 received, 0% packet loss"
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, " received"); i > 0 {
			f := strings.Fields(line[:i])
			if n, err := strconv.Atoi(f[len(f)-1]); err == nil {
				return n
			}
		}
	}
	return 0
}

// Down stops every process of the lab and deletes its namespaces and state.
// It is idempotent and works from the state file, or, without one, from
// the namespace names and the processes whose command line names the lab's
// directory.
func (l *Lab) Down() error {
	return Down(l.ID)
}

// Down tears down lab id.
func Down(id string) error {
	dir := Dir(id)
	var errs []error
	// Pods first, while their hosts exist: CNI DEL as a kubelet would
	// run it when a pod goes.
	if l, err := Load(id); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		errs = append(errs, l.delPods(ctx))
		cancel()
	}
	// flanneld (and anything else) before etcd: an etcd server with
	// clients still connected can take seconds to shut down.
	pids := labPIDs(dir)
	slices.SortStableFunc(pids, func(a, b int) int { return cmpBool(isEtcd(a), isEtcd(b)) })
	for _, pid := range pids {
		if err := stopPID(pid, dir, syscall.SIGTERM, 5*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	entries, _ := os.ReadDir("/run/netns")
	// Containers first, then hosts, etcd members, etcd and the switch:
	// deleting the switch last keeps veth peers from vanishing under a
	// running host.
	order := []string{"-c", "-h", "-e", "-etcd", "-sw"}
	numbered := func(suffix string) bool { return suffix == "-c" || suffix == "-h" || suffix == "-e" }
	for _, suffix := range order {
		for _, e := range entries {
			name := e.Name()
			if !strings.HasPrefix(name, id+suffix) {
				continue
			}
			rest := strings.TrimPrefix(name, id+suffix)
			if numbered(suffix) && !isDigits(rest) || !numbered(suffix) && rest != "" {
				continue
			}
			if suffix == "-h" {
				removeWireGuardSockets(name)
			}
			if err := (&ns.NS{Name: name}).Delete(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeWireGuardSockets removes the UAPI sockets a wireguard flanneld
// killed with SIGKILL left behind in host namespace nsName: they are named
// by the namespace, which is about to go.
func removeWireGuardSockets(nsName string) {
	n, err := ns.Open(nsName)
	if err != nil {
		return
	}
	_ = n.Do(func() error {
		for _, dev := range []string{wireguard.DeviceV4, wireguard.DeviceV6} {
			if name := wireguard.UAPIName(dev); name != dev { // never the host's own
				_ = os.Remove(filepath.Join(wireguard.SocketDir, name+".sock"))
			}
		}
		return nil
	})
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// labPIDs lists processes whose command line names dir: only the lab's own
// etcd and flanneld processes do.
func labPIDs(dir string) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if ownedBy(pid, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func ownedBy(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), dir+"/")
}

// stopPID signals pid, if it still is one of the lab's processes, and waits
// for it to exit, escalating to SIGKILL after timeout.
func stopPID(pid int, dir string, sig syscall.Signal, timeout time.Duration) error {
	proc.StopPinned(pid, func(pid int) bool { return ownedBy(pid, dir) }, sig, timeout)
	return nil
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func firstAddr(link string) (netip.Addr, error) {
	l, err := netlink.LinkByName(link)
	if err != nil {
		return netip.Addr{}, err
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil || len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("%s has no IPv4 address", link)
	}
	a, _ := netip.AddrFromSlice(addrs[0].IP)
	return a.Unmap(), nil
}

func nthAddr(base netip.Addr, n int) netip.Addr {
	a := base
	for range n {
		a = a.Next()
	}
	return a
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Alive reports whether pid is a running process.
func Alive(pid int) bool { return proc.Alive(pid) }

// Namespace maps a lab target (h1, c1, etcd, sw) to its namespace.
func (l *Lab) Namespace(target string) (string, error) {
	switch target {
	case "etcd":
		return l.EtcdNS, nil
	case "sw", "switch":
		return l.SwitchNS, nil
	}
	for _, m := range l.Members {
		if target == m.Name {
			return m.NS, nil
		}
	}
	for _, h := range l.Hosts {
		if target == h.Name {
			return h.NS, nil
		}
		if target == "c"+strings.TrimPrefix(h.Name, "h") {
			return h.CNS, nil
		}
	}
	return "", fmt.Errorf("lab %s has no %q: use h1..h%d, c1..c%d, etcd or sw", l.ID, target, len(l.Hosts), len(l.Hosts))
}

// isEtcd reports whether pid is an etcd server: the embedded one
// (`flannelctl lab etcd-server`) or an etcd binary.
func isEtcd(pid int) bool {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(string(b), "\x00")
	return slices.Contains(args, "etcd-server") || filepath.Base(args[0]) == "etcd"
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// WaitConverged waits until every container answers a ping from every
// other, or timeout passes; it reports whether all pairs answered.
func (l *Lab) WaitConverged(ctx context.Context, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Bool
	for _, from := range l.Hosts {
		for _, to := range l.Hosts {
			if from == to || !to.Container.IsValid() {
				continue
			}
			wg.Go(func() {
				for {
					if got, _, _ := l.Ping(ctx, from, to.Container, 1, 100*time.Millisecond); got == 1 {
						return
					}
					if ctx.Err() != nil {
						failed.Store(true)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	return !failed.Load()
}

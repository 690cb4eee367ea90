// Package doctor checks one flannel host for the problems that break the
// overlay without flanneld noticing, and says for each what is wrong and
// what to do: a stale or missing subnet.env, a device or bridge with the
// wrong MTU, forwarding switched off or blocked by the firewall, strict
// reverse-path filtering, missing br_netfilter, VXLAN checksum offload
// behind NAT, peers that cannot be reached (or only with small packets)
// through the overlay, WireGuard peers without a handshake (another PSK
// or key), on the wrong port, or left behind, and a VTEP MAC other than
// the one published. In Kubernetes mode it also checks this host's Node:
// podCIDR, flannel's annotations, the NetworkUnavailable condition.
//
// The checks read the kernel through the System interface, so their logic
// is tested against a fake; Linux implements it with netlink, /proc/sys,
// iptables-save, an ethtool ioctl and ICMP probes.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// Level is how bad a finding is.
type Level int

const (
	OK   Level = iota
	Skip       // not checked, with the reason
	Warn       // works, but likely to bite
	Fail       // broken
)

func (l Level) String() string {
	switch l {
	case Skip:
		return "SKIP"
	case Warn:
		return "WARN"
	case Fail:
		return "FAIL"
	}
	return "OK"
}

// MarshalText writes the level as printed.
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads a level as printed, so `doctor -o json` reads back.
func (l *Level) UnmarshalText(b []byte) error {
	for _, c := range []Level{OK, Skip, Warn, Fail} {
		if c.String() == string(b) {
			*l = c
			return nil
		}
	}
	return fmt.Errorf("doctor: unknown level %q", b)
}

// Finding is the outcome of one check.
type Finding struct {
	Level   Level  `json:"level"`
	Check   string `json:"check"`
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"` // what to do; set for Warn and Fail
}

// String is the finding as one line.
func (f Finding) String() string {
	s := fmt.Sprintf("%-4s  %-12s %s", f.Level, f.Check, f.Message)
	if f.Fix != "" {
		s += ". Fix: " + f.Fix
	}
	return s
}

// Link is what the checks need to know about a network interface.
type Link struct {
	Name  string
	Index int
	Up    bool
	MTU   int
	Addrs []netip.Prefix // IPv4 and IPv6 addresses with their lengths
	// MAC is the hardware address; nil when unknown.
	MAC net.HardwareAddr
	// Parent is the index of the device a VXLAN device sends through
	// (its "dev"), 0 when none was given.
	Parent int
}

// ErrNoLink is returned by System.Link for an interface that does not
// exist.
var ErrNoLink = errors.New("doctor: no such interface")

// System is the host as the checks see it. The Linux implementation is
// NewSystem; tests fake it.
type System interface {
	// Sysctl reads /proc/sys/<name> (name like "net/ipv4/ip_forward"),
	// trimmed; an fs.ErrNotExist error when the key does not exist.
	Sysctl(name string) (string, error)
	// Link returns the named interface, or ErrNoLink.
	Link(name string) (Link, error)
	// LinkByIndex returns the interface with that index, or ErrNoLink.
	LinkByIndex(index int) (Link, error)
	// LinkWithAddr returns the interface holding addr, or ErrNoLink.
	LinkWithAddr(addr netip.Addr) (Link, error)
	// RouteLink returns the interface the route to dst leaves through.
	RouteLink(dst netip.Addr) (Link, error)
	// IPTablesSave returns `iptables-save -t <table>` output.
	IPTablesSave(ctx context.Context, table string) ([]byte, error)
	// TxChecksumOffload reports whether tx-checksum-ip-generic is on for
	// the named device (what `ethtool -k` shows).
	TxChecksumOffload(dev string) (bool, error)
	// Probe sends ICMP echo requests and reports, in order, which were
	// answered, all within about timeout.
	Probe(ctx context.Context, probes []Probe, timeout time.Duration) []ProbeResult
}

// Probe is one ICMP echo request.
type Probe struct {
	Dst  netip.Addr
	Size int  // IP packet length; 0 means a small probe (84 bytes)
	DF   bool // don't fragment: the packet must fit the whole path as is
}

// ProbeResult says what became of a Probe.
type ProbeResult struct {
	Replied bool
	// TooBig: the local route's MTU is smaller than Size (DF probes);
	// RouteMTU is that MTU when known.
	TooBig   bool
	RouteMTU int
	// PathMTU is the next-hop MTU a router reported with "fragmentation
	// needed" (DF probes); 0 when none did.
	PathMTU int
	Err     error // the probe could not be sent at all
}

// Input is what the caller knows about the cluster and this host.
type Input struct {
	SubnetFile string
	Env        subnetenv.Env // valid when EnvErr is nil
	EnvErr     error

	// Config is the network config in etcd; nil when it could not be read
	// (EtcdErr says why).
	Config *netconf.Config
	// Leases is every lease and reservation in etcd. The caller fills
	// Expires where it can.
	Leases  []lease.Lease
	EtcdErr error

	// Kube is set in Kubernetes mode (flannelctl --kubeconfig).
	Kube *KubeInput

	ProbeTimeout time.Duration // per probe round; default 1.5 s
}

// host is what the checks learn as they go, for later checks.
type host struct {
	in      Input
	sys     System
	own     *lease.Lease
	backend string // the backend type this host runs
	dev     *Link  // flannel.<VNI> or flannel0, when it exists
	devName string
	ext     *Link // the external interface, when found
	natted  bool  // our PublicIP is not on any local interface
}

// Run runs every check and returns the findings in a fixed order.
func Run(ctx context.Context, sys System, in Input) []Finding {
	if in.ProbeTimeout <= 0 {
		in.ProbeTimeout = 1500 * time.Millisecond
	}
	h := &host{in: in, sys: sys}
	var out []Finding
	add := func(fs ...Finding) { out = append(out, fs...) }
	add(h.checkSubnetEnv())
	if in.Kube != nil {
		add(h.checkKube()...)
	} else {
		add(h.checkLease()...)
	}
	add(h.checkDevice()...)
	add(h.checkVtep()...)
	add(h.checkBridge()...)
	add(h.checkMTU()...)
	add(h.checkForwarding())
	add(h.checkFirewall(ctx))
	add(h.checkRPFilter())
	add(h.checkBrNetfilter())
	add(h.checkOffload(ctx)...)
	add(h.checkPeers(ctx)...)
	add(h.checkWireGuard(time.Now())...)
	return slices.DeleteFunc(out, func(f Finding) bool { return f.Check == "" })
}

// Failed reports whether any finding is a Fail.
func Failed(fs []Finding) bool {
	return slices.ContainsFunc(fs, func(f Finding) bool { return f.Level == Fail })
}

func ok(check, format string, args ...any) Finding {
	return Finding{Level: OK, Check: check, Message: fmt.Sprintf(format, args...)}
}

func skip(check, format string, args ...any) Finding {
	return Finding{Level: Skip, Check: check, Message: fmt.Sprintf(format, args...)}
}

func warn(check, fix, format string, args ...any) Finding {
	return Finding{Level: Warn, Check: check, Message: fmt.Sprintf(format, args...), Fix: fix}
}

func fail(check, fix, format string, args ...any) Finding {
	return Finding{Level: Fail, Check: check, Message: fmt.Sprintf(format, args...), Fix: fix}
}

package main

import (
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/flannel-go/flannel/internal/etcdconf"
	"github.com/flannel-go/flannel/internal/flagenv"
)

// options holds every flanneld flag, with upstream's names and defaults.
type options struct {
	etcdFlags *etcdconf.Flags
	etcd      etcdconf.Options // from etcdFlags, after parsing

	ifaces        stringList
	ifaceRegexes  stringList
	ifaceCanReach string
	publicIP      string
	publicIPv6    string

	subnetFile        string
	renewMargin       int
	leaseTTL          time.Duration
	ipMasq            bool
	fullyRandomOff    bool
	healthzIP         string
	healthzPort       int
	iptablesResync    int
	iptablesForward   bool
	ipBlackholeRoute  bool
	version           bool
	verbosity         int
	logFormat         string
	kubeSubnetMgr     bool
	kubeAPIURL        string
	kubeAnnotation    string
	kubeconfigFile    string
	netConfigPath     string
	setNodeNetUnavail bool
	vmodule           string
	logBacktraceAt    string
	logToStderr       bool
	alsoLogToStderr   bool

	// stray are the positional arguments, which flanneld takes none of.
	// Upstream ignores them (Go's flag package stops at the first one);
	// a sysconfig written as one tutorial shows, FLANNEL_OPTIONS="eno1",
	// passes one, so they are warned about, not refused.
	stray []string
}

// parseAround parses args as flags, stepping over positional arguments
// instead of stopping at the first one as the flag package does, so that
// a flag after a stray word still counts; it returns the stray words.
// Everything after "--" is stray.
func parseAround(fs *flag.FlagSet, args []string) ([]string, error) {
	var stray []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return stray, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(stray, rest...), nil
		}
		stray = append(stray, rest[0])
		args = rest[1:]
	}
}

// strayHint says which flag a stray argument was probably meant as:
// "-ip-masq" for a flag name without its dash, else "-iface=<arg>" (what
// the tutorials' FLANNEL_OPTIONS="eno1" means), with whether the host has
// an interface of that name.
func strayHint(arg string, isFlag func(string) bool, ifaceExists func(string) bool) string {
	name, _, _ := strings.Cut(arg, "=")
	if isFlag(name) {
		return fmt.Sprintf("did you mean -%s?", arg)
	}
	if _, err := netip.ParseAddr(arg); err == nil {
		return fmt.Sprintf("did you mean -iface=%s (or -public-ip=%s)?", arg, arg)
	}
	if ifaceExists(arg) {
		return fmt.Sprintf("did you mean -iface=%s? an interface named %s exists", arg, arg)
	}
	return fmt.Sprintf("did you mean -iface=%s? (no interface named %s exists on this host)", arg, arg)
}

// stringList is a repeatable flag (--iface a --iface b).
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("flanneld", flag.ContinueOnError)
	o.etcdFlags = etcdconf.Register(fs)
	fs.Var(&o.ifaces, "iface", "interface to use (IP or name) for inter-host communication; may be repeated")
	fs.Var(&o.ifaceRegexes, "iface-regex", "regex matching the IP or name of the interface to use; may be repeated")
	fs.StringVar(&o.ifaceCanReach, "iface-can-reach", "", "use the interface and source address of the route to this IP")
	fs.StringVar(&o.publicIP, "public-ip", "", "IP accessible by other nodes for inter-host communication")
	fs.StringVar(&o.publicIPv6, "public-ipv6", "", "IPv6 accessible by other nodes for inter-host communication")
	fs.StringVar(&o.subnetFile, "subnet-file", "/run/flannel/subnet.env", "filename where env variables (subnet, MTU, ...) will be written to")
	fs.IntVar(&o.renewMargin, "subnet-lease-renew-margin", 60, "subnet lease renewal margin, in minutes, ranging from 1 to 1439")
	fs.DurationVar(&o.leaseTTL, "subnet-lease-ttl", 24*time.Hour, "lifetime of a subnet lease without renewal (flannel-go extension; upstream fixes 24h)")
	fs.BoolVar(&o.ipMasq, "ip-masq", false, "setup IP masquerade rule for traffic destined outside of overlay network")
	fs.BoolVar(&o.fullyRandomOff, "ip-masq-fully-random-disable", false, "disable fully random source port mapping in the masquerade rules")
	fs.StringVar(&o.healthzIP, "healthz-ip", "0.0.0.0", "the IP address for healthz server to listen")
	fs.IntVar(&o.healthzPort, "healthz-port", 0, "the port for healthz server to listen (0 to disable)")
	fs.IntVar(&o.iptablesResync, "iptables-resync", 5, "resync period for iptables rules, in seconds")
	fs.BoolVar(&o.iptablesForward, "iptables-forward-rules", true, "add default accept rules to FORWARD chain in iptables")
	fs.BoolVar(&o.ipBlackholeRoute, "ip-blackhole-route", false, "keep a blackhole route for this host's subnet")
	fs.BoolVar(&o.version, "version", false, "print version and exit")
	fs.IntVar(&o.verbosity, "v", 0, "log level: 0 info, 1 or more debug")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json (flannel-go extension)")
	fs.BoolVar(&o.kubeSubnetMgr, "kube-subnet-mgr", false, "contact the Kubernetes API for subnet assignment instead of etcd")
	fs.StringVar(&o.kubeAPIURL, "kube-api-url", "", "Kubernetes API server URL")
	fs.StringVar(&o.kubeAnnotation, "kube-annotation-prefix", "flannel.alpha.coreos.com", "Kubernetes annotation prefix")
	fs.StringVar(&o.kubeconfigFile, "kubeconfig-file", "", "kubeconfig file location")
	fs.StringVar(&o.netConfigPath, "net-config-path", "/etc/kube-flannel/net-conf.json", "path to the network configuration file (Kubernetes mode)")
	fs.BoolVar(&o.setNodeNetUnavail, "set-node-network-unavailable", true, "set NodeNetworkUnavailable after ready (Kubernetes mode)")
	fs.StringVar(&o.vmodule, "vmodule", "", "accepted for compatibility; ignored")
	fs.StringVar(&o.logBacktraceAt, "log_backtrace_at", "", "accepted for compatibility; ignored")
	fs.BoolVar(&o.logToStderr, "logtostderr", true, "accepted for compatibility; logs always go to stderr")
	fs.BoolVar(&o.alsoLogToStderr, "alsologtostderr", false, "accepted for compatibility; logs always go to stderr")
	return fs
}

// parseOptions parses args, then fills every flag not given on the command
// line from FLANNELD_<NAME> (upper case, '-' → '_'): flag > env > default.
// An empty variable counts as unset, as upstream.
func parseOptions(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := newFlagSet(o)
	fs.SetOutput(stderr)
	stray, err := parseAround(fs, args)
	if err != nil {
		return nil, err
	}
	o.stray = stray
	if err := flagenv.Set(fs, etcdconf.EnvPrefix, getenv, nil); err != nil {
		return nil, err
	}
	etcd, err := o.etcdFlags.Options(getenv)
	if err != nil {
		return nil, err
	}
	o.etcd = etcd
	return o, o.validate()
}

func (o *options) validate() error {
	if o.renewMargin < 1 || o.renewMargin > 1439 {
		return fmt.Errorf("--subnet-lease-renew-margin=%d: must be between 1 and 1439 minutes", o.renewMargin)
	}
	if o.leaseTTL < 10*time.Second {
		return fmt.Errorf("--subnet-lease-ttl=%s: must be at least 10s", o.leaseTTL)
	}
	if o.healthzPort < 0 || o.healthzPort > 65535 {
		return fmt.Errorf("--healthz-port=%d: not a port number", o.healthzPort)
	}
	if o.iptablesResync < 1 {
		return fmt.Errorf("--iptables-resync=%d: must be at least 1 second", o.iptablesResync)
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		return fmt.Errorf("--log-format=%q: must be text or json", o.logFormat)
	}
	return nil
}

// renewMargin is how long before expiry the lease is renewed. A lease TTL
// shorter than the margin (a test or churn setting) renews at a third of
// its life instead, so it never lapses.
func (o *options) renewMarginFor() time.Duration {
	m := time.Duration(o.renewMargin) * time.Minute
	if m >= o.leaseTTL {
		m = o.leaseTTL * 2 / 3
	}
	return m
}

func (o *options) healthAddr() string {
	return netJoin(o.healthzIP, strconv.Itoa(o.healthzPort))
}

func secs(n int) time.Duration { return time.Duration(n) * time.Second }

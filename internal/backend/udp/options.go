package udp

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/flannel-go/flannel/internal/backend"
)

// DefaultPort is upstream's default UDP port for the udp backend.
const DefaultPort = 8285

// Type is the backend's name in the config. Its leases carry no
// BackendType, as upstream's do not.
const Type = "udp"

// OffloadEnv names the environment variable that selects offloads (see
// the package doc); flanneld's main reads it into Options.Offloads.
const OffloadEnv = "FLANNEL_UDP_OFFLOAD"

// DatapathEnv names the environment variable that chooses the datapath:
// "auto" (the default), "ebpf" or "userspace"; flanneld's main reads it
// into Options.Datapath.
const DatapathEnv = "FLANNEL_UDP_DATAPATH"

// DeliverEnv names the environment variable that chooses how the eBPF
// datapath delivers packets to containers on this host: "auto" (the
// default), "direct" or "bridge"; flanneld's main reads it into
// Options.Deliver.
const DeliverEnv = "FLANNEL_UDP_DELIVER"

// XDPEnv names the environment variable that says whether the eBPF
// datapath decapsulates in XDP where the external interface's driver
// supports it: "auto" (the default) or "off"; flanneld's main reads it
// into Options.XDP.
const XDPEnv = "FLANNEL_UDP_XDP"

// Info is what the udp backend states about itself.
var Info = backend.Info{
	Type:     Type,
	Overhead: encapOverhead,
	Device:   func(opts, ownData json.RawMessage, ipv4 bool) string { return "flannel0" },

	RemoveLeftovers: removeLeftovers,
}

// encapOverhead is what a packet grows by on the wire: IPv4 and UDP headers.
const encapOverhead = 20 + 8

// Options are the udp backend's settings that concern the whole process,
// so flanneld's main decides them, not the backend. The zero value uses
// every offload the kernel supports and leaves GOMAXPROCS alone.
type Options struct {
	// Offloads is the value of FLANNEL_UDP_OFFLOAD: "" or "on" for every
	// offload the kernel supports, "off" for none, or a comma-separated
	// list out of "tun", "gso" and "gro".
	Offloads string
	// RaiseGOMAXPROCS lets the backend raise GOMAXPROCS by one for each
	// forwarding loop while it forwards, and lower it again when the loops
	// stop. Each loop holds a P while it sleeps in ppoll; without a P to
	// spare for each, the runtime takes Ps away from the sleeping loops
	// whenever another goroutine wakes, and the loops then wait for one to
	// come back (measured: a third more context switches and a fifth less
	// throughput on a 2-CPU machine).
	RaiseGOMAXPROCS bool
	// Datapath is the value of FLANNEL_UDP_DATAPATH: "" or "auto" forwards
	// known peers in the kernel with eBPF where that works and says why
	// not where it does not, "ebpf" insists on it (Init fails without it),
	// "userspace" never uses it.
	Datapath string
	// Deliver is the value of FLANNEL_UDP_DELIVER: "" or "auto" and
	// "bridge" send the eBPF datapath's decapsulated packets through
	// flannel0, routing and the bridge, as the userspace path does, so
	// the host's netfilter sees both directions; "direct" hands those for
	// containers on our bridge straight to their veth, past netfilter for
	// that direction. That is faster but breaks a stateful firewall (a
	// container's SYN-ACK is conntrack's first sight of the connection,
	// invalid, dropped by `ct state invalid drop` as firewalld and
	// kube-proxy install it) and kube-proxy's translation of replies to a
	// Service connection, so it is never chosen for the user.
	Deliver string
	// XDP is the value of FLANNEL_UDP_XDP: "" or "auto" decapsulates
	// in an XDP program before GRO where the driver runs one natively,
	// so that GRO merges the inner TCP segments; "off" leaves the
	// interface's XDP hook alone (for another program that needs it).
	XDP string
	// Collector, if not nil, exports the counters of each backend built.
	Collector *Collector
}

// datapathMode is Options.Datapath, parsed.
type datapathMode int

const (
	datapathAuto datapathMode = iota
	datapathEBPF
	datapathUserspace
)

func (m datapathMode) String() string {
	return [...]string{"auto", "ebpf", "userspace"}[m]
}

// parseDatapath reads Options.Datapath.
func parseDatapath(v string) (datapathMode, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "auto":
		return datapathAuto, nil
	case "ebpf":
		return datapathEBPF, nil
	case "userspace":
		return datapathUserspace, nil
	}
	return 0, fmt.Errorf("udp: %s=%q: want auto, ebpf or userspace", DatapathEnv, v)
}

// parseDeliver reads Options.Deliver: whether the eBPF datapath delivers
// through the bridge only.
func parseDeliver(v string) (bridgeOnly bool, err error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "auto", "bridge":
		return true, nil
	case "direct":
		return false, nil
	}
	return false, fmt.Errorf("udp: %s=%q: want auto, direct or bridge", DeliverEnv, v)
}

// parseXDP reads Options.XDP: whether the eBPF datapath leaves XDP alone.
func parseXDP(v string) (noXDP bool, err error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "auto":
		return false, nil
	case "off":
		return true, nil
	}
	return false, fmt.Errorf("udp: %s=%q: want auto or off", XDPEnv, v)
}

type offloadSet struct {
	tun, gso, gro bool
}

var allOffloads = offloadSet{tun: true, gso: true, gro: true}

// parsePort reads the backend's one option, Port, from the Backend object
// of the network config. Keys match case-insensitively and unknown keys are
// ignored, as upstream.
func parsePort(raw json.RawMessage) (uint16, error) {
	if len(raw) == 0 {
		return DefaultPort, nil
	}
	// encoding/json matches field names case-insensitively.
	var o struct{ Port *int64 }
	if err := json.Unmarshal(raw, &o); err != nil {
		return 0, fmt.Errorf("udp: backend options: %w", err)
	}
	if o.Port == nil {
		return DefaultPort, nil
	}
	if p := *o.Port; p < 1 || p > 65535 {
		return 0, fmt.Errorf("udp: option Port: %d is not a port number (1..65535)", p)
	}
	return uint16(*o.Port), nil
}

// parseOffloads reads Options.Offloads.
func parseOffloads(v string) (offloadSet, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "on":
		return allOffloads, nil
	case "off":
		return offloadSet{}, nil
	}
	var s offloadSet
	for _, f := range strings.Split(v, ",") {
		switch strings.ToLower(strings.TrimSpace(f)) {
		case "tun":
			s.tun = true
		case "gso":
			s.gso = true
		case "gro":
			s.gro = true
		default:
			return s, fmt.Errorf("udp: %s=%q: unknown offload %q (want on, off or a list of tun, gso, gro)", OffloadEnv, v, f)
		}
	}
	return s, nil
}

// Package status assembles what `flannelctl status` reports about this
// host's flanneld, from the files, etcd (in Kubernetes mode this host's
// Node), the kernel and its health endpoints, and the operator's view of
// a lease (the JSON of `status` and `leases -o json`). Each source that fails becomes a Problem, so one
// report says everything that is wrong at once.
package status

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flannel-go/flannel/internal/doctor"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// Status is `flannelctl status -o json`.
type Status struct {
	SubnetFile     string     `json:"subnetFile"`
	SubnetEnv      *Env       `json:"subnetEnv,omitempty"`
	SubnetEnvError string     `json:"subnetEnvError,omitempty"`
	Lease          *LeaseInfo `json:"lease,omitempty"`
	Backend        string     `json:"backend,omitempty"`
	// Peers counts the other hosts' keys: leases and reservations (of
	// which Reservations are).
	Peers        int     `json:"peers"`
	Reservations int     `json:"reservations"`
	Device       *Device `json:"device,omitempty"` // absent for backends without one
	// Node is this host's Node, in Kubernetes mode.
	Node   *NodeStatus `json:"node,omitempty"`
	Health *Health     `json:"health,omitempty"` // absent without a healthz port
	// Problems lists what keeps the daemon from being healthy; empty
	// when it is.
	Problems []string `json:"problems"`
}

// Env is subnet.env as flanneld wrote it.
type Env struct {
	Network     string `json:"network,omitempty"`
	Subnet      string `json:"subnet,omitempty"`
	IPv6Network string `json:"ipv6Network,omitempty"`
	IPv6Subnet  string `json:"ipv6Subnet,omitempty"`
	MTU         int    `json:"mtu"`
	IPMasq      bool   `json:"ipMasq"`
}

// Device is the backend's network device.
type Device struct {
	Name  string `json:"name"`
	State string `json:"state"` // up, down or missing
	MTU   int    `json:"mtu,omitempty"`
}

// Health is what flanneld's health endpoints answered.
type Health struct {
	URL     string `json:"url"`
	Healthz int    `json:"healthz,omitempty"` // HTTP status; 0 when unreachable
	Readyz  int    `json:"readyz,omitempty"`
	Error   string `json:"error,omitempty"`
}

// subnetEnv is subnet.env as read.
type subnetEnv = subnetenv.Env

// Store is what the report reads from etcd.
type Store interface {
	Config(ctx context.Context) ([]byte, error)
	Leases(ctx context.Context) ([]lease.Lease, int64, error)
	Lookup(ctx context.Context, key string) (lease.Lease, error)
	Prefix() string
}

// Options say where flanneld's state is.
type Options struct {
	SubnetFile  string // required: the subnet.env flanneld writes
	HealthzIP   string // flanneld's --healthz-ip; 0.0.0.0 and :: mean this host
	HealthzPort int    // 0 skips the health check
}

// Links finds the backend's device; doctor.NewSystem() is the kernel's.
type Links interface {
	// Link returns the named interface, or doctor.ErrNoLink.
	Link(name string) (doctor.Link, error)
}

// Collect assembles the report. s is nil when etcd could not be opened,
// with openErr saying why.
func Collect(ctx context.Context, o Options, s Store, openErr error, sys Links) Status {
	st := Status{SubnetFile: o.SubnetFile, Problems: []string{}}
	env, envErr := st.readEnv(o.SubnetFile)
	var cfg *netconf.Config
	var own *lease.Lease
	if s == nil {
		st.problem("etcd: %v", openErr)
	} else {
		cfg, own = fromEtcd(ctx, s, env, envErr, &st, st.problem)
	}
	st.finish(ctx, o, cfg, own, sys)
	return st
}

func (st *Status) problem(format string, args ...any) {
	st.Problems = append(st.Problems, fmt.Sprintf(format, args...))
}

// readEnv reads subnet.env into the report.
func (st *Status) readEnv(path string) (subnetenv.Env, error) {
	env, envErr := subnetenv.Read(path)
	if envErr != nil {
		st.SubnetEnvError = envErr.Error()
		st.problem("no usable subnet.env: %v", envErr)
	} else {
		st.SubnetEnv = &Env{Network: prefixString(env.Network), Subnet: prefixString(env.Subnet),
			IPv6Network: prefixString(env.IPv6Network), IPv6Subnet: prefixString(env.IPv6Subnet), MTU: env.MTU, IPMasq: env.IPMasq}
	}
	return env, envErr
}

// finish adds the backend, its device and the health endpoints, once the
// config and our lease are known (either may be nil).
func (st *Status) finish(ctx context.Context, o Options, cfg *netconf.Config, own *lease.Lease, sys Links) {
	problem := st.problem
	st.Backend = cmp.Or(backendName(cfg), leaseBackend(own))

	if dev := doctor.DeviceName(st.Backend, cfg, own); dev != "" {
		d := &Device{Name: dev, State: "missing"}
		l, err := sys.Link(dev)
		switch {
		case err == nil:
			d.State, d.MTU = "down", l.MTU
			if l.Up {
				d.State = "up"
			} else {
				problem("%s is down", dev)
			}
		case errors.Is(err, doctor.ErrNoLink):
			problem("%s does not exist", dev)
		default:
			d.State = "unknown: " + err.Error()
		}
		st.Device = d
	}

	if o.HealthzPort > 0 {
		st.Health = checkHealth(ctx, o.HealthzIP, o.HealthzPort)
		if st.Health.Healthz != http.StatusOK || st.Health.Readyz != http.StatusOK {
			problem("flanneld's health endpoints at %s do not both answer 200", st.Health.URL)
		}
	}
}

// ReadConfig reads and parses the network config in etcd. raw is nil when
// nothing could be read.
func ReadConfig(ctx context.Context, s interface {
	Config(ctx context.Context) ([]byte, error)
	Prefix() string
}) (raw []byte, cfg *netconf.Config, err error) {
	raw, err = s.Config(ctx)
	if errors.Is(err, lease.ErrNoConfig) {
		return nil, nil, fmt.Errorf("no network config at %s; write one with `flannelctl config set`: %w", lease.ConfigKey(s.Prefix()), lease.ErrNoConfig)
	}
	if err != nil {
		return nil, nil, err
	}
	cfg, err = netconf.Parse(raw)
	if err != nil {
		return raw, nil, fmt.Errorf("the network config at %s is invalid: %w", lease.ConfigKey(s.Prefix()), err)
	}
	return raw, cfg, nil
}

// fromEtcd fills in the lease and peers and returns the config and our
// lease (nil when not found).
func fromEtcd(ctx context.Context, s Store, env subnetenv.Env, envErr error, st *Status, problem func(string, ...any)) (*netconf.Config, *lease.Lease) {
	raw, cfg, err := ReadConfig(ctx, s)
	if err != nil {
		problem("%v", err)
		// Without even a config answer etcd is down: one timeout is enough.
		if raw == nil && !errors.Is(err, lease.ErrNoConfig) {
			return nil, nil
		}
	}
	leases, _, err := s.Leases(ctx)
	if err != nil {
		problem("list leases: %v", err)
		return cfg, nil
	}
	var own *lease.Lease
	if envErr == nil && env.Subnet.IsValid() {
		for i, l := range leases {
			if l.Subnet == env.Subnet.Masked() {
				own = &leases[i]
			}
		}
		if own == nil {
			problem("no lease for %s (subnet.env's FLANNEL_SUBNET) in etcd", env.Subnet.Masked())
		} else if full, err := s.Lookup(ctx, own.Key()); err == nil {
			own = &full
		}
	}
	for _, l := range leases {
		if own != nil && l.Subnet == own.Subnet {
			continue
		}
		st.Peers++
		if l.Reserved() {
			st.Reservations++
		}
	}
	if own != nil {
		j := Info(*own, s.Prefix())
		st.Lease = &j
	}
	return cfg, own
}

func backendName(cfg *netconf.Config) string {
	if cfg == nil {
		return ""
	}
	return cfg.BackendType
}

func leaseBackend(l *lease.Lease) string {
	if l == nil {
		return ""
	}
	return l.Attrs.BackendType
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

// checkHealth asks flanneld's /healthz and /readyz.
func checkHealth(ctx context.Context, ip string, port int) *Health {
	// flanneld listens on 0.0.0.0 by default: ask it on loopback.
	if a, err := netip.ParseAddr(ip); err == nil && a.IsUnspecified() {
		ip = "127.0.0.1"
		if a.Is6() {
			ip = "::1"
		}
	}
	base := "http://" + net.JoinHostPort(ip, strconv.Itoa(port))
	h := &Health{URL: base}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	var errs []string
	for _, p := range []struct {
		path string
		code *int
	}{{"/healthz", &h.Healthz}, {"/readyz", &h.Readyz}} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+p.path, nil)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		resp, err := client.Do(req)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		*p.code = resp.StatusCode
	}
	h.Error = strings.Join(errs, "; ")
	return h
}

// Print writes the report as the table `flannelctl status` shows.
func Print(w io.Writer, st Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
	if st.SubnetEnv != nil {
		e := st.SubnetEnv
		row("subnet.env", "%s: FLANNEL_NETWORK=%s FLANNEL_SUBNET=%s FLANNEL_MTU=%d FLANNEL_IPMASQ=%t", st.SubnetFile, e.Network, e.Subnet, e.MTU, e.IPMasq)
	} else {
		row("subnet.env", "%s", st.SubnetEnvError)
	}
	if st.Node != nil {
		row("node", "%s", nodeRow(st.Node))
	}
	if l := st.Lease; l != nil {
		exp := "reserved (no expiry)"
		if l.Node != "" {
			exp = "podCIDR of node " + l.Node + " (no expiry)"
		}
		if l.Expires != nil {
			exp = fmt.Sprintf("expires in %s (%s)", lease.FormatLeft(time.Until(*l.Expires)), l.Expires.Format(time.RFC3339))
		}
		row("lease", "%s, public IP %s, %s", l.Subnet, l.PublicIP, exp)
	} else {
		row("lease", "none found")
	}
	if st.Backend != "" {
		data := ""
		if st.Lease != nil && len(st.Lease.BackendData) > 0 {
			data = " " + string(st.Lease.BackendData)
		}
		row("backend", "%s%s", st.Backend, data)
	}
	if st.Reservations > 0 {
		row("peers", "%d (%d of them reservations)", st.Peers, st.Reservations)
	} else {
		row("peers", "%d", st.Peers)
	}
	switch d := st.Device; {
	case d == nil:
		row("device", "none (backend %s)", cmp.Or(st.Backend, "unknown"))
	case d.MTU > 0:
		row("device", "%s %s, MTU %d", d.Name, d.State, d.MTU)
	default:
		row("device", "%s %s", d.Name, d.State)
	}
	if h := st.Health; h != nil {
		code := func(c int) string {
			if c == 0 {
				return "unreachable"
			}
			return strconv.Itoa(c)
		}
		msg := fmt.Sprintf("%s/healthz %s, /readyz %s", h.URL, code(h.Healthz), code(h.Readyz))
		if h.Error != "" {
			msg += " (" + h.Error + ")"
		}
		row("health", "%s", msg)
	} else {
		row("health", "not checked (--healthz-port)")
	}
	return tw.Flush()
}

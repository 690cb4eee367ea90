package main

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

// statusJSON is `status -o json`.
type statusJSON struct {
	SubnetFile     string     `json:"subnetFile"`
	SubnetEnv      *envJSON   `json:"subnetEnv,omitempty"`
	SubnetEnvError string     `json:"subnetEnvError,omitempty"`
	Lease          *leaseJSON `json:"lease,omitempty"`
	Backend        string     `json:"backend,omitempty"`
	// Peers counts the other hosts' keys: leases and reservations (of
	// which Reservations are).
	Peers        int         `json:"peers"`
	Reservations int         `json:"reservations"`
	Device       *deviceJSON `json:"device,omitempty"` // absent for backends without one
	Health       *healthJSON `json:"health,omitempty"` // absent without --healthz-port
	// Problems lists what keeps the daemon from being healthy; empty
	// when it is.
	Problems []string `json:"problems"`
}

type envJSON struct {
	Network     string `json:"network,omitempty"`
	Subnet      string `json:"subnet,omitempty"`
	IPv6Network string `json:"ipv6Network,omitempty"`
	IPv6Subnet  string `json:"ipv6Subnet,omitempty"`
	MTU         int    `json:"mtu"`
	IPMasq      bool   `json:"ipMasq"`
}

type deviceJSON struct {
	Name  string `json:"name"`
	State string `json:"state"` // up, down or missing
	MTU   int    `json:"mtu,omitempty"`
}

type healthJSON struct {
	URL     string `json:"url"`
	Healthz int    `json:"healthz,omitempty"` // HTTP status; 0 when unreachable
	Readyz  int    `json:"readyz,omitempty"`
	Error   string `json:"error,omitempty"`
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func statusCmd(ctx context.Context, args []string, e opsEnv) error {
	f := newFlags("status", e)
	var c conn
	c.register(f)
	var subnetFile, healthzIP string
	var healthzPort int
	f.envString(&subnetFile, "subnet-file", subnetenv.DefaultPath, "the subnet.env flanneld writes")
	f.envString(&healthzIP, "healthz-ip", "127.0.0.1", "address of flanneld's health endpoints (0.0.0.0 means this host)")
	f.envInt(&healthzPort, "healthz-port", 0, "port of flanneld's health endpoints; 0 skips the check")
	output := outputFlag(f)
	pos, err := f.parse(args, e.getenv)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("status: unexpected argument %q", pos[0])
	}
	if err := cmp.Or(c.validate(), checkOutput(*output)); err != nil {
		return err
	}
	if healthzPort < 0 || healthzPort > 65535 {
		return fmt.Errorf("--healthz-port=%d: not a port number", healthzPort)
	}

	st := statusJSON{SubnetFile: subnetFile, Problems: []string{}}
	problem := func(format string, args ...any) { st.Problems = append(st.Problems, fmt.Sprintf(format, args...)) }
	env, envErr := subnetenv.Read(subnetFile)
	if envErr != nil {
		st.SubnetEnvError = envErr.Error()
		problem("no usable subnet.env: %v", envErr)
	} else {
		st.SubnetEnv = &envJSON{Network: prefixString(env.Network), Subnet: prefixString(env.Subnet),
			IPv6Network: prefixString(env.IPv6Network), IPv6Subnet: prefixString(env.IPv6Subnet), MTU: env.MTU, IPMasq: env.IPMasq}
	}

	var cfg *netconf.Config
	var own *lease.Lease
	if s, err := c.open(ctx, e); err != nil {
		problem("etcd: %v", err)
	} else {
		defer s.Close()
		cfg, own = statusFromEtcd(ctx, s, env, envErr, &st, problem)
	}
	st.Backend = cmp.Or(backendName(cfg), leaseBackend(own))

	sys := doctor.NewSystem()
	if dev := doctor.DeviceName(st.Backend, cfg, own); dev != "" {
		d := &deviceJSON{Name: dev, State: "missing"}
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

	if healthzPort > 0 {
		st.Health = checkHealth(ctx, healthzIP, healthzPort)
		if st.Health.Healthz != http.StatusOK || st.Health.Readyz != http.StatusOK {
			problem("flanneld's health endpoints at %s do not both answer 200", st.Health.URL)
		}
	}

	if *output == "json" {
		if err := writeJSON(e.stdout, st); err != nil {
			return err
		}
	} else {
		printStatus(e.stdout, st)
	}
	if len(st.Problems) > 0 {
		return fmt.Errorf("status: flanneld on this host is not healthy: %s", strings.Join(st.Problems, "; "))
	}
	return nil
}

// statusFromEtcd fills in the lease and peers and returns the config and
// our lease (nil when not found).
func statusFromEtcd(ctx context.Context, s store, env subnetenv.Env, envErr error, st *statusJSON, problem func(string, ...any)) (*netconf.Config, *lease.Lease) {
	raw, cfg, err := readConfig(ctx, s)
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
		j := toJSON(*own, s.Prefix())
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

// checkHealth asks flanneld's /healthz and /readyz.
func checkHealth(ctx context.Context, ip string, port int) *healthJSON {
	// flanneld listens on 0.0.0.0 by default: ask it on loopback.
	if a, err := netip.ParseAddr(ip); err == nil && a.IsUnspecified() {
		ip = "127.0.0.1"
		if a.Is6() {
			ip = "::1"
		}
	}
	base := "http://" + net.JoinHostPort(ip, strconv.Itoa(port))
	h := &healthJSON{URL: base}
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

func printStatus(w io.Writer, st statusJSON) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
	if st.SubnetEnv != nil {
		e := st.SubnetEnv
		row("subnet.env", "%s: FLANNEL_NETWORK=%s FLANNEL_SUBNET=%s FLANNEL_MTU=%d FLANNEL_IPMASQ=%t", st.SubnetFile, e.Network, e.Subnet, e.MTU, e.IPMasq)
	} else {
		row("subnet.env", "%s", st.SubnetEnvError)
	}
	if l := st.Lease; l != nil {
		exp := "reserved (no expiry)"
		if l.Expires != nil {
			exp = fmt.Sprintf("expires in %s (%s)", fmtLeft(time.Until(*l.Expires)), l.Expires.Format(time.RFC3339))
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
	tw.Flush()
}

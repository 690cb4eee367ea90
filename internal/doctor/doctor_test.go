package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// fakeSys is a host as the checks see it.
type fakeSys struct {
	sysctl   map[string]string
	links    map[string]Link
	iptables map[string]string
	offload  map[string]bool
	// answer decides each probe; nil answers all.
	answer func(Probe) ProbeResult
	probed []Probe
}

func (f *fakeSys) Sysctl(name string) (string, error) {
	v, ok := f.sysctl[name]
	if !ok {
		return "", fmt.Errorf("open /proc/sys/%s: %w", name, fs.ErrNotExist)
	}
	return v, nil
}

func (f *fakeSys) Link(name string) (Link, error) {
	if l, ok := f.links[name]; ok {
		return l, nil
	}
	return Link{}, ErrNoLink
}

func (f *fakeSys) LinkByIndex(i int) (Link, error) {
	for _, l := range f.links {
		if l.Index == i {
			return l, nil
		}
	}
	return Link{}, ErrNoLink
}

func (f *fakeSys) LinkWithAddr(a netip.Addr) (Link, error) {
	for _, l := range f.links {
		for _, p := range l.Addrs {
			if p.Addr() == a {
				return l, nil
			}
		}
	}
	return Link{}, ErrNoLink
}

func (f *fakeSys) RouteLink(netip.Addr) (Link, error) { return f.Link("eth0") }

func (f *fakeSys) IPTablesSave(_ context.Context, table string) ([]byte, error) {
	v, ok := f.iptables[table]
	if !ok {
		return nil, fmt.Errorf("iptables-save: not found")
	}
	return []byte(v), nil
}

func (f *fakeSys) TxChecksumOffload(dev string) (bool, error) {
	v, ok := f.offload[dev]
	if !ok {
		return false, fmt.Errorf("no such device")
	}
	return v, nil
}

func (f *fakeSys) Probe(_ context.Context, ps []Probe, _ time.Duration) []ProbeResult {
	out := make([]ProbeResult, len(ps))
	for i, p := range ps {
		f.probed = append(f.probed, p)
		if f.answer == nil {
			out[i].Replied = true
		} else {
			out[i] = f.answer(p)
		}
	}
	return out
}

const acceptAll = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

var (
	own   = netip.MustParsePrefix("10.5.1.0/24")
	peer2 = netip.MustParsePrefix("10.5.2.0/24")
	peer3 = netip.MustParsePrefix("10.5.3.0/24")
)

func vxLease(sn netip.Prefix, ip string) lease.Lease {
	return lease.Lease{Subnet: sn, ID: 7, Expires: time.Now().Add(23 * time.Hour), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`),
	}}
}

// healthy is a vxlan host with two peers on which nothing is wrong.
func healthy(t *testing.T) (*fakeSys, Input) {
	cfg, err := netconf.Parse([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	sys := &fakeSys{
		sysctl: map[string]string{
			"net/ipv4/ip_forward":                "1",
			"net/ipv4/conf/all/rp_filter":        "0",
			"net/ipv4/conf/eth0/rp_filter":       "0",
			"net/bridge/bridge-nf-call-iptables": "1",
		},
		links: map[string]Link{
			"eth0":      {Name: "eth0", Index: 2, Up: true, MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.1.1/24")}},
			"flannel.1": {Name: "flannel.1", Index: 5, Up: true, MTU: 1450, Parent: 2, Addrs: []netip.Prefix{netip.MustParsePrefix("10.5.1.0/32")}},
			"docker0":   {Name: "docker0", Index: 6, Up: true, MTU: 1450, Addrs: []netip.Prefix{netip.MustParsePrefix("10.5.1.1/24")}},
		},
		iptables: map[string]string{"filter": acceptAll, "nat": "*nat\nCOMMIT\n"},
		offload:  map[string]bool{"flannel.1": false},
	}
	in := Input{
		SubnetFile: "/run/flannel/subnet.env",
		Env: subnetenv.Env{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix("10.5.1.1/24"),
			MTU: 1450, IPMasq: true},
		Config: cfg,
		Leases: []lease.Lease{vxLease(own, "192.168.1.1"), vxLease(peer2, "192.168.1.2"), vxLease(peer3, "192.168.1.3")},
	}
	return sys, in
}

func run(t *testing.T, sys *fakeSys, in Input) []Finding {
	t.Helper()
	fs := Run(context.Background(), sys, in)
	for _, f := range fs {
		t.Log(f)
	}
	return fs
}

func levels(fs []Finding, l Level) []Finding {
	return slices.DeleteFunc(slices.Clone(fs), func(f Finding) bool { return f.Level != l })
}

func TestHealthyHostHasOnlyOK(t *testing.T) {
	sys, in := healthy(t)
	fs := run(t, sys, in)
	for _, f := range fs {
		if f.Level != OK {
			t.Errorf("healthy host: %s", f)
		}
	}
	checks := map[string]bool{}
	for _, f := range fs {
		checks[f.Check] = true
	}
	for _, c := range []string{"subnet.env", "lease", "device", "bridge", "mtu", "ip_forward", "forward", "rp_filter", "br_netfilter", "offload", "peers"} {
		if !checks[c] {
			t.Errorf("no finding for check %q", c)
		}
	}
	// Each peer is probed through the overlay at its subnet address,
	// small and then full-size with DF.
	for _, sn := range []netip.Prefix{peer2, peer3} {
		var small, big bool
		for _, p := range sys.probed {
			if p.Dst == sn.Addr() && !p.DF {
				small = true
			}
			if p.Dst == sn.Addr() && p.DF && p.Size == 1450 {
				big = true
			}
		}
		if !small || !big {
			t.Errorf("peer %s: small probe %v, 1450-byte DF probe %v; probes: %v", sn, small, big, sys.probed)
		}
	}
}

func TestFindings(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*fakeSys, *Input)
		check string
		level Level
		want  string // in the message
	}{
		{"no subnet.env", func(s *fakeSys, in *Input) { in.EnvErr = fmt.Errorf("open: %w", fs.ErrNotExist) },
			"subnet.env", Fail, "does not exist"},
		{"lease gone", func(s *fakeSys, in *Input) { in.Leases = in.Leases[1:] },
			"lease", Fail, "no lease for 10.5.1.0/24"},
		{"config changed", func(s *fakeSys, in *Input) {
			in.Config.Network = netip.MustParsePrefix("10.6.0.0/16")
		}, "lease", Fail, "config changed"},
		{"etcd down", func(s *fakeSys, in *Input) {
			in.EtcdErr = fmt.Errorf("context deadline exceeded")
			in.Config = nil
			in.Leases = nil
		},
			"lease", Fail, "cannot read the leases"},
		{"device missing", func(s *fakeSys, in *Input) { delete(s.links, "flannel.1") },
			"device", Fail, "flannel.1 does not exist"},
		{"device down", func(s *fakeSys, in *Input) { setLink(s, "flannel.1", func(l *Link) { l.Up = false }) },
			"device", Fail, "flannel.1 is down"},
		{"device MTU", func(s *fakeSys, in *Input) { setLink(s, "flannel.1", func(l *Link) { l.MTU = 1400 }) },
			"device", Fail, "MTU 1400 but subnet.env says FLANNEL_MTU=1450"},
		{"device address", func(s *fakeSys, in *Input) { setLink(s, "flannel.1", func(l *Link) { l.Addrs = nil }) },
			"device", Fail, "lacks its address 10.5.1.0/32"},
		{"bridge MTU", func(s *fakeSys, in *Input) { setLink(s, "docker0", func(l *Link) { l.MTU = 1500 }) },
			"bridge", Fail, "docker0 has MTU 1500"},
		{"bridge from an old lease", func(s *fakeSys, in *Input) {
			s.links["cni0"] = Link{Name: "cni0", MTU: 1450, Addrs: []netip.Prefix{netip.MustParsePrefix("10.5.9.1/24")}}
		}, "bridge", Fail, "cni0 has address 10.5.9.1/24, outside this host's subnet 10.5.1.0/24"},
		{"external MTU", func(s *fakeSys, in *Input) { setLink(s, "eth0", func(l *Link) { l.MTU = 1450 }) },
			"mtu", Fail, "needs 1500 bytes on eth0"},
		{"ip_forward off", func(s *fakeSys, in *Input) { s.sysctl["net/ipv4/ip_forward"] = "0" },
			"ip_forward", Fail, "ip_forward is 0"},
		{"FORWARD drop", func(s *fakeSys, in *Input) { s.iptables["filter"] = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n" },
			"forward", Fail, "policy DROP"},
		{"FORWARD drop, flannel's rules", func(s *fakeSys, in *Input) {
			s.iptables["filter"] = "*filter\n:FORWARD DROP [0:0]\n:FLANNEL-FWD - [0:0]\n" +
				"-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n" +
				"-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n" +
				"-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\nCOMMIT\n"
		}, "forward", OK, "FLANNEL-FWD"},
		{"no iptables", func(s *fakeSys, in *Input) { delete(s.iptables, "filter") },
			"forward", Skip, "cannot read"},
		{"rp_filter strict on all", func(s *fakeSys, in *Input) { s.sysctl["net/ipv4/conf/all/rp_filter"] = "1" },
			"rp_filter", Warn, "rp_filter=1 on all"},
		{"rp_filter strict on eth0", func(s *fakeSys, in *Input) { s.sysctl["net/ipv4/conf/eth0/rp_filter"] = "1" },
			"rp_filter", Warn, "rp_filter=1 on eth0"},
		{"rp_filter loose", func(s *fakeSys, in *Input) { s.sysctl["net/ipv4/conf/all/rp_filter"] = "2" },
			"rp_filter", OK, "loose"},
		{"no br_netfilter", func(s *fakeSys, in *Input) { delete(s.sysctl, "net/bridge/bridge-nf-call-iptables") },
			"br_netfilter", Warn, "not loaded"},
		{"bridge-nf-call-iptables 0", func(s *fakeSys, in *Input) { s.sysctl["net/bridge/bridge-nf-call-iptables"] = "0" },
			"br_netfilter", Warn, "is 0"},
		{"offload on, no risk", func(s *fakeSys, in *Input) { s.offload["flannel.1"] = true },
			"offload", OK, "is on for flannel.1"},
		{"offload on behind NAT", func(s *fakeSys, in *Input) {
			s.offload["flannel.1"] = true
			in.Leases[0].Attrs.PublicIP = netip.MustParseAddr("203.0.113.7")
		}, "offload", Warn, "behind NAT"},
		{"offload on with kube-proxy ipvs", func(s *fakeSys, in *Input) {
			s.offload["flannel.1"] = true
			s.links["kube-ipvs0"] = Link{Name: "kube-ipvs0"}
		}, "offload", Warn, "IPVS"},
		{"offload on with kube-proxy iptables", func(s *fakeSys, in *Input) {
			s.offload["flannel.1"] = true
			s.iptables["nat"] = "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"
		}, "offload", Warn, "kube-proxy NATs"},
		{"peer down", func(s *fakeSys, in *Input) {
			s.answer = func(p Probe) ProbeResult {
				return ProbeResult{Replied: !strings.HasSuffix(p.Dst.String(), ".3") && p.Dst != peer3.Addr()}
			}
		}, "peers", Fail, "peer 10.5.3.0/24: neither 10.5.3.0 (overlay) nor the host 192.168.1.3"},
		{"overlay blocked", func(s *fakeSys, in *Input) {
			s.answer = func(p Probe) ProbeResult { return ProbeResult{Replied: p.Dst != peer3.Addr()} }
		}, "peers", Fail, "10.5.3.0 does not answer through the overlay, though the host 192.168.1.3 answers"},
		{"full-size packets lost", func(s *fakeSys, in *Input) {
			s.answer = func(p Probe) ProbeResult { return ProbeResult{Replied: !(p.DF && p.Dst == peer2.Addr())} }
		}, "peers", Fail, "peer 10.5.2.0/24: small packets pass but 1450-byte ones"},
		{"local route too small", func(s *fakeSys, in *Input) {
			s.answer = func(p Probe) ProbeResult { return ProbeResult{Replied: !p.DF, TooBig: p.DF} }
		}, "peers", Fail, "does not fit the local route"},
		{"cached path MTU", func(s *fakeSys, in *Input) {
			s.answer = func(p Probe) ProbeResult { return ProbeResult{Replied: !p.DF, TooBig: p.DF, RouteMTU: 1350} }
		}, "peers", Fail, "the kernel caches a path MTU of 1350 for 10.5.2.0"},
		{"router reports MTU", func(s *fakeSys, in *Input) {
			s.answer = func(p Probe) ProbeResult {
				if p.DF {
					return ProbeResult{PathMTU: 1400}
				}
				return ProbeResult{Replied: true}
			}
		}, "peers", Fail, "a router reported MTU 1400"},
		{"peer on another backend", func(s *fakeSys, in *Input) { in.Leases[2].Attrs.BackendType = "host-gw" },
			"peers", Warn, `announces backend "host-gw"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sys, in := healthy(t)
			sys.links = maps.Clone(sys.links)
			tt.edit(sys, &in)
			fs := run(t, sys, in)
			found := false
			for _, f := range fs {
				if f.Check == tt.check && f.Level == tt.level && strings.Contains(f.Message, tt.want) {
					found = true
					if (f.Level == Warn || f.Level == Fail) && f.Fix == "" {
						t.Errorf("%s has no fix", f)
					}
				}
			}
			if !found {
				t.Errorf("no %s %s finding containing %q", tt.level, tt.check, tt.want)
			}
			if tt.level != Fail && Failed(fs) {
				t.Errorf("Failed = %v with only a %s injected: %v", Failed(fs), tt.level, levels(fs, Fail))
			}
		})
	}
}

func setLink(s *fakeSys, name string, edit func(*Link)) {
	l := s.links[name]
	edit(&l)
	s.links[name] = l
}

func TestHostGWProbesBridgeAndSkipsWithoutOne(t *testing.T) {
	sys, in := healthy(t)
	cfg, _ := netconf.Parse([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`))
	in.Config = cfg
	for i := range in.Leases {
		in.Leases[i].Attrs.BackendType, in.Leases[i].Attrs.BackendData = "host-gw", nil
	}
	in.Env.MTU = 1500
	delete(sys.links, "flannel.1")
	setLink(sys, "docker0", func(l *Link) { l.MTU = 1500 })
	// Peer 3 has no bridge yet: its .1 is silent, the host answers.
	sys.answer = func(p Probe) ProbeResult { return ProbeResult{Replied: p.Dst != peer3.Addr().Next()} }
	fs := run(t, sys, in)
	if Failed(fs) {
		t.Fatalf("failed: %v", levels(fs, Fail))
	}
	var skipped bool
	for _, f := range fs {
		if f.Check == "peers" && f.Level == Skip && strings.Contains(f.Message, "10.5.3.1 (its bridge) does not answer") {
			skipped = true
		}
	}
	if !skipped {
		t.Error("no skip note for the peer without a bridge")
	}
	if !slices.Contains(sys.probed, Probe{Dst: peer2.Addr().Next(), Size: 1500, DF: true}) {
		t.Errorf("no full-size DF probe to peer 2's bridge address: %v", sys.probed)
	}
}

func TestReservationsAreNotProbed(t *testing.T) {
	sys, in := healthy(t)
	in.Leases = append(in.Leases, lease.Lease{Subnet: netip.MustParsePrefix("10.5.4.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.9")}})
	fs := run(t, sys, in)
	if Failed(fs) {
		t.Fatalf("failed: %v", levels(fs, Fail))
	}
	for _, p := range sys.probed {
		if p.Dst == netip.MustParseAddr("10.5.4.0") {
			t.Errorf("probed an untaken reservation: %v", p)
		}
	}
}

func TestSilentReservationIsNoFailure(t *testing.T) {
	sys, in := healthy(t)
	cfg, _ := netconf.Parse([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}`))
	in.Config, in.Env.MTU = cfg, 1472
	for i := range in.Leases {
		in.Leases[i].Attrs.BackendType, in.Leases[i].Attrs.BackendData = "", nil
	}
	in.Leases[2].ID = 0 // 10.5.3.0/24: a reservation whose host is not up
	delete(sys.links, "flannel.1")
	sys.links["flannel0"] = Link{Name: "flannel0", Up: true, MTU: 1472, Addrs: []netip.Prefix{netip.MustParsePrefix("10.5.1.0/32")}}
	setLink(sys, "docker0", func(l *Link) { l.MTU = 1472 })
	sys.answer = func(p Probe) ProbeResult {
		return ProbeResult{Replied: p.Dst != peer3.Addr() && p.Dst != netip.MustParseAddr("192.168.1.3")}
	}
	fs := run(t, sys, in)
	if Failed(fs) {
		t.Errorf("failed: %v", levels(fs, Fail))
	}
	if !slices.ContainsFunc(fs, func(f Finding) bool {
		return f.Level == Skip && strings.Contains(f.Message, "reserved for 192.168.1.3")
	}) {
		t.Error("no note for the silent reservation")
	}
}

func TestFindingLine(t *testing.T) {
	f := Finding{Level: Fail, Check: "ip_forward", Message: "net.ipv4.ip_forward is 0", Fix: "sysctl -w net.ipv4.ip_forward=1"}
	got := f.String()
	if strings.Contains(got, "\n") || !strings.HasPrefix(got, "FAIL") || !strings.Contains(got, "Fix: sysctl") {
		t.Errorf("line = %q", got)
	}
	b, _ := json.Marshal(f)
	if !strings.Contains(string(b), `"level":"FAIL"`) {
		t.Errorf("json = %s", b)
	}
}

package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/backend/vxlan"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/ns"
	"github.com/flannel-go/flannel/internal/route"
)

// This file holds what the scale benchmark (`flannelctl lab scale`) needs
// beyond a normal lab: writing many leases at once, reading etcd's request
// counters, and watching a host's kernel tables fill up (entrywatch_linux.go).

// The scale lab's overlay is a /8 of /24s, so 65,000 hosts fit, and the
// fake peers' public addresses are a /16 made on-link on the host's eth0.
var (
	ScaleNetwork  = netip.MustParsePrefix("10.0.0.0/8")
	ScaleUnderlay = netip.MustParsePrefix("172.20.0.0/16")
)

// maxTxnOps is etcd's default --max-txn-ops: a larger transaction is refused.
const maxTxnOps = 128

// LeaseKV returns the etcd key and value under which lease ls is stored, in
// upstream's format.
func (l *Lab) LeaseKV(ls lease.Lease) (key, value string, err error) {
	v, err := json.Marshal(ls.Attrs)
	if err != nil {
		return "", "", fmt.Errorf("lab: encode lease %s: %w", ls.Key(), err)
	}
	return lease.KeyPath(l.Prefix, ls.Key()), string(v), nil
}

// PutLeases writes leases in transactions of up to 128 puts (etcd's default
// limit), each key attached to etcd lease id (0: a reservation). It is the
// cheap way to make a cluster of thousands of hosts appear at once.
func (l *Lab) PutLeases(ctx context.Context, cli *clientv3.Client, leases []lease.Lease, id clientv3.LeaseID) error {
	var opts []clientv3.OpOption
	if id != 0 {
		opts = append(opts, clientv3.WithLease(id))
	}
	for start := 0; start < len(leases); start += maxTxnOps {
		batch := leases[start:min(start+maxTxnOps, len(leases))]
		ops := make([]clientv3.Op, 0, len(batch))
		for _, ls := range batch {
			k, v, err := l.LeaseKV(ls)
			if err != nil {
				return err
			}
			ops = append(ops, clientv3.OpPut(k, v, opts...))
		}
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cli.Txn(tctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("lab: write leases %d..%d of %d: %w", start+1, start+len(batch), len(leases), err)
		}
	}
	return nil
}

// EtcdRequests is a reading of etcd's request counters.
type EtcdRequests struct {
	// Started counts gRPC calls by method (Range, Txn, Put, LeaseGrant,
	// ...); for streams (Watch, LeaseKeepAlive) it counts streams opened.
	Started map[string]int64
	// Watchers is the number of watchers open now, over all streams.
	Watchers int64
}

// Sub returns what happened between before and r.
func (r EtcdRequests) Sub(before EtcdRequests) EtcdRequests {
	d := EtcdRequests{Started: map[string]int64{}, Watchers: r.Watchers - before.Watchers}
	for m, n := range r.Started {
		if n != before.Started[m] {
			d.Started[m] = n - before.Started[m]
		}
	}
	return d
}

// Total is the number of calls and streams started.
func (r EtcdRequests) Total() int64 {
	var n int64
	for _, v := range r.Started {
		n += v
	}
	return n
}

// EtcdRequests reads the request counters from the /metrics endpoint that
// etcd (the system binary and the embedded server alike) serves on its
// client URL. The lab's addresses exist only inside the lab, so the
// connection is made from the etcd namespace.
func (l *Lab) EtcdRequests(ctx context.Context) (EtcdRequests, error) {
	if len(l.EtcdEndpoints) == 0 {
		return EtcdRequests{}, errors.New("lab: no etcd endpoint")
	}
	from := l.EtcdNS
	if l.EtcdPID == 0 && len(l.Hosts) > 0 {
		from = l.Hosts[0].NS
	}
	dial := DialerIn(from)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
		DisableKeepAlives: true,
	}}
	url := strings.TrimRight(l.EtcdEndpoints[0], "/") + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return EtcdRequests{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return EtcdRequests{}, fmt.Errorf("lab: etcd metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return EtcdRequests{}, fmt.Errorf("lab: etcd metrics: GET %s: %s", url, resp.Status)
	}
	r := EtcdRequests{Started: map[string]int64{}}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	found := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "grpc_server_started_total{"):
			m, v, ok := metricLine(line, "grpc_method")
			if ok {
				r.Started[m] += int64(v)
				found = true
			}
		case strings.HasPrefix(line, "etcd_debugging_mvcc_watcher_total "):
			if _, v, ok := metricLine(line, ""); ok {
				r.Watchers = int64(v)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return EtcdRequests{}, fmt.Errorf("lab: etcd metrics: %w", err)
	}
	if !found {
		return EtcdRequests{}, fmt.Errorf("lab: etcd metrics at %s have no grpc_server_started_total", url)
	}
	return r, nil
}

// metricLine parses a Prometheus text line `name{a="x",b="y"} 12`,
// returning the value of label (if asked for) and the sample.
func metricLine(line, label string) (string, float64, bool) {
	sp := strings.LastIndexByte(line, ' ')
	if sp < 0 {
		return "", 0, false
	}
	v, err := strconv.ParseFloat(line[sp+1:], 64)
	if err != nil {
		return "", 0, false
	}
	if label == "" {
		return "", v, true
	}
	_, rest, ok := strings.Cut(line[:sp], label+`="`)
	if !ok {
		return "", 0, false
	}
	val, _, ok := strings.Cut(rest, `"`)
	return val, v, ok
}

// AddOnLinkRoute makes prefix reachable without a gateway through h's eth0,
// inside h's namespace only: `ip route replace PREFIX dev eth0`. It gives
// fake peers underlay addresses beyond the lab's /24.
func (l *Lab) AddOnLinkRoute(h *Host, prefix netip.Prefix) error {
	n, err := ns.Open(h.NS)
	if err != nil {
		return err
	}
	return n.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipnet(prefix), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("lab: route %s dev eth0 on %s: %w", prefix, h.Name, err)
		}
		return nil
	})
}

// DeleteLink removes link name from h if it exists, with every route,
// neighbour and FDB entry on it: a cold start for the next flanneld.
func (l *Lab) DeleteLink(h *Host, name string) error {
	n, err := ns.Open(h.NS)
	if err != nil {
		return err
	}
	return n.Do(func() error {
		link, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("lab: delete %s on %s: %w", name, h.Name, err)
		}
		return nil
	})
}

// PeakRSS returns the peak resident memory (VmHWM: anonymous and file
// pages, such as the binary's text) of pid in bytes.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM for pid %d", pid)
}

// FakeLeases returns n leases of distinct /24s in ScaleNetwork (never
// own) with distinct public addresses in ScaleUnderlay and, for vxlan,
// distinct VTEP MACs, in upstream's value format.
func FakeLeases(backendType string, own netip.Prefix, n int) []lease.Lease {
	out := make([]lease.Lease, 0, n)
	base := ScaleNetwork.Addr().As4()
	under := ScaleUnderlay.Addr().As4()
	for i := 1; len(out) < n; i++ {
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{base[0], byte(i >> 8), byte(i), 0}), 24)
		if sn == own {
			continue
		}
		k := len(out) + 1
		a := lease.Attrs{
			PublicIP:    netip.AddrFrom4([4]byte{under[0], under[1], byte(k >> 8), byte(k)}),
			BackendType: backendType,
		}
		if backendType == "vxlan" {
			mac := route.MAC{0x0e, 0, 0, byte(k >> 16), byte(k >> 8), byte(k)}
			a.BackendData = vxlan.LeaseData{VNI: 1, VtepMAC: mac}.Encode()
		}
		out = append(out, lease.Lease{Subnet: sn, Attrs: a})
	}
	return out
}

// RouteOf is the route the backend makes for a peer.
func RouteOf(backendType string, l lease.Lease) RouteEntry {
	if backendType == "host-gw" {
		return RouteEntry{Dst: l.Subnet, Gw: l.Attrs.PublicIP}
	}
	return RouteEntry{Dst: l.Subnet, Gw: l.Subnet.Addr()}
}

// ExpectedEntries is what the backend must program for leases: a route
// each and, for vxlan, the neighbour and FDB entry the route relies on.
func ExpectedEntries(backendType string, leases []lease.Lease) (Entries, error) {
	var e Entries
	for _, l := range leases {
		e.Routes = append(e.Routes, RouteOf(backendType, l))
		if backendType != "vxlan" {
			continue
		}
		d, err := vxlan.DecodeLeaseData(l.Attrs.BackendData)
		mac := d.VtepMAC
		if err != nil {
			return Entries{}, fmt.Errorf("fake lease %s: %w", l.Subnet, err)
		}
		e.Neighs = append(e.Neighs, NeighEntry{IP: l.Subnet.Addr(), MAC: mac})
		e.FDB = append(e.FDB, FDBEntry{MAC: mac, Dst: l.Attrs.PublicIP})
	}
	return e, nil
}

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/ns"
)

// faultOpts are labOpts with an ID of the fault tests' own prefix.
func faultOpts(t *testing.T, n int, config string, extraArgs ...string) lab.Options {
	o := labOpts(t, n, config, extraArgs...)
	o.ID = ns.Unique("ff")
	return o
}

const etcdPrefix = "/coreos.com/network"

// subnetKey is the etcd key of a lease on sn.
func subnetKey(sn netip.Prefix) string {
	return fmt.Sprintf("%s/subnets/%s-%d", etcdPrefix, sn.Addr(), sn.Bits())
}

// fakePeer is a lease of a host that does not exist, written by hand: the
// daemons must route to it like to any peer.
type fakePeer struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	MAC      string // vxlan VtepMAC
}

func (p fakePeer) value(backendType string) string {
	if backendType == "vxlan" {
		return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, p.PublicIP, p.MAC)
	}
	return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":%q}`, p.PublicIP, backendType)
}

// newFakePeer makes a peer on 10.5.<n>.0/24 at underlay address
// 192.168.100.<n-40>, where no lab host lives. For n from 240 to 254 the
// subnet is never one a small lab's hosts lease (they pick among the
// first 100 free ones).
func newFakePeer(n int) fakePeer {
	return fakePeer{
		Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(n), 0}), 24),
		PublicIP: netip.AddrFrom4([4]byte{192, 168, 100, byte(n - 40)}),
		MAC:      fmt.Sprintf("0a:fe:00:00:00:%02x", n),
	}
}

// etcdClient is a client of l's etcd, closed at cleanup.
func etcdClient(t *testing.T, l *lab.Lab) *clientv3.Client {
	t.Helper()
	cli, err := l.Etcd()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// etcdPut writes key, failing the test on error.
func etcdPut(t *testing.T, cli *clientv3.Client, key, val string) *clientv3.PutResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := cli.Put(ctx, key, val)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return r
}

// etcdDel deletes key, which must exist.
func etcdDel(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := cli.Delete(ctx, key)
	if err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
	if r.Deleted != 1 {
		t.Fatalf("delete %s: no such key", key)
	}
}

// nsRun runs a command in namespace name and returns its output; it fails
// the test if the command fails.
func nsRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	n, err := ns.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	out, err := n.Run(context.Background(), args[0], args[1:]...)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

// nsOutput runs a command in namespace name and returns its output, or ""
// if it fails.
func nsOutput(name string, args ...string) string {
	n, err := ns.Open(name)
	if err != nil {
		return ""
	}
	out, _ := n.Run(context.Background(), args[0], args[1:]...)
	return out
}

// peerEntries is what a host has for one peer: its route, and with vxlan
// its neighbour and FDB entries, as `ip` and `bridge` show them.
type peerEntries struct {
	Route, Neigh, FDB string
}

func (e peerEntries) any() bool { return e.Route != "" || e.Neigh != "" || e.FDB != "" }
func (e peerEntries) String() string {
	return fmt.Sprintf("route %q, neighbour %q, fdb %q", e.Route, e.Neigh, e.FDB)
}

// entriesFor reads host h's entries for the peer on subnet sn at publicIP.
func entriesFor(h *lab.Host, sn netip.Prefix, publicIP netip.Addr) peerEntries {
	var e peerEntries
	for _, line := range strings.Split(nsOutput(h.NS, "ip", "-4", "route", "show"), "\n") {
		if strings.HasPrefix(line, sn.String()+" ") {
			e.Route = strings.TrimSpace(line)
		}
	}
	for _, line := range strings.Split(nsOutput(h.NS, "ip", "-4", "neigh", "show", "dev", "flannel.1"), "\n") {
		if strings.HasPrefix(line, sn.Addr().String()+" ") {
			e.Neigh = strings.TrimSpace(line)
		}
	}
	for _, line := range strings.Split(nsOutput(h.NS, "bridge", "fdb", "show", "dev", "flannel.1"), "\n") {
		if strings.Contains(line, " dst "+publicIP.String()+" ") {
			e.FDB = strings.TrimSpace(line)
		}
	}
	return e
}

// complete reports whether e is everything backend b needs for a peer.
func (e peerEntries) complete(b string) bool {
	if b == "vxlan" {
		return e.Route != "" && e.Neigh != "" && e.FDB != ""
	}
	return e.Route != ""
}

// pingSet is pings at 10/s between pairs of containers, running for as
// long as a fault lasts.
type pingSet struct {
	ps []*lab.Pinger
}

// startPings pings both ways between each pair of hosts' containers.
func startPings(t *testing.T, l *lab.Lab, pairs ...[2]*lab.Host) *pingSet {
	t.Helper()
	// Up returns once every host has its lease, not once every host
	// routes to every other: wait for the routes, or the first ping could
	// be lost to start-up rather than to the fault.
	for _, p := range pairs {
		waitFor(t, 5*time.Second, "routes between "+p[0].Name+" and "+p[1].Name, func() bool {
			return entriesFor(p[0], p[1].Subnet, p[1].Addr).Route != "" && entriesFor(p[1], p[0].Subnet, p[0].Addr).Route != ""
		})
	}
	return pingPairs(t, l, pairs...)
}

// pingPairs starts the pings of startPings without waiting for routes.
func pingPairs(t *testing.T, l *lab.Lab, pairs ...[2]*lab.Host) *pingSet {
	t.Helper()
	s := &pingSet{}
	for _, p := range pairs {
		for _, d := range [][2]*lab.Host{{p[0], p[1]}, {p[1], p[0]}} {
			pg, err := l.StartPing(context.Background(), d[0], d[1].Container, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			s.ps = append(s.ps, pg)
		}
	}
	t.Cleanup(func() { s.stop() })
	return s
}

func (s *pingSet) stop() []lab.PingResult {
	var rs []lab.PingResult
	for _, p := range s.ps {
		rs = append(rs, p.Stop())
	}
	return rs
}

// stopNoLoss stops the pings and fails the test for every one lost. It
// returns how many were sent.
func (s *pingSet) stopNoLoss(t *testing.T) int {
	t.Helper()
	sent := 0
	for i, r := range s.stop() {
		p := s.ps[i]
		sent += r.Sent
		t.Logf("ping %s → %s: %s", p.From, p.To, r)
		if r.Sent < 5 {
			t.Errorf("ping %s → %s: only %d sent; the pinger did not run:\n%s", p.From, p.To, r.Sent, r.Output)
		}
		if len(r.Lost) > 0 {
			t.Errorf("ping %s → %s: %d of %d lost (icmp_seq %v):\n%s", p.From, p.To, len(r.Lost), r.Sent, r.Lost, lossContext(r.Output))
		}
	}
	return sent
}

// lossContext keeps the lines of ping's output that matter: losses and
// the summary.
func lossContext(out string) string {
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "bytes from") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// logOf returns host h's flanneld log.
func logOf(l *lab.Lab, h *lab.Host) string {
	b, _ := os.ReadFile(l.LogFile(h))
	return string(b)
}

// logSince returns what h's flanneld logged after offset bytes.
func logSince(l *lab.Lab, h *lab.Host, offset int) string {
	s := logOf(l, h)
	if offset > len(s) {
		return ""
	}
	return s[offset:]
}

// restartAndWait starts h's flanneld and waits for its "ready" line; the
// caller stopped it.
func restartAndWait(t *testing.T, l *lab.Lab, h *lab.Host) {
	t.Helper()
	before := countReady(t, l, h)
	if err := l.StartFlanneld(h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, h.Name+"'s flanneld to become ready", func() bool { return countReady(t, l, h) > before })
}

// startHost starts h's flanneld, waits for its subnet and gives it a
// container (for labs built with NoFlanneld).
func startHost(t *testing.T, l *lab.Lab, h *lab.Host) {
	t.Helper()
	if err := l.StartFlanneld(h); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitSubnet(context.Background(), h, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.SetupContainer(h); err != nil {
		t.Fatal(err)
	}
}

// stopFlanneld stops h's flanneld with sig.
func stopFlanneld(t *testing.T, l *lab.Lab, h *lab.Host, sig syscall.Signal) {
	t.Helper()
	if err := l.StopFlanneld(h, sig); err != nil {
		t.Fatal(err)
	}
}

// pollUntil polls ok every 10 ms until it holds or d passes, and returns
// how long that took and whether it held.
func pollUntil(d time.Duration, ok func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if ok() {
			return time.Since(start), true
		}
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var (
	nextBinOnce sync.Once
	nextBin     string
	nextBinErr  error
)

// nextVersion is the version string of the "upgraded" flanneld.
const nextVersion = "v0.1.1-faulttest"

// upgradedFlanneld builds flanneld again with another version: a
// different binary with a compatible config, as an upgrade brings.
func upgradedFlanneld(t *testing.T) string {
	t.Helper()
	nextBinOnce.Do(func() {
		nextBin = filepath.Join(binDir, "flanneld-next")
		cmd := exec.Command("go", "build", "-o", nextBin,
			"-ldflags=-X github.com/flannel-go/flannel/internal/version.Version="+nextVersion, "../cmd/flanneld")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			nextBinErr = fmt.Errorf("build upgraded flanneld: %v\n%s", err, out)
		}
	})
	if nextBinErr != nil {
		t.Fatal(nextBinErr)
	}
	return nextBin
}

// problems counts each distinct WARN and ERROR message in a log.
func problems(log string) map[string]int {
	m := map[string]int{}
	for _, line := range strings.Split(log, "\n") {
		var level string
		switch {
		case strings.Contains(line, " level=WARN "):
			level = "WARN"
		case strings.Contains(line, " level=ERROR "):
			level = "ERROR"
		default:
			continue
		}
		_, msg, ok := strings.Cut(line, " msg=")
		if !ok {
			continue
		}
		if strings.HasPrefix(msg, `"`) {
			if q, err := strconv.QuotedPrefix(msg); err == nil {
				msg, _ = strconv.Unquote(q)
			}
		} else {
			msg, _, _ = strings.Cut(msg, " ")
		}
		m[level+" "+msg]++
	}
	return m
}

// whenEach polls ok for every host until it holds for all or d passes
// since start, and returns for each host how long after start it first
// held (-1 if never).
func whenEach(start time.Time, d time.Duration, hosts []*lab.Host, ok func(h *lab.Host) bool) []time.Duration {
	out := make([]time.Duration, len(hosts))
	for i := range out {
		out[i] = -1
	}
	for {
		pending := 0
		for i, h := range hosts {
			if out[i] >= 0 {
				continue
			}
			if ok(h) {
				out[i] = time.Since(start).Round(time.Millisecond)
			} else {
				pending++
			}
		}
		if pending == 0 || time.Since(start) > d {
			return out
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// netMonitor is a netlink event monitor (`ip monitor`, `bridge monitor`)
// running in a namespace until stopped.
type netMonitor struct {
	cmd  *exec.Cmd
	out  strings.Builder
	mu   sync.Mutex
	done chan struct{}
}

func startMonitor(t *testing.T, nsName string, args ...string) *netMonitor {
	t.Helper()
	n, err := ns.Open(nsName)
	if err != nil {
		t.Fatal(err)
	}
	m := &netMonitor{done: make(chan struct{})}
	m.cmd = n.Command(context.Background(), args[0], args[1:]...)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	m.cmd.Stdout, m.cmd.Stderr = pw, pw
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go func() {
		defer close(m.done)
		buf := make([]byte, 4096)
		for {
			n, err := pr.Read(buf)
			m.mu.Lock()
			m.out.Write(buf[:n])
			m.mu.Unlock()
			if err != nil {
				pr.Close()
				return
			}
		}
	}()
	t.Cleanup(func() { m.stop() })
	return m
}

// stop ends the monitor and returns everything it printed.
func (m *netMonitor) stop() string {
	if m.cmd.ProcessState == nil {
		_ = m.cmd.Process.Kill()
		_ = m.cmd.Wait()
		<-m.done
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.out.String()
}

// devLink is what identifies a device to its peers and to the kernel.
type devLink struct {
	Index int
	MAC   string
}

// linkOf returns device dev of namespace nsName (zero if absent).
func linkOf(nsName, dev string) devLink {
	out := nsOutput(nsName, "ip", "-o", "link", "show", "dev", dev)
	var l devLink
	f := strings.Fields(out)
	if len(f) < 2 {
		return l
	}
	l.Index, _ = strconv.Atoi(strings.TrimSuffix(f[0], ":"))
	for i := range f {
		if f[i] == "link/ether" && i+1 < len(f) {
			l.MAC = f[i+1]
		}
	}
	return l
}

// rulesSnap is flannel's rules on a host: iptables-save's packet counter
// per rule, and nftables' handle per rule (the kernel's identity of a
// rule: a rule deleted and re-added gets a new handle).
type rulesSnap struct {
	Packets map[string]int64
	Handles map[string]string
}

var counterRE = regexp.MustCompile(`\s*counter packets \d+ bytes \d+`)

func rulesOf(t *testing.T, h *lab.Host) rulesSnap {
	t.Helper()
	s := rulesSnap{Packets: map[string]int64{}, Handles: map[string]string{}}
	for _, line := range strings.Split(nsRun(t, h.NS, "iptables-save", "-c"), "\n") {
		if !strings.HasPrefix(line, "[") || !strings.Contains(line, "flanneld") {
			continue
		}
		cnt, rule, _ := strings.Cut(line, "] ")
		pk, _, _ := strings.Cut(strings.TrimPrefix(cnt, "["), ":")
		n, err := strconv.ParseInt(pk, 10, 64)
		if err != nil {
			t.Fatalf("iptables-save line %q: %v", line, err)
		}
		s.Packets[rule] = n
	}
	var table, chain string
	for _, line := range strings.Split(nsOutput(h.NS, "nft", "-a", "list", "ruleset"), "\n") {
		l := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(l, "table "):
			table = l
		case strings.HasPrefix(l, "chain "):
			chain = l
		case strings.Contains(l, "# handle") && (strings.Contains(chain, "FLANNEL") || strings.Contains(l, "FLANNEL")):
			rule, handle, _ := strings.Cut(counterRE.ReplaceAllString(l, ""), "# handle")
			s.Handles[table+" / "+chain+" / "+strings.TrimSpace(rule)] = strings.TrimSpace(handle)
		}
	}
	return s
}

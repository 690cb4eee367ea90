package udp

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// BenchmarkIperf is a measurement, not a test: TCP throughput with iperf3
// from one container to another through this backend, through kernel vxlan
// set up by hand in the same topology (as flannel's vxlan backend programs
// it), and host to host over the underlay. The machine may be shared, so
// the three alternate for several rounds and medians are reported. Run:
//
//	go test -run XXX -bench Iperf -benchtime 1x ./internal/backend/udp
//
// FLANNEL_UDP_IPERF_SECONDS (default 5) is the length of each run,
// FLANNEL_UDP_IPERF_ROUNDS (default 3) the number of rounds and
// FLANNEL_UDP_IPERF_STREAMS (default 1) the parallel streams (iperf3 -P)
// and FLANNEL_UDP_IPERF_MODES (default "underlay,vxlan,udp") what to run.
// Besides throughput it reports TCP retransmits, the ping round trip
// through each path when idle, and the CPU time per GB moved: the whole
// machine's busy time (which includes the kernel's softirq work, all of
// vxlan's cost) and this process's (both hosts' udp datapaths).
//
// Both hosts' backends run in this one process; each gets as many Ps as a
// flanneld of its own would have (GOMAXPROCS = CPUs, to which each
// datapath adds one P per forwarding loop), so that one host's Go code
// does not wait for the other's.
func BenchmarkIperf(b *testing.B) {
	if _, err := execCommand("iperf3", "--version"); err != nil {
		b.Skip("iperf3 not installed")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2 * runtime.NumCPU()))
	secs, rounds := envInt("FLANNEL_UDP_IPERF_SECONDS", 5), envInt("FLANNEL_UDP_IPERF_ROUNDS", 3)
	streams := envInt("FLANNEL_UDP_IPERF_STREAMS", 1)
	l := newLab(b, 2)
	h1, h2 := l.hosts[0], l.hosts[1]

	// Both datapaths stay up; the per-peer /24 routes of vxlan, present or
	// not, decide which one the containers use (the udp route is the /16).
	for _, h := range l.hosts {
		l.start(h, allOffloads)
	}
	l.syncAll()
	setupVxlan(b, l)
	useVxlan := func(on bool) {
		mtu := h1.mtu
		for _, h := range l.hosts {
			for _, p := range l.hosts {
				if p != h && on {
					netnstest.Run(b, "ip", "-n", h.ns.Name, "route", "replace", p.subnet.String(), "via", p.subnet.Addr().String(), "dev", "flannel.1", "onlink")
				} else if p != h {
					// Absent after the previous round: not an error.
					_, _ = execCommand("ip", "-n", h.ns.Name, "route", "del", p.subnet.String(), "dev", "flannel.1")
				}
			}
			if on {
				mtu = 1450
			}
			netnstest.Run(b, "ip", "-n", h.ns.Name, "link", "set", "ctr", "mtu", fmt.Sprint(mtu))
			netnstest.Run(b, "ip", "-n", h.ctr.Name, "link", "set", "eth0", "mtu", fmt.Sprint(mtu))
		}
		mustPing(b, h1.ctr, h2.ctrAddr)
	}

	results := map[string][]iperfResult{}
	rtts := map[string][]float64{}
	measure := func(mode string) {
		switch mode {
		case "underlay":
			results[mode] = append(results[mode], iperf(b, h2.ns, h1.ns, h2.underlay, secs, streams))
			return
		case "vxlan":
			useVxlan(true)
			defer useVxlan(false)
		case "udp":
		default:
			b.Fatalf("FLANNEL_UDP_IPERF_MODES: unknown mode %q", mode)
		}
		rtts[mode] = append(rtts[mode], pingRTT(b, h1.ctr, h2.ctrAddr))
		results[mode] = append(results[mode], iperf(b, h2.ctr, h1.ctr, h2.ctrAddr, secs, streams))
	}
	modes := []string{"underlay", "vxlan", "udp"}
	if v := os.Getenv("FLANNEL_UDP_IPERF_MODES"); v != "" {
		modes = strings.Split(v, ",")
	}
	for r := range rounds {
		for i := range modes {
			measure(modes[(i+r)%len(modes)])
		}
	}
	b.Logf("udp: h1 %+v; h2 in %+v", h1.b.Stats(), h2.b.Stats().In)

	// Offloads off, once: the fallback path.
	for _, h := range l.hosts {
		h.b.Close()
		l.start(h, offloadSet{})
	}
	l.syncAll()
	mustPing(b, h1.ctr, h2.ctrAddr)
	results["udp-nooffload"] = append(results["udp-nooffload"], iperf(b, h2.ctr, h1.ctr, h2.ctrAddr, secs, streams))

	median := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	med := map[string]float64{}
	for k, rs := range results {
		var g, retr, mach, proc []float64
		for _, r := range rs {
			g = append(g, r.gbps)
			retr = append(retr, float64(r.retransmits))
			mach = append(mach, r.machineCPU/r.gb)
			proc = append(proc, r.procCPU/r.gb)
		}
		med[k] = median(g)
		b.ReportMetric(med[k], k+"-Gbit/s")
		b.Logf("%s: Gbit/s %.2f (runs %.2f), retransmits %.0f (runs %v), CPU s/GB machine %.2f process %.2f",
			k, med[k], g, median(retr), retr, median(mach), median(proc))
	}
	for k, v := range rtts {
		b.ReportMetric(median(v), k+"-rtt-µs")
	}
	b.ReportMetric(med["udp"]/med["vxlan"], "udp/vxlan")
	b.ReportMetric(med["udp"]/med["underlay"], "udp/underlay")
	b.Logf("ping µs per round: %v", rtts)
	b.Logf("medians: %v; udp/vxlan %.2f, udp/underlay %.2f", med, med["udp"]/med["vxlan"], med["udp"]/med["underlay"])
}

// pingRTT returns the mean round trip in µs of 200 pings from n to dst.
func pingRTT(tb testing.TB, n *ns.NS, dst netip.Addr) float64 {
	tb.Helper()
	out, err := n.Command(context.Background(), "ping", "-q", "-n", "-c", "200", "-i", "0.002", "-W", "1", dst.String()).Output()
	if err != nil {
		tb.Fatalf("ping %s: %v: %s", dst, err, out)
	}
	// "rtt min/avg/max/mdev = 0.031/0.045/0.120/0.010 ms"
	i := strings.Index(string(out), "= ")
	var lo, avg float64
	if i < 0 {
		tb.Fatalf("ping output: %s", out)
	}
	if _, err := fmt.Sscanf(string(out[i+2:]), "%f/%f", &lo, &avg); err != nil {
		tb.Fatalf("ping output %q: %v", out, err)
	}
	return avg * 1000
}

// cpuTimes returns the machine's idle and total jiffies from /proc/stat.
func cpuTimes() (idle, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	var f [10]uint64
	fmt.Sscanf(string(b), "cpu %d %d %d %d %d %d %d %d %d %d", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &f[9])
	for _, v := range f[:8] {
		total += v
	}
	return f[3] + f[4], total
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// setupVxlan creates flannel.1 on every host with a neighbour and fdb entry
// for every peer, as flannel's vxlan backend does (VNI 1, port 8472, MTU
// ext−50, address <subnet>/32); the per-peer routes are left to the caller.
func setupVxlan(tb testing.TB, l *lab) {
	for _, h := range l.hosts {
		mac := fmt.Sprintf("02:00:00:00:00:%02x", h.i)
		netnstest.Run(tb, "ip", "-n", h.ns.Name, "link", "add", "flannel.1", "type", "vxlan", "id", "1",
			"local", h.underlay.String(), "dev", "eth0", "dstport", "8472", "nolearning")
		netnstest.Run(tb, "ip", "-n", h.ns.Name, "link", "set", "flannel.1", "address", mac, "mtu", "1450", "up")
		netnstest.Run(tb, "ip", "-n", h.ns.Name, "addr", "add", h.subnet.Addr().String()+"/32", "dev", "flannel.1")
	}
	for _, h := range l.hosts {
		for _, p := range l.hosts {
			if p == h {
				continue
			}
			mac := fmt.Sprintf("02:00:00:00:00:%02x", p.i)
			netnstest.Run(tb, "ip", "-n", h.ns.Name, "neigh", "add", p.subnet.Addr().String(), "lladdr", mac, "dev", "flannel.1", "nud", "permanent")
			netnstest.Run(tb, "bridge", "-n", h.ns.Name, "fdb", "add", mac, "dev", "flannel.1", "dst", p.underlay.String(), "self", "permanent")
		}
	}
}

// iperfResult is one iperf3 run: received throughput, the sender's
// retransmits, and the CPU seconds spent meanwhile by the whole machine
// and by this process, with the GB received to relate them to.
type iperfResult struct {
	gbps              float64
	retransmits       int
	machineCPU, gb    float64
	procCPU, idleFrac float64
}

// procCPU returns this process's user plus system CPU seconds.
func procCPU() float64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// iperf runs an iperf3 server in srv and a client with the given parallel
// streams in cli against addr.
func iperf(tb testing.TB, srv, cli *ns.NS, addr netip.Addr, secs, streams int) iperfResult {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+30)*time.Second)
	defer cancel()
	s := srv.Command(ctx, "iperf3", "-s", "-B", addr.String(), "-p", "5201")
	if err := s.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		s.Process.Kill()
		s.Wait()
	}()
	var out []byte
	// The server is up once a short run succeeds; it warms up the path too.
	err := waitFor(3*time.Second, func() error {
		var err error
		out, err = cli.Command(ctx, "iperf3", "-c", addr.String(), "-p", "5201", "-t", "1", "-J").Output()
		return err
	})
	if err != nil {
		tb.Fatalf("iperf3 warm-up: %v: %s", err, out)
	}
	idle0, total0 := cpuTimes()
	p0 := procCPU()
	out, err = cli.Command(ctx, "iperf3", "-c", addr.String(), "-p", "5201", "-t", strconv.Itoa(secs),
		"-P", strconv.Itoa(streams), "-J").Output()
	idle1, total1 := cpuTimes()
	p1 := procCPU()
	if err != nil {
		tb.Fatalf("iperf3: %v: %s", err, out)
	}
	var r struct {
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		tb.Fatalf("iperf3 output: %v", err)
	}
	hz := float64(clockTicks)
	res := iperfResult{
		gbps:        r.End.SumReceived.BitsPerSecond / 1e9,
		retransmits: r.End.SumSent.Retransmits,
		gb:          r.End.SumReceived.Bytes / 1e9,
		machineCPU:  float64((total1-total0)-(idle1-idle0)) / hz,
		procCPU:     p1 - p0,
		idleFrac:    float64(idle1-idle0) / float64(max(1, total1-total0)),
	}
	tb.Logf("iperf3 -P %d to %s: %.2f Gbit/s, %d retransmits, machine %.0f%% idle, CPU s/GB machine %.2f process %.2f",
		streams, addr, res.gbps, res.retransmits, 100*res.idleFrac, res.machineCPU/res.gb, res.procCPU/res.gb)
	return res
}

// clockTicks is USER_HZ, the unit of /proc/stat, on every Linux
// architecture Go supports.
const clockTicks = 100

// BenchmarkLabTCP moves 64 MiB per iteration over TCP from one container to
// another through the backend (offloads on, then off), with Go on both
// ends: the end-to-end path without iperf3. The SHA-256 of what arrived is
// checked, so the figure includes hashing on both sides.
func BenchmarkLabTCP(b *testing.B) {
	for _, mode := range []struct {
		name string
		want offloadSet
	}{{"offloads", allOffloads}, {"nooffloads", offloadSet{}}} {
		b.Run(mode.name, func(b *testing.B) {
			l := newLab(b, 2)
			for _, h := range l.hosts {
				l.start(h, mode.want)
			}
			l.syncAll()
			b.SetBytes(64 << 20)
			for b.Loop() {
				transfer(b, l.hosts[0], l.hosts[1], 64<<20)
			}
		})
	}
}

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
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/ns"
)

// BenchmarkIperf is a measurement, not a test: single-stream TCP throughput
// with iperf3 from one container to another through this backend, through
// kernel vxlan set up by hand in the same topology (as flannel's vxlan
// backend programs it), and host to host over the underlay. The machine may
// be shared, so the three alternate for several rounds and medians are
// reported. Run:
//
//	go test -run XXX -bench Iperf -benchtime 1x ./internal/backend/udp
//
// FLANNEL_UDP_IPERF_SECONDS (default 5) is the length of each run,
// FLANNEL_UDP_IPERF_ROUNDS (default 3) the number of rounds.
//
// Both hosts' backends run in this one process; each gets as many Ps as a
// flanneld of its own would have (GOMAXPROCS = CPUs), so that one host's
// forwarding loops sitting in long syscalls do not hold the other host's
// up. The figure without this is about 5% lower.
func BenchmarkIperf(b *testing.B) {
	if _, err := execCommand("iperf3", "--version"); err != nil {
		b.Skip("iperf3 not installed")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2 * runtime.NumCPU()))
	secs, rounds := envInt("FLANNEL_UDP_IPERF_SECONDS", 5), envInt("FLANNEL_UDP_IPERF_ROUNDS", 3)
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
					run(b, "ip", "-n", h.ns.Name, "route", "replace", p.subnet.String(), "via", p.subnet.Addr().String(), "dev", "flannel.1", "onlink")
				} else if p != h {
					// Absent after the previous round: not an error.
					_, _ = execCommand("ip", "-n", h.ns.Name, "route", "del", p.subnet.String(), "dev", "flannel.1")
				}
			}
			if on {
				mtu = 1450
			}
			run(b, "ip", "-n", h.ns.Name, "link", "set", "ctr", "mtu", fmt.Sprint(mtu))
			run(b, "ip", "-n", h.ctr.Name, "link", "set", "eth0", "mtu", fmt.Sprint(mtu))
		}
		mustPing(b, h1.ctr, h2.ctrAddr)
	}

	results := map[string][]float64{}
	for r := range rounds {
		results["underlay"] = append(results["underlay"], iperf(b, h2.ns, h1.ns, h2.underlay, secs))
		useVxlan(r%2 == 0)
		first, second := "udp", "vxlan"
		if r%2 == 0 {
			first, second = second, first
		}
		results[first] = append(results[first], iperf(b, h2.ctr, h1.ctr, h2.ctrAddr, secs))
		useVxlan(r%2 != 0)
		results[second] = append(results[second], iperf(b, h2.ctr, h1.ctr, h2.ctrAddr, secs))
		useVxlan(false)
	}
	b.Logf("udp: h1 %+v; h2 in %+v", h1.b.Stats(), h2.b.Stats().In)

	// Offloads off, once: the fallback path.
	for _, h := range l.hosts {
		h.b.Close()
		l.start(h, offloadSet{})
	}
	l.syncAll()
	mustPing(b, h1.ctr, h2.ctrAddr)
	results["udp-nooffload"] = append(results["udp-nooffload"], iperf(b, h2.ctr, h1.ctr, h2.ctrAddr, secs))

	med := map[string]float64{}
	for k, v := range results {
		slices.Sort(v)
		med[k] = v[len(v)/2]
		b.ReportMetric(med[k], k+"-Gbit/s")
	}
	b.ReportMetric(med["udp"]/med["vxlan"], "udp/vxlan")
	b.ReportMetric(med["udp"]/med["underlay"], "udp/underlay")
	b.Logf("Gbit/s per run: %v", results)
	b.Logf("medians: %v; udp/vxlan %.2f, udp/underlay %.2f", med, med["udp"]/med["vxlan"], med["udp"]/med["underlay"])
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
		run(tb, "ip", "-n", h.ns.Name, "link", "add", "flannel.1", "type", "vxlan", "id", "1",
			"local", h.underlay.String(), "dev", "eth0", "dstport", "8472", "nolearning")
		run(tb, "ip", "-n", h.ns.Name, "link", "set", "flannel.1", "address", mac, "mtu", "1450", "up")
		run(tb, "ip", "-n", h.ns.Name, "addr", "add", h.subnet.Addr().String()+"/32", "dev", "flannel.1")
	}
	for _, h := range l.hosts {
		for _, p := range l.hosts {
			if p == h {
				continue
			}
			mac := fmt.Sprintf("02:00:00:00:00:%02x", p.i)
			run(tb, "ip", "-n", h.ns.Name, "neigh", "add", p.subnet.Addr().String(), "lladdr", mac, "dev", "flannel.1", "nud", "permanent")
			run(tb, "bridge", "-n", h.ns.Name, "fdb", "add", mac, "dev", "flannel.1", "dst", p.underlay.String(), "self", "permanent")
		}
	}
}

// iperf runs an iperf3 server in srv and a client in cli against addr and
// returns the received throughput in Gbit/s.
func iperf(tb testing.TB, srv, cli *ns.NS, addr netip.Addr, secs int) float64 {
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
	out, err = cli.Command(ctx, "iperf3", "-c", addr.String(), "-p", "5201", "-t", strconv.Itoa(secs), "-J").Output()
	idle1, total1 := cpuTimes()
	if err != nil {
		tb.Fatalf("iperf3: %v: %s", err, out)
	}
	var r struct {
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		tb.Fatalf("iperf3 output: %v", err)
	}
	gbps := r.End.SumReceived.BitsPerSecond / 1e9
	tb.Logf("iperf3 to %s: %.2f Gbit/s, %d retransmits, machine %.0f%% idle", addr, gbps, r.End.SumSent.Retransmits,
		100*float64(idle1-idle0)/float64(max(1, total1-total0)))
	return gbps
}

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

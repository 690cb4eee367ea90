package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
)

// benchCase is one path measured: a lab, and the namespaces and address
// iperf3 runs between.
type benchCase struct {
	name     string
	lab      *lab.Lab
	from, to string
	addr     netip.Addr
	ref      string // the case this one is compared to, besides the underlay
	results  []lab.Throughput
	// cpuPIDs are the processes doing this path's forwarding in userspace
	// (the udp backend's flanneld on both ends, and wireguard's when it runs in userspace); their CPU time per GB is
	// reported. Kernel paths forward in softirq, which no process owns.
	cpuPIDs []int
	cpuSecs float64
	bytes   float64
	rtt     time.Duration
}

// labBench measures, interleaved over several rounds, single-stream TCP
// throughput between containers through each backend, through the same
// kernel devices set up by hand, and between hosts over the underlay; then
// flanneld's start-up time and memory.
func labBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rounds := fs.Int("rounds", 3, "interleaved rounds")
	seconds := fs.Int("seconds", 5, "seconds per iperf3 run")
	streams := fs.Int("streams", 1, "parallel TCP streams")
	backendList := fs.String("backends", "vxlan,host-gw,udp,wireguard",
		"backends to measure; also udp-ebpf (the udp backend's eBPF datapath, forced), udp-ebpf-tc (the same without XDP), and udp-nic (userspace), udp-ebpf-nic, udp-ebpf-tc-nic and vxlan-nic on an underlay with a NIC's offloads (lab.NICWire)")
	flanneld := fs.String("flanneld", "", "flanneld binary")
	prefix := fs.String("prefix", "fb", "prefix of the labs' names; benches running at once need different ones, or each tears down the other's labs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bin, err := findFlanneld(*flanneld)
	if err != nil {
		return err
	}
	etcdCmd, err := etcdCommand("embedded")
	if err != nil {
		return err
	}
	var labs []*lab.Lab
	defer func() {
		for _, l := range labs {
			_ = l.Down()
		}
	}()
	up := func(id, backendType string, hosts int) (*lab.Lab, error) {
		_ = lab.Down(id)
		cfg := fmt.Sprintf(`{"Network":"10.5.0.0/16","Backend":{"Type":%q}}`, backendType)
		l, err := lab.Up(ctx, lab.Options{ID: id, Hosts: hosts, Config: cfg, Flanneld: bin, EtcdCmd: etcdCmd})
		if err != nil {
			return nil, fmt.Errorf("bench lab %s: %w", id, err)
		}
		labs = append(labs, l)
		return l, nil
	}
	// envLab is a lab whose flanneld run with env, on a NIC-like underlay
	// if nic.
	envLab := func(id, backendType string, nic bool, env ...string) (*lab.Lab, error) {
		_ = lab.Down(id)
		cfg := fmt.Sprintf(`{"Network":"10.5.0.0/16","Backend":{"Type":%q}}`, backendType)
		l, err := lab.Up(ctx, lab.Options{ID: id, Hosts: 2, Config: cfg, Flanneld: bin, EtcdCmd: etcdCmd, NoFlanneld: true})
		if err != nil {
			return nil, fmt.Errorf("bench lab %s: %w", id, err)
		}
		labs = append(labs, l)
		if nic {
			if err := l.NICWire(ctx); err != nil {
				return nil, err
			}
		}
		for _, h := range l.Hosts {
			h.Env = append(h.Env, env...)
			if err := l.StartFlanneld(h); err != nil {
				return nil, err
			}
			if err := l.WaitSubnet(ctx, h, 30*time.Second); err != nil {
				return nil, err
			}
			if err := l.SetupContainer(h); err != nil {
				return nil, err
			}
		}
		return l, nil
	}
	fmt.Fprintf(stdout, "setting up labs...\n")
	var cases []*benchCase
	for _, b := range strings.Split(*backendList, ",") {
		hosts := 2
		if b == "vxlan" {
			hosts = 4 // 3 peers for the memory figure
		}
		var l *lab.Lab
		var err error
		id := *prefix + strings.ReplaceAll(b, "-", "")
		switch b {
		case "udp-ebpf", "udp-ebpf-nic", "udp-ebpf-tc", "udp-ebpf-tc-nic":
			env := []string{"FLANNEL_UDP_DATAPATH=ebpf"}
			if strings.Contains(b, "-tc") {
				env = append(env, "FLANNEL_UDP_XDP=off")
			}
			l, err = envLab(id, "udp", strings.HasSuffix(b, "-nic"), env...)
		case "vxlan-nic":
			l, err = envLab(id, "vxlan", true)
		case "udp-nic":
			l, err = envLab(id, "udp", true, "FLANNEL_UDP_DATAPATH=userspace")
		default:
			l, err = up(id, b, hosts)
		}
		if err != nil {
			return err
		}
		h1, h2 := l.Hosts[0], l.Hosts[1]
		if len(cases) == 0 {
			cases = append(cases, &benchCase{name: "underlay (host → host)", lab: l, from: h1.NS, to: h2.NS, addr: h2.Addr})
		}
		c := &benchCase{name: b, lab: l, from: h1.CNS, to: h2.CNS, addr: h2.Container}
		if strings.HasPrefix(b, "udp") || b == "wireguard" { // wireguard: userspace where the kernel has no module
			c.cpuPIDs = []int{h1.FlanneldPID, h2.FlanneldPID}
		}
		cases = append(cases, c)
		if b == "vxlan" || b == "host-gw" {
			rl, err := up(*prefix+"r"+strings.ReplaceAll(b, "-", ""), "alloc", 2)
			if err != nil {
				return err
			}
			if err := rl.HandMadeDatapath(ctx, b); err != nil {
				return err
			}
			ref := &benchCase{name: b + " by hand (kernel reference)", lab: rl, from: rl.Hosts[0].CNS, to: rl.Hosts[1].CNS, addr: rl.Hosts[1].Container}
			cases = append(cases, ref)
			c.ref = ref.name
		}
	}
	for r := 1; r <= *rounds; r++ {
		fmt.Fprintf(stdout, "round %d/%d:", r, *rounds)
		for _, c := range cases {
			before := cpuOf(c.cpuPIDs)
			t, err := lab.Iperf(ctx, c.from, c.to, c.addr, *seconds, *streams)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			c.cpuSecs += cpuOf(c.cpuPIDs) - before
			c.bytes += t.BitsPerSecond * float64(*seconds) / 8
			c.results = append(c.results, t)
			fmt.Fprintf(stdout, " %s %.2f", c.name, t.BitsPerSecond/1e9)
		}
		fmt.Fprintln(stdout)
	}
	for _, c := range cases {
		if c.rtt, err = lab.PingRTT(ctx, c.from, c.addr, 50); err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	under := lab.Summarize(cases[0].results).Median
	byName := map[string]*benchCase{}
	for _, c := range cases {
		byName[c.name] = c
	}
	fmt.Fprintf(stdout, "\nTCP throughput, %d stream(s), %d rounds × %d s, median (min–max):\n", *streams, *rounds, *seconds)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tGBIT/S\tRANGE\tRETRANSMITS\t× UNDERLAY\t× KERNEL REFERENCE\tPING RTT\tFLANNELD CPU S/GB")
	for _, c := range cases {
		sum := lab.Summarize(c.results)
		m := sum.Median
		refCol := ""
		if c.ref != "" {
			refCol = fmt.Sprintf("%.3f", m/lab.Summarize(byName[c.ref].results).Median)
		}
		cpuCol := "-"
		if len(c.cpuPIDs) > 0 && c.bytes > 0 {
			cpuCol = fmt.Sprintf("%.2f", c.cpuSecs/(c.bytes/1e9))
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f–%.2f\t%d\t%.3f\t%s\t%s\t%s\n", c.name, m/1e9, sum.Min/1e9, sum.Max/1e9, sum.Retransmits, m/under, refCol,
			c.rtt.Round(time.Microsecond), cpuCol)
	}
	tw.Flush()

	for _, b := range []string{"udp", "udp-nic", "udp-ebpf", "udp-ebpf-tc", "udp-ebpf-nic", "udp-ebpf-tc-nic", "wireguard"} {
		for _, ref := range []string{"vxlan", "vxlan-nic"} {
			if u, v := byName[b], byName[ref]; u != nil && v != nil {
				fmt.Fprintf(stdout, "\n%s / %s: %.3f (ping RTT %.2f ×)", b, ref, lab.Summarize(u.results).Median/lab.Summarize(v.results).Median,
					float64(u.rtt)/float64(v.rtt))
			}
		}
	}
	fmt.Fprintln(stdout)
	if l := labByID(labs, *prefix+"vxlan"); l != nil {
		if err := benchStartup(ctx, stdout, l); err != nil {
			return err
		}
	}
	return nil
}

func labByID(labs []*lab.Lab, id string) *lab.Lab {
	for _, l := range labs {
		if l.ID == id {
			return l
		}
	}
	return nil
}

// benchStartup restarts a flanneld several times and reports the time from
// process start to subnet.env, and its memory with 3 peers.
func benchStartup(ctx context.Context, w io.Writer, l *lab.Lab) error {
	h := l.Hosts[0]
	var ds []float64
	for range 7 {
		d, err := l.RestartTimed(ctx, h)
		if err != nil {
			return err
		}
		ds = append(ds, float64(d.Microseconds())/1000)
	}
	slices.Sort(ds)
	fmt.Fprintf(w, "\nstart → subnet.env written (vxlan, restart with its lease in etcd, 7 runs): median %.1f ms (min %.1f, max %.1f)\n",
		ds[len(ds)/2], ds[0], ds[len(ds)-1])
	// Let it settle with its peers before reading memory.
	time.Sleep(2 * time.Second)
	rss, err := lab.RssAnon(h.FlanneldPID)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "flanneld RssAnon with %d peers: %.1f MB\n", len(l.Hosts)-1, float64(rss)/1e6)
	return nil
}

func cpuOf(pids []int) float64 {
	total := 0.0
	for _, p := range pids {
		if s, err := lab.CPUSeconds(p); err == nil {
			total += s
		}
	}
	return total
}

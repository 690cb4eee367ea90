package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flannel-go/flannel/internal/lab/proc"
	"github.com/flannel-go/flannel/internal/ns"
)

// Throughput is one iperf3 run.
type Throughput struct {
	BitsPerSecond float64
	Retransmits   int
}

// Iperf runs an iperf3 TCP test of seconds from namespace fromNS to an
// iperf3 server it starts in toNS bound to addr, with streams parallel
// streams.
func Iperf(ctx context.Context, fromNS, toNS string, addr netip.Addr, seconds, streams int) (Throughput, error) {
	srvNS, err := ns.Open(toNS)
	if err != nil {
		return Throughput{}, err
	}
	cliNS, err := ns.Open(fromNS)
	if err != nil {
		return Throughput{}, err
	}
	port := "5201"
	srv := srvNS.Command(ctx, "iperf3", "-s", "-1", "-B", addr.String(), "-p", port)
	if err := srv.Start(); err != nil {
		return Throughput{}, fmt.Errorf("iperf3 server: %w", err)
	}
	defer func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}()
	// The server is ready when its port accepts; iperf3 -c retries
	// would hide a dead server, so wait for the listen socket instead.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := srvNS.Run(ctx, "ss", "-Hltn", "sport = :"+port)
		if strings.TrimSpace(out) != "" {
			break
		}
		if time.Now().After(deadline) {
			return Throughput{}, fmt.Errorf("iperf3 server in %s did not listen", toNS)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, err := cliNS.Command(ctx, "iperf3", "-c", addr.String(), "-p", port, "-t", strconv.Itoa(seconds),
		"-P", strconv.Itoa(streams), "-J").Output()
	if err != nil {
		return Throughput{}, fmt.Errorf("iperf3 client %s → %s: %w: %s", fromNS, addr, err, out)
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
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return Throughput{}, fmt.Errorf("iperf3 output: %w", err)
	}
	if r.Error != "" {
		return Throughput{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	return Throughput{BitsPerSecond: r.End.SumReceived.BitsPerSecond, Retransmits: r.End.SumSent.Retransmits}, nil
}

// RssAnon returns the anonymous resident memory of pid in bytes.
func RssAnon(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			f := strings.Fields(v)
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no RssAnon for pid %d", pid)
}

// CPUSeconds returns the user+system CPU time pid has used.
func CPUSeconds(pid int) (float64, error) {
	f, err := proc.Stat(pid)
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

// RestartTimed restarts h's flanneld with no subnet.env and returns the
// time from spawning it to subnet.env existing.
func (l *Lab) RestartTimed(ctx context.Context, h *Host) (time.Duration, error) {
	if err := l.StopFlanneld(h, 15); err != nil {
		return 0, err
	}
	if err := os.Remove(l.SubnetFile(h)); err != nil && !os.IsNotExist(err) {
		return 0, err
	}
	start := time.Now()
	if err := l.StartFlanneld(h); err != nil {
		return 0, err
	}
	for {
		if _, err := os.Stat(l.SubnetFile(h)); err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > 20*time.Second {
			return 0, fmt.Errorf("%s: no subnet.env 20 s after start", h.Name)
		}
		time.Sleep(time.Millisecond)
	}
}

// PingRTT sends count pings 20 ms apart from namespace fromNS to dst and
// returns the average round-trip time.
func PingRTT(ctx context.Context, fromNS string, dst netip.Addr, count int) (time.Duration, error) {
	n, err := ns.Open(fromNS)
	if err != nil {
		return 0, err
	}
	out, err := n.Command(ctx, "ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.02", "-W", "1", dst.String()).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("ping %s from %s: %w: %s", dst, fromNS, err, out)
	}
	// rtt min/avg/max/mdev = 0.041/0.058/0.101/0.012 ms
	for _, line := range strings.Split(string(out), "\n") {
		if _, v, ok := strings.Cut(line, "= "); ok && strings.Contains(line, "min/avg/max") {
			f := strings.Split(strings.Fields(v)[0], "/")
			if len(f) >= 2 {
				ms, err := strconv.ParseFloat(f[1], 64)
				if err == nil {
					return time.Duration(ms * float64(time.Millisecond)), nil
				}
			}
		}
	}
	return 0, fmt.Errorf("ping %s: no rtt in output: %s", dst, out)
}

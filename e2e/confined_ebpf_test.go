package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lab/confine"
	"github.com/flannel-go/flannel/internal/ns"
)

// ebpfDropIn is the drop-in that makes the udp backend insist on its
// eBPF datapath under the shipped unit.
const ebpfDropIn = "../dist/flanneld-udp-ebpf.conf"

// shippedUnitWith is dist/flanneld.service with the given drop-ins
// applied, as systemd merges them.
func shippedUnitWith(t *testing.T, dropIns ...string) confine.Unit {
	t.Helper()
	f, err := os.Open("../dist/flanneld.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rs []io.Reader
	for _, d := range dropIns {
		df, err := os.Open(d)
		if err != nil {
			t.Fatal(err)
		}
		defer df.Close()
		rs = append(rs, df)
	}
	u, err := confine.Parse(f, rs...)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestConfinedEBPFMissingPermission: under the shipped unit less CAP_BPF
// (as an operator's override may leave it), flanneld told to use the eBPF
// datapath exits with one line naming the capability and the backend.
func TestConfinedEBPFMissingPermission(t *testing.T) {
	u := shippedUnit(t)
	u.Caps = slices.DeleteFunc(slices.Clone(u.Caps), func(c string) bool { return c == "bpf" })
	o := confinedOpts(t, u, 1, backendConfig("udp"))
	o.NoFlanneld = true
	l := startLab(t, o)
	h := l.Hosts[0]
	h.Env = append(h.Env, "FLANNEL_UDP_DATAPATH=ebpf")
	if err := l.StartFlanneld(h); err != nil {
		t.Fatal(err)
	}
	const want = "udp backend needs CAP_BPF and CAP_NET_ADMIN: "
	waitFor(t, 20*time.Second, "flanneld to name the missing permission", func() bool {
		return strings.Contains(logOf(l, h), want)
	})
	n := 0
	for _, line := range strings.Split(logOf(l, h), "\n") {
		if strings.Contains(line, want) {
			n++
			t.Logf("%s", line)
		}
	}
	if n != 1 {
		t.Errorf("%d lines name the missing permission, want 1:\n%s", n, logOf(l, h))
	}
	waitFor(t, 10*time.Second, "flanneld to exit", func() bool {
		return syscall.Kill(h.FlanneldPID, 0) != nil || procState(h.FlanneldPID) == "Z"
	})
}

// procState is the state letter of process pid ("" if it is gone).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return ""
}

// TestConfinedEBPF runs the udp backend's eBPF datapath under the shipped
// unit plus its drop-in (both parsed from dist/): 2 hosts ping across,
// with the programs forwarding (the log says so and
// flannel_udp_ebpf_packets_total grows), and a restart keeps traffic.
// With a bpf filesystem on /sys/fs/bpf (as systemd mounts it) the
// datapath pins its maps and links there, so forwarding goes on while
// flanneld is down; without one nothing is pinned and traffic comes back
// after the restart, as with the userspace datapath.
func TestConfinedEBPF(t *testing.T) {
	for _, pins := range []bool{true, false} {
		t.Run(fmt.Sprintf("pins=%t", pins), func(t *testing.T) {
			u := shippedUnitWith(t, ebpfDropIn)
			o := confinedOpts(t, u, 2, backendConfig("udp"))
			// Every host has its own network namespace, so one port does.
			o.FlanneldArgs = append(o.FlanneldArgs, "--healthz-ip=127.0.0.1", "--healthz-port=18093")
			if pins {
				// ip netns exec mounts a fresh sysfs on /sys, hiding any
				// bpf filesystem: put a shared one back on /sys/fs/bpf
				// before the confinement starts, where systemd finds it.
				bpffs := sharedBPFFS(t)
				o.FlanneldWrap = append([]string{"unshare", "-m", "--", "sh", "-c",
					`mount --bind "$0" /sys/fs/bpf && exec "$@"`, bpffs}, o.FlanneldWrap...)
			}
			l := startLab(t, o)
			h1, h2 := l.Hosts[0], l.Hosts[1]
			for _, h := range l.Hosts {
				assertEBPFConfined(t, h)
			}
			defer func() {
				for _, h := range l.Hosts {
					if m := refusals.FindString(logOf(l, h)); m != "" {
						t.Errorf("%s's log shows a refusal (%q):\n%s", h.Name, m, logOf(l, h))
					}
				}
			}()
			for _, h := range l.Hosts {
				log := logOf(l, h)
				if !strings.Contains(log, "forwarding known peers in the kernel (eBPF)") {
					t.Fatalf("%s: the eBPF datapath is not in use:\n%s", h.Name, log)
				}
				if pinned := strings.Contains(log, "pins=/sys/fs/bpf/flannel/udp"); pinned != pins {
					t.Errorf("%s: pinned %t, want %t:\n%s", h.Name, pinned, pins, log)
				}
			}
			assertAllPairsPing(t, l)
			before := ebpfPackets(t, h2)
			if got, out, _ := l.Ping(context.Background(), h1, h2.Container, 5, 100*time.Millisecond); got != 5 {
				t.Fatalf("pings across: %d/5\n%s", got, out)
			}
			if after := ebpfPackets(t, h2); after < before+10 {
				t.Errorf("%s's eBPF datapath forwarded %d packets for 5 echo requests and their replies", h2.Name, after-before)
			}

			var pingsDuring *pingSet
			if pins {
				pingsDuring = pingBothWays(t, l, h1, h2)
			}
			stopFlanneld(t, l, h1, syscall.SIGTERM)
			restartAndWait(t, l, h1)
			assertEBPFConfined(t, h1)
			if pingsDuring != nil {
				time.Sleep(time.Second) // pings run after the restart too: the scenario, not synchronisation
				pingsDuring.stopNoLoss(t)
				if !strings.Contains(logOf(l, h1), "adopted=true") {
					t.Errorf("%s did not adopt the pinned datapath:\n%s", h1.Name, logOf(l, h1))
				}
			}
			waitFor(t, 10*time.Second, "pings across after the restart", func() bool {
				got, _, _ := l.Ping(context.Background(), h1, h2.Container, 1, 200*time.Millisecond)
				return got == 1
			})
			assertAllPairsPing(t, l)
			before = ebpfPackets(t, h1)
			if got, out, _ := l.Ping(context.Background(), h1, h2.Container, 5, 100*time.Millisecond); got != 5 {
				t.Fatalf("pings across after the restart: %d/5\n%s", got, out)
			}
			if after := ebpfPackets(t, h1); after < before+10 {
				t.Errorf("after the restart %s's eBPF datapath forwarded %d packets for 5 echo requests and their replies", h1.Name, after-before)
			}
		})
	}
}

// pingBothWays starts pings at 10/s between a's and b's containers, both
// ways. Unlike startPings it does not wait for per-peer routes, which the
// udp backend has none of (one route covers the network): the caller has
// seen pings across already.
func pingBothWays(t *testing.T, l *lab.Lab, a, b *lab.Host) *pingSet {
	t.Helper()
	return pingPairs(t, l, [2]*lab.Host{a, b})
}

// sharedBPFFS mounts a bpf filesystem of the test's own under /run and
// returns its path; it is unmounted at cleanup.
func sharedBPFFS(t *testing.T) string {
	t.Helper()
	dir := filepath.Join("/run", ns.Unique("flannel-e2e-bpf"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", dir).CombinedOutput(); err != nil {
		os.Remove(dir)
		t.Fatalf("mount a bpf filesystem: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
			return
		}
		os.Remove(dir)
	})
	return dir
}

// assertEBPFConfined checks that h's flanneld runs under the unit (plus
// the eBPF drop-in) with the pins writable: its bounding set is exactly CAP_NET_ADMIN, CAP_NET_RAW
// and CAP_BPF, no_new_privs and the address-family filter are set, /proc/sys
// and /sys are read-only but /sys/fs/bpf is writable.
func assertEBPFConfined(t *testing.T, h *lab.Host) {
	t.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.FlanneldPID))
	if err != nil {
		t.Fatal(err)
	}
	// CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_BPF 39.
	for _, want := range []string{"CapBnd:\t0000008000003000", "NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(string(st), want) {
			t.Errorf("%s: flanneld's status lacks %q:\n%s", h.Name, want, st)
		}
	}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", h.FlanneldPID))
	if err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]string{"/proc/sys": "ro", "/sys": "ro", "/sys/fs/bpf": "rw"} {
		if !regexp.MustCompile(`(?m)^\S+ \S+ \S+ \S+ ` + p + ` ` + mode + `[, ]`).Match(mi) {
			t.Errorf("%s: %s is not %s for flanneld:\n%s", h.Name, p, mode, mi)
		}
	}
}

// ebpfPackets is the sum of h's flannel_udp_ebpf_packets_total.
func ebpfPackets(t *testing.T, h *lab.Host) int {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return lab.DialerIn(h.NS)(ctx, addr)
	}}}
	resp, err := client.Get("http://127.0.0.1:18093/metrics")
	if err != nil {
		t.Fatalf("%s /metrics: %v", h.Name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	ms := regexp.MustCompile(`(?m)^flannel_udp_ebpf_packets_total\{direction="(?:in|out)"\} (\d+)$`).FindAllStringSubmatch(string(b), -1)
	if len(ms) == 0 {
		t.Fatalf("%s: /metrics lacks flannel_udp_ebpf_packets_total:\n%s", h.Name, b)
	}
	sum := 0
	for _, m := range ms {
		n, _ := strconv.Atoi(m[1])
		sum += n
	}
	return sum
}

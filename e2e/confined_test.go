package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lab/confine"
	"github.com/flannel-go/flannel/internal/ns"
)

// shippedUnit is dist/flanneld.service's confinement, as the tests
// reproduce it without systemd.
func shippedUnit(t *testing.T) confine.Unit {
	t.Helper()
	f, err := os.Open("../dist/flanneld.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u, err := confine.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("not reproduced: %v", u.NotEmulated)
	return u
}

// installedFlanneld copies the test's flanneld where an installed one
// would be visible under the unit: not under /tmp, which PrivateTmp hides.
// Next to it goes afexec, which reproduces RestrictAddressFamilies; it
// returns both paths.
func installedFlanneld(t *testing.T) (flanneld, afexec string) {
	t.Helper()
	dir := filepath.Join("/run", ns.Unique("flannel-e2e-bin"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "flanneld")
	if err := copyFile(filepath.Join(binDir, "flanneld"), bin); err != nil {
		t.Fatal(err)
	}
	afexec = filepath.Join(dir, "afexec")
	cmd := exec.Command("go", "build", "-o", afexec, "../internal/lab/confine/afexec")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build afexec: %v\n%s", err, out)
	}
	return bin, afexec
}

// confinedOpts are labOpts whose flanneld runs under unit's confinement.
func confinedOpts(t *testing.T, u confine.Unit, n int, config string) lab.Options {
	t.Helper()
	o := labOpts(t, n, config)
	o.Flanneld, u.Helper = installedFlanneld(t)
	wrap, err := u.Prefix(o.Flanneld)
	if err != nil {
		t.Fatal(err)
	}
	o.FlanneldWrap = wrap
	return o
}

// refusals are what the kernel says when a confinement is too tight.
var refusals = regexp.MustCompile(`(?i)operation not permitted|permission denied|read-only file system|needs CAP_`)

// assertConfined checks that h's flanneld really runs confined: its
// bounding set is exactly CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF (as the
// shipped unit says), no_new_privs is set, and /proc/sys is read-only in
// its mount namespace.
func assertConfined(t *testing.T, h *lab.Host) {
	t.Helper()
	assertProcConfined(t, h.Name, h.FlanneldPID, true)
	// RestrictAddressFamilies, through afexec's seccomp filter.
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.FlanneldPID))
	if !regexp.MustCompile(`(?m)^Seccomp:\s+2$`).Match(st) {
		t.Errorf("%s: flanneld runs without a seccomp filter (RestrictAddressFamilies)", h.Name)
	}
}

// assertProcConfined checks process pid's bounding set (exactly
// CAP_NET_ADMIN 12, CAP_NET_RAW 13 and CAP_BPF 39), no_new_privs if nnp,
// and that /proc/sys and /sys are read-only in its mount namespace.
func assertProcConfined(t *testing.T, name string, pid int, nnp bool) {
	t.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(st), "CapBnd:\t0000008000003000") || (nnp && !strings.Contains(string(st), "NoNewPrivs:\t1")) {
		t.Errorf("%s: flanneld is not confined as expected:\n%s", name, st)
	}
	checkSysReadOnly(t, name, pid)
}

// TestConfinedByUnit runs every backend under dist/flanneld.service's
// confinement (derived from the file): 2 hosts, pings across, and a
// restart keeps traffic: no ping lost for the backends whose datapath
// lives in the kernel (vxlan, host-gw), traffic back after it for udp and
// userspace wireguard, whose TUN dies with the process as upstream's udp
// does. No refusal may show in the logs.
func TestConfinedByUnit(t *testing.T) {
	u := shippedUnit(t)
	for _, b := range []string{"vxlan", "host-gw", "udp", "wireguard", "alloc"} {
		t.Run(b, func(t *testing.T) {
			l := startLab(t, confinedOpts(t, u, 2, backendConfig(b)))
			h1, h2 := l.Hosts[0], l.Hosts[1]
			for _, h := range l.Hosts {
				assertConfined(t, h)
			}
			defer func() {
				for _, h := range l.Hosts {
					if m := refusals.FindString(logOf(l, h)); m != "" {
						t.Errorf("%s's log shows a refusal (%q):\n%s", h.Name, m, logOf(l, h))
					}
				}
			}()
			if b == "alloc" {
				// Leases only: both hosts hold one and are ready.
				if !h1.Subnet.IsValid() || !h2.Subnet.IsValid() || h1.Subnet == h2.Subnet {
					t.Errorf("subnets %s and %s", h1.Subnet, h2.Subnet)
				}
				return
			}
			assertAllPairsPing(t, l)
			var pings *pingSet
			if b != "udp" && b != "wireguard" {
				pings = startPings(t, l, [2]*lab.Host{h1, h2})
			}
			stopFlanneld(t, l, h1, syscall.SIGTERM)
			restartAndWait(t, l, h1)
			assertConfined(t, h1)
			if pings != nil {
				time.Sleep(time.Second) // pings run after the restart too: the scenario, not synchronisation
				pings.stopNoLoss(t)
			}
			waitFor(t, 10*time.Second, "pings across after the restart", func() bool {
				got, _, _ := l.Ping(context.Background(), h1, h2.Container, 1, 200*time.Millisecond)
				return got == 1
			})
			assertAllPairsPing(t, l)
		})
	}
}

// TestConfinedMissingPermission: under a confinement that lacks what a
// backend needs, flanneld says in one line which backend wants which
// permission, instead of a bare errno.
func TestConfinedMissingPermission(t *testing.T) {
	u := shippedUnit(t)
	for _, tc := range []struct {
		backend string
		caps    []string
		want    string
	}{
		{"udp", []string{"net_raw"}, "udp backend needs CAP_NET_ADMIN and /dev/net/tun: "},
		{"vxlan", []string{"net_raw"}, "vxlan backend needs CAP_NET_ADMIN: "},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			tight := u
			tight.Caps = tc.caps
			o := confinedOpts(t, tight, 1, backendConfig(tc.backend))
			o.NoFlanneld = true
			l := startLab(t, o)
			h := l.Hosts[0]
			if err := l.StartFlanneld(h); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 20*time.Second, "flanneld to name the missing permission", func() bool {
				return strings.Contains(logOf(l, h), tc.want)
			})
			for _, line := range strings.Split(logOf(l, h), "\n") {
				if strings.Contains(line, tc.want) {
					t.Logf("%s", line)
				}
			}
		})
	}
}

// TestStrayArgumentStarts: a sysconfig written as one tutorial shows it,
// FLANNEL_OPTIONS="eth0", puts a positional argument last on the unit's
// command line. flanneld starts anyway (as upstream does) and warns once,
// naming the argument and the flag it probably meant.
func TestStrayArgumentStarts(t *testing.T) {
	o := labOpts(t, 2, backendConfig("vxlan"), "eth0")
	l := startLab(t, o)
	assertAllPairsPing(t, l)
	for _, h := range l.Hosts {
		log := logOf(l, h)
		n := 0
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, `ignoring argument \"eth0\"`) {
				n++
				if !strings.Contains(line, "-iface=eth0") || !strings.Contains(line, "an interface named eth0 exists") {
					t.Errorf("%s: the warning does not name the flag or the interface: %s", h.Name, line)
				}
			}
		}
		if n != 1 {
			t.Errorf("%s: %d warnings about the stray argument, want 1:\n%s", h.Name, n, log)
		}
	}
}

// checkSysReadOnly asserts that process pid (flanneld, in the named setup)
// sees /proc/sys and /sys mounted read-only.
func checkSysReadOnly(t *testing.T, name string, pid int) {
	t.Helper()
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/proc/sys", "/sys"} {
		if !regexp.MustCompile(`(?m)^\S+ \S+ \S+ \S+ ` + p + ` ro[, ]`).Match(mi) {
			t.Errorf("%s: %s is not read-only for flanneld:\n%s", name, p, mi)
		}
	}
}

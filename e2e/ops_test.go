package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/ns"
)

// opsConfig leaves exactly four subnets, 10.5.1.0 to 10.5.4.0, for three
// hosts, so that which subnet a host gets is never left to chance.
const opsConfig = `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.4.0","Backend":{"Type":"vxlan"}}`

const opsHealthPort = "9753"

// opsCtl runs flannelctl inside host h's namespace, configured the way an
// operator's shell next to flanneld would be: through FLANNELD_*
// variables.
func opsCtl(t *testing.T, l *lab.Lab, h *lab.Host, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runCtl(t, h, []string{
		"FLANNELD_ETCD_ENDPOINTS=" + strings.Join(l.EtcdEndpoints, ","),
		"FLANNELD_SUBNET_FILE=" + l.SubnetFile(h),
		"FLANNELD_HEALTHZ_PORT=" + opsHealthPort,
	}, args...)
}

// runCtl runs the flannelctl binary inside host h's namespace with our
// environment less its FLANNELD_* variables, plus env (which replaces any
// variable of ours it names), and logs what it printed.
func runCtl(t *testing.T, h *lab.Host, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, filepath.Join(binDir, "flannelctl")}, args...)...)
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return strings.HasPrefix(name, "FLANNELD_") || slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, name+"=") })
	}), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("flannelctl %v: %v", args, err)
	}
	t.Logf("%s$ flannelctl %s → exit %d\n%s%s", h.Name, strings.Join(args, " "), code, out.String(), errb.String())
	return out.String(), errb.String(), code
}

// opsSh runs a command in namespace nsName and fails the test if it fails.
func opsSh(t *testing.T, nsName string, args ...string) {
	t.Helper()
	n, err := ns.Open(nsName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Run(context.Background(), args[0], args[1:]...); err != nil {
		t.Fatal(err)
	}
}

// opsHostWarnings are the checks this machine's kernel makes warn in any lab
// host (no br_netfilter, strict rp_filter inherited into namespaces):
// true of the environment, not faults of the lab.
func opsHostWarnings(t *testing.T, h *lab.Host) map[string]bool {
	n, _ := ns.Open(h.NS)
	read := func(p string) string {
		out, err := n.Run(context.Background(), "cat", "/proc/sys/"+p)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(out)
	}
	w := map[string]bool{}
	if read("net/bridge/bridge-nf-call-iptables") != "1" {
		w["br_netfilter"] = true
	}
	if read("net/ipv4/conf/all/rp_filter") == "1" || read("net/ipv4/conf/eth0/rp_filter") == "1" {
		w["rp_filter"] = true
	}
	return w
}

// opsFinding is one line of `doctor -o json`.
type opsFinding struct {
	Level, Check, Message, Fix string
}

// opsDoctor runs doctor on h and returns its findings and exit status.
func opsDoctor(t *testing.T, l *lab.Lab, h *lab.Host) ([]opsFinding, int) {
	t.Helper()
	out, _, code := opsCtl(t, l, h, "doctor", "-o", "json")
	var fs []opsFinding
	if err := json.Unmarshal([]byte(out), &fs); err != nil {
		t.Fatalf("doctor -o json: %v\n%s", err, out)
	}
	return fs, code
}

// opsWantFail asserts that doctor fails with a FAIL of check whose message
// contains every one of want.
func opsWantFail(t *testing.T, l *lab.Lab, h *lab.Host, check string, want ...string) []opsFinding {
	t.Helper()
	fs, code := opsDoctor(t, l, h)
	if code != 1 {
		t.Errorf("doctor exit status %d, want 1", code)
	}
	for _, f := range fs {
		if f.Level != "FAIL" || f.Check != check {
			continue
		}
		if slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(f.Message, w) }) {
			continue
		}
		if f.Fix == "" {
			t.Errorf("FAIL without a fix: %+v", f)
		}
		return fs
	}
	t.Errorf("no FAIL %s opsFinding mentioning %q", check, want)
	return fs
}

func TestOps(t *testing.T) {
	o := labOpts(t, 3, opsConfig, "-healthz-port="+opsHealthPort, "-healthz-ip=127.0.0.1")
	o.ID = ns.Unique("fo")
	l := startLab(t, o)
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]

	t.Run("status", func(t *testing.T) {
		out, _, code := opsCtl(t, l, h1, "status", "-o", "json")
		var st struct {
			Lease  struct{ Subnet, PublicIP, Backend string }
			Peers  int
			Device struct {
				Name, State string
				MTU         int
			}
			Health   struct{ Healthz, Readyz int }
			Problems []string
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatal(err)
		}
		if code != 0 || st.Lease.Subnet != h1.Subnet.String() || st.Lease.PublicIP != h1.Addr.String() || st.Lease.Backend != "vxlan" ||
			st.Peers != 2 || st.Device.Name != "flannel.1" || st.Device.State != "up" || st.Device.MTU != h1.MTU ||
			st.Health.Healthz != 200 || st.Health.Readyz != 200 || len(st.Problems) != 0 {
			t.Errorf("status of h1 (%s, %s, MTU %d) = %+v, exit %d", h1.Subnet, h1.Addr, h1.MTU, st, code)
		}
		text, _, _ := opsCtl(t, l, h1, "status")
		for _, want := range []string{h1.Subnet.String(), "flannel.1 up, MTU 1450", "/readyz 200"} {
			if !strings.Contains(text, want) {
				t.Errorf("status text lacks %q", want)
			}
		}
	})

	t.Run("doctor healthy", func(t *testing.T) {
		for _, h := range l.Hosts {
			env := opsHostWarnings(t, h)
			out, _, code := opsCtl(t, l, h, "doctor")
			if code != 0 {
				t.Errorf("%s: exit %d", h.Name, code)
			}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.Fields(line)
				if len(f) < 2 || f[0] != "OK" && !(f[0] == "WARN" && env[f[1]]) {
					t.Errorf("%s: %q on a healthy host", h.Name, line)
				}
			}
			if !strings.Contains(out, "2 of 2 peers reachable through the overlay with 1450-byte packets") {
				t.Errorf("%s: no peers line", h.Name)
			}
			if len(env) == 0 {
				if q, _, code := opsCtl(t, l, h, "doctor", "-q"); q != "" || code != 0 {
					t.Errorf("%s: doctor -q printed %q, exit %d", h.Name, q, code)
				}
			}
		}
	})

	t.Run("config", func(t *testing.T) {
		if out, _, code := opsCtl(t, l, h1, "config", "get"); code != 0 || strings.TrimSpace(out) != opsConfig {
			t.Errorf("config get = %q, exit %d", out, code)
		}
		_, errOut, code := opsCtl(t, l, h1, "config", "set", `{"Network":"10.5.0.0/16","SubnetLen":33}`)
		if code != 1 || !strings.Contains(errOut, `SubnetLen "33"`) || !strings.Contains(errOut, "nothing written") {
			t.Errorf("invalid set: exit %d: %s", code, errOut)
		}
		if out, _, _ := opsCtl(t, l, h1, "config", "get"); strings.TrimSpace(out) != opsConfig {
			t.Errorf("a refused set changed the config to %q", out)
		}
		if out, _, code := opsCtl(t, l, h1, "config", "validate"); code != 0 || !strings.Contains(out, "4 subnets") {
			t.Errorf("validate: %q, exit %d", out, code)
		}
	})

	t.Run("fault: small MTU on the path to a peer", func(t *testing.T) {
		opsSh(t, l.SwitchNS, "ip", "link", "set", h2.Name, "mtu", "1400")
		t.Cleanup(func() { opsSh(t, l.SwitchNS, "ip", "link", "set", h2.Name, "mtu", "1500") })
		fs := opsWantFail(t, l, h1, "peers", h2.Subnet.String(), "1450-byte", h2.Addr.String())
		for _, f := range fs {
			if f.Level == "FAIL" && strings.Contains(f.Message, h3.Subnet.String()) {
				t.Errorf("h3's path is fine, yet: %+v", f)
			}
		}
	})

	t.Run("fault: external MTU below the overlay's", func(t *testing.T) {
		opsSh(t, h1.NS, "ip", "link", "set", "eth0", "mtu", "1400")
		t.Cleanup(func() {
			opsSh(t, h1.NS, "ip", "link", "set", "eth0", "mtu", "1500")
			// The path MTU the vxlan device learnt meanwhile would fail
			// later probes, rightly, for ten minutes.
			opsSh(t, h1.NS, "ip", "route", "flush", "cache")
		})
		opsWantFail(t, l, h1, "mtu", "FLANNEL_MTU=1450", "eth0 has MTU 1400")
	})

	t.Run("fault: ip_forward off", func(t *testing.T) {
		opsSh(t, h1.NS, "sysctl", "-qw", "net.ipv4.ip_forward=0")
		t.Cleanup(func() { opsSh(t, h1.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1") })
		opsWantFail(t, l, h1, "ip_forward", "ip_forward is 0")
	})

	t.Run("fault: peer unreachable", func(t *testing.T) {
		// h3 drops VXLAN from h1: the underlay still answers.
		opsSh(t, h3.NS, "nft", "add", "table", "ip", "fotest")
		t.Cleanup(func() { opsSh(t, h3.NS, "nft", "delete", "table", "ip", "fotest") })
		opsSh(t, h3.NS, "nft", "add chain ip fotest in { type filter hook input priority 0; policy accept; }")
		opsSh(t, h3.NS, "nft", "add", "rule", "ip", "fotest", "in", "ip", "saddr", h1.Addr.String(), "udp", "dport", "8472", "drop")
		fs := opsWantFail(t, l, h1, "peers", h3.Subnet.String(), "does not answer through the overlay")
		for _, f := range fs {
			if f.Level == "FAIL" && strings.Contains(f.Message, h2.Subnet.String()) {
				t.Errorf("h2 is reachable, yet: %+v", f)
			}
		}
	})

	t.Run("reservations", func(t *testing.T) {
		list := func() map[string]struct {
			PublicIP string
			Reserved bool
		} {
			out, _, code := opsCtl(t, l, h1, "leases", "list", "-o", "json")
			var ls []struct {
				Subnet, PublicIP string
				Reserved         bool
			}
			if err := json.Unmarshal([]byte(out), &ls); err != nil || code != 0 {
				t.Fatalf("leases list: %v, exit %d", err, code)
			}
			m := map[string]struct {
				PublicIP string
				Reserved bool
			}{}
			for _, x := range ls {
				m[x.Subnet] = struct {
					PublicIP string
					Reserved bool
				}{x.PublicIP, x.Reserved}
			}
			return m
		}
		before := list()
		var free string
		for i := 1; i <= 4; i++ {
			if sn := fmt.Sprintf("10.5.%d.0/24", i); before[sn].PublicIP == "" {
				free = sn
			}
		}
		if len(before) != 3 || free == "" {
			t.Fatalf("leases before: %v", before)
		}
		table, _, _ := opsCtl(t, l, h1, "leases", "list")
		if !strings.HasPrefix(table, "SUBNET") || strings.Count(table, "vxlan") != 3 {
			t.Errorf("table:\n%s", table)
		}
		if _, errOut, code := opsCtl(t, l, h1, "leases", "reserve", "10.5.9.0/24", "192.168.100.99"); code != 1 || !strings.Contains(errOut, "does not fit") {
			t.Errorf("reserve outside SubnetMax: exit %d %s", code, errOut)
		}
		if _, errOut, code := opsCtl(t, l, h1, "leases", "reserve", h2.Subnet.String(), "192.168.100.99"); code != 1 || !strings.Contains(errOut, "leased by "+h2.Addr.String()) {
			t.Errorf("reserve h2's subnet: exit %d %s", code, errOut)
		}
		if _, _, code := opsCtl(t, l, h1, "leases", "reserve", free, "192.168.100.99"); code != 0 {
			t.Fatal("reserve the free subnet failed")
		}
		if show, _, _ := opsCtl(t, l, h1, "leases", "show", strings.Replace(free, "/", "-", 1)); !strings.Contains(show, "192.168.100.99") || !regexp.MustCompile(`reserved:\s+yes`).MatchString(show) {
			t.Errorf("show by key:\n%s", show)
		}

		// h3 comes back as a new host, with its old subnet reserved for
		// someone else too: nothing is free, and it must take neither.
		old := h3.Subnet.String()
		if err := l.StopFlanneld(h3, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		opsCtl(t, l, h1, "leases", "release", old)
		opsCtl(t, l, h1, "leases", "reserve", old, "192.168.100.98")
		if err := os.Remove(l.SubnetFile(h3)); err != nil {
			t.Fatal(err)
		}
		logStart := opsFileSize(l.LogFile(h3))
		if err := l.StartFlanneld(h3); err != nil {
			t.Fatal(err)
		}
		opsWaitLog(t, l.LogFile(h3), logStart, "no free subnet", 20*time.Second)
		if _, err := os.Stat(l.SubnetFile(h3)); err == nil {
			t.Error("h3 wrote a subnet.env though every subnet is leased or reserved")
		}
		now := list()
		if now[free].PublicIP != "192.168.100.99" || !now[free].Reserved || now[old].PublicIP != "192.168.100.98" || !now[old].Reserved {
			t.Errorf("reservations after h3 started: %v", now)
		}

		// Released, the subnet is h3's.
		opsCtl(t, l, h1, "leases", "release", free)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := l.WaitSubnet(ctx, h3, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if h3.Subnet.String() != free {
			t.Errorf("h3 took %s, want the released %s", h3.Subnet, free)
		}

		// A running host's lease turned into its reservation: flanneld
		// takes it as its own.
		logStart = opsFileSize(l.LogFile(h3))
		if out, _, code := opsCtl(t, l, h1, "leases", "reserve", free, h3.Addr.String()); code != 0 || !strings.Contains(out, "now its reservation") {
			t.Errorf("convert h3's lease: exit %d %s", code, out)
		}
		// Once h3's flanneld has reacted to the change of its key, it
		// still holds the subnet, now as a reservation.
		opsWaitLog(t, l.LogFile(h3), logStart, "subnet="+free, 20*time.Second)
		if now := list(); now[free].PublicIP != h3.Addr.String() || !now[free].Reserved {
			t.Errorf("after conversion: %v", now)
		}
		out, _, code := opsCtl(t, l, h3, "status", "-o", "json")
		var st struct {
			Lease struct {
				Subnet   string
				Reserved bool
			}
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 || st.Lease.Subnet != free || !st.Lease.Reserved {
			t.Errorf("h3's status after conversion: %+v, exit %d", st, code)
		}
	})

	t.Run("fault: FORWARD drop without flannel's rules", func(t *testing.T) {
		// Stopped, flanneld cannot put its rules back behind our back.
		if err := l.StopFlanneld(h1, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if _, errOut, code := opsCtl(t, l, h1, "status"); code != 1 || !strings.Contains(errOut, "health endpoints") {
			t.Errorf("status with flanneld stopped: exit %d %s", code, errOut)
		}
		opsSh(t, h1.NS, "iptables", "-P", "FORWARD", "DROP")
		fs, _ := opsDoctor(t, l, h1)
		if !slices.ContainsFunc(fs, func(f opsFinding) bool { return f.Check == "forward" && f.Level == "OK" }) {
			t.Errorf("policy DROP with FLANNEL-FWD in place is fine, yet: %+v", fs)
		}
		opsSh(t, h1.NS, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD")
		opsWantFail(t, l, h1, "forward", "policy DROP", "FLANNEL-FWD")
	})
}

func opsFileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// opsWaitLog waits until the log at path has a line containing want after
// offset.
func opsWaitLog(t *testing.T, path string, offset int64, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if int64(len(b)) > offset && bytes.Contains(b[offset:], []byte(want)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in %s within %s:\n%s", want, path, timeout, b[min(offset, int64(len(b))):])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

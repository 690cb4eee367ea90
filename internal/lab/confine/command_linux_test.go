package confine

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/netnstest"
)

// TestCommandConfines runs a shell under the shipped unit's confinement
// in a throwaway network namespace: /proc/sys and /sys are read-only,
// the bounding set holds only what the unit names, no_new_privs is set,
// and the same shell outside the confinement could write /proc/sys.
func TestCommandConfines(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	f, err := os.Open("../../../dist/flanneld.service")
	if err != nil {
		t.Fatal(err)
	}
	u, err := Parse(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	n := netnstest.New(t, "cf")
	script := `grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status
for p in /proc/sys/net/ipv4/conf/lo/accept_local /sys/class/net/lo/mtu; do
	if (echo 1 > $p) 2>/dev/null; then echo "wrote $p"; fi
done`
	argv, err := u.Command([]string{"/bin/sh", "-c", script})
	if err != nil {
		t.Fatal(err)
	}
	out, err := n.Run(context.Background(), argv[0], argv[1:]...)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// CAP_NET_ADMIN is 12, CAP_NET_RAW 13, CAP_BPF 39.
	if !strings.Contains(out, "CapBnd:\t0000008000003000") {
		t.Errorf("bounding set is not CAP_NET_ADMIN+CAP_NET_RAW+CAP_BPF:\n%s", out)
	}
	if !strings.Contains(out, "NoNewPrivs:\t1") {
		t.Errorf("no_new_privs not set:\n%s", out)
	}
	if strings.Contains(out, "wrote") {
		t.Errorf("confined shell wrote a kernel tunable:\n%s", out)
	}
	// The control: unconfined, the same writes work (so the test tests
	// the confinement, not the namespace).
	out, err = n.Run(context.Background(), "/bin/sh", "-c", script)
	if err != nil || !strings.Contains(out, "wrote /proc/sys") {
		t.Errorf("unconfined shell could not write /proc/sys (%v):\n%s", err, out)
	}
}

// TestReadWritePathsAndEnvironment: a ReadWritePaths= path under a
// read-only one (here ProtectKernelTunables' /proc/sys) is writable again,
// its read-only siblings stay so, a missing "-" path is skipped, a
// missing plain one fails, and Environment= reaches the program.
func TestReadWritePathsAndEnvironment(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	n := netnstest.New(t, "cf")
	u, err := Parse(strings.NewReader(`[Service]
ProtectKernelTunables=yes
CapabilityBoundingSet=CAP_NET_ADMIN
Environment="FLANNEL_X=a b" 'FLANNEL_Y=it'"'"'s'
ReadWritePaths=/proc/sys/net/ipv4/conf/lo -/nonexistent/confine
`))
	if err != nil {
		t.Fatal(err)
	}
	script := `for p in /proc/sys/net/ipv4/conf/lo/accept_local /proc/sys/net/ipv4/conf/default/accept_local; do
	if (echo 1 > $p) 2>/dev/null; then echo "wrote $p"; fi
done
echo "X=$FLANNEL_X Y=$FLANNEL_Y"`
	argv, err := u.Command([]string{"/bin/sh", "-c", script})
	if err != nil {
		t.Fatal(err)
	}
	out, err := n.Run(context.Background(), argv[0], argv[1:]...)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(out, "wrote /proc/sys/net/ipv4/conf/lo/") {
		t.Errorf("the ReadWritePaths path stayed read-only:\n%s", out)
	}
	if strings.Contains(out, "wrote /proc/sys/net/ipv4/conf/default/") {
		t.Errorf("a path beside the ReadWritePaths one became writable:\n%s", out)
	}
	if !strings.Contains(out, "X=a b Y=it's") {
		t.Errorf("Environment= did not reach the program:\n%s", out)
	}

	u.ReadWritePaths = []string{"/nonexistent/confine"}
	argv, err = u.Command([]string{"/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := n.Run(context.Background(), argv[0], argv[1:]...); err == nil || !strings.Contains(out, "/nonexistent/confine does not exist") {
		t.Errorf("a missing ReadWritePaths path: %v\n%s", err, out)
	}
}

// TestRestrictAddressFamilies: with the afexec helper, socket(2) works
// for the families the unit lists and fails with EAFNOSUPPORT for the
// others, as under systemd.
func TestRestrictAddressFamilies(t *testing.T) {
	netnstest.SkipUnlessRoot(t)
	helper := buildHelper(t)
	n := netnstest.New(t, "cf")
	for _, tc := range []struct {
		fams []string
		ok   bool
	}{
		{[]string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}, true},
		{[]string{"AF_UNIX", "AF_INET"}, false},
		{[]string{}, false},
	} {
		u := Unit{AddressFamilies: tc.fams, Helper: helper, NoNewPrivileges: true, Caps: []string{"net_admin"}}
		argv, err := u.Command([]string{"/bin/sh", "-c", "exec ip -o link show lo"})
		if err != nil {
			t.Fatal(err)
		}
		out, err := n.Run(context.Background(), argv[0], argv[1:]...)
		if tc.ok && err != nil {
			t.Errorf("%v: ip link failed: %v\n%s", tc.fams, err, out)
		}
		if !tc.ok && (err == nil || !strings.Contains(out, "Address family not supported")) {
			t.Errorf("%v: want netlink refused with EAFNOSUPPORT, got %v\n%s", tc.fams, err, out)
		}
	}
}

// buildHelper builds afexec into a directory the confinement leaves
// visible (not /tmp) and returns its path.
func buildHelper(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/run", "confine-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(dir, "afexec")
	cmd := exec.Command(goBin, "build", "-o", bin, "./afexec")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build afexec: %v\n%s", err, out)
	}
	return bin
}

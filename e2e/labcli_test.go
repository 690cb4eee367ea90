package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/ns"
)

// The lab as a newcomer drives it: up, status, exec, down, down again.
func TestLabCLI(t *testing.T) {
	id := ns.Unique("fc")
	ctl := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(binDir, "flannelctl"), args...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { _ = lab.Down(id) })

	out, err := ctl("lab", "up", "--id", id, "--hosts", "2", "--backend", "host-gw", "--flanneld", filepath.Join(binDir, "flanneld"))
	if err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	for _, want := range []string{"HOST", "SUBNET", "CONTAINER", "h1", "h2", "all 2 pairs reach each other", "lab down"} {
		if !strings.Contains(out, want) {
			t.Errorf("lab up output lacks %q:\n%s", want, out)
		}
	}
	if out, err := ctl("lab", "up", "--id", id, "--flanneld", filepath.Join(binDir, "flanneld")); err == nil || !strings.Contains(out, "already up") {
		t.Errorf("a second lab up must refuse: %v\n%s", err, out)
	}
	if out, err := ctl("lab", "status", "--id", id); err != nil || !strings.Contains(out, "running (pid") || !strings.Contains(out, "all 2 pairs") {
		t.Errorf("lab status: %v\n%s", err, out)
	}
	l, err := lab.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	h2 := l.Hosts[1]
	out, err = ctl("lab", "exec", "--id", id, "h1", "--", "ip", "route")
	// flanneld routes IPv4 through nexthop objects: "SUBNET nhid N via ADDR".
	want := regexp.MustCompile(regexp.QuoteMeta(h2.Subnet.String()) + ` (nhid [0-9]+ )?via ` + regexp.QuoteMeta(h2.Addr.String()) + ` `)
	if err != nil || !want.MatchString(out) {
		t.Errorf("lab exec h1 -- ip route: want a route to %s via %s: %v\n%s", h2.Subnet, h2.Addr, err, out)
	}
	if out, err := ctl("lab", "exec", "--id", id, "c1", "--", "ping", "-c", "1", "-W", "2", h2.Container.String()); err != nil {
		t.Errorf("lab exec c1 -- ping %s: %v\n%s", h2.Container, err, out)
	}
	if out, err := ctl("lab", "down", "--id", id); err != nil || !strings.Contains(out, "is down") {
		t.Errorf("lab down: %v\n%s", err, out)
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id) {
			t.Errorf("namespace %s left after lab down", e.Name())
		}
	}
	if _, err := os.Stat(lab.Dir(id)); !os.IsNotExist(err) {
		t.Errorf("lab state %s left after lab down", lab.Dir(id))
	}
	if out, err := ctl("lab", "down", "--id", id); err != nil {
		t.Errorf("a second lab down must succeed (idempotent): %v\n%s", err, out)
	}
}

package confine

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestParseShippedUnit: the shipped unit parses, and the confinement the
// tests reproduce includes at least the four directives that decide
// whether a backend can work: capabilities, no_new_privs, read-only
// /proc/sys and /sys, read-only system directories.
func TestParseShippedUnit(t *testing.T) {
	f, err := os.Open("../../../dist/flanneld.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	if u.Caps == nil || !u.NoNewPrivileges || !u.ProtectKernelTunables || u.ProtectSystem == "" {
		t.Errorf("the shipped unit no longer confines as expected: %+v", u)
	}
	t.Logf("emulated: %+v", u)
}

func TestParse(t *testing.T) {
	unit := `[Unit]
Description=x
Whatever=ignored outside [Service]

[Service]
# a comment
ExecStart=/bin/true \
  -a
CapabilityBoundingSet=CAP_NET_ADMIN
CapabilityBoundingSet=cap_net_raw
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=read-only
PrivateTmp=true
ProtectKernelTunables=1
RestrictAddressFamilies=AF_UNIX AF_INET
`
	u, err := Parse(strings.NewReader(unit))
	if err != nil {
		t.Fatal(err)
	}
	want := Unit{
		Caps: []string{"net_admin", "net_raw"}, NoNewPrivileges: true, ProtectSystem: "full",
		ProtectHome: "read-only", PrivateTmp: true, ProtectKernelTunables: true,
		AddressFamilies: []string{"AF_UNIX", "AF_INET"},
	}
	if !reflect.DeepEqual(u, want) {
		t.Errorf("got %+v\nwant %+v", u, want)
	}
	if got := u.boundingSet(); got != "-all,+net_admin,+net_raw" {
		t.Errorf("bounding set %q", got)
	}
	u, err = Parse(strings.NewReader("[Service]\nCapabilityBoundingSet=~CAP_SYS_ADMIN CAP_SYS_MODULE\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := u.boundingSet(); got != "-sys_admin,-sys_module" {
		t.Errorf("inverted bounding set %q", got)
	}
	for _, bad := range []string{
		"[Service]\nReadOnlyPaths=/x\n",      // confines, not known
		"[Service]\nProtectSystem=strict\n",  // not emulated
		"[Service]\nNoNewPrivileges=maybe\n", // not a boolean
		"[Service]\nCapabilityBoundingSet=NET_ADMIN\n",
		"[Service]\njunk\n",
	} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}

func TestCommandRefusesHiddenProgram(t *testing.T) {
	u := Unit{PrivateTmp: true}
	if _, err := u.Command([]string{"/tmp/x/flanneld"}); err == nil {
		t.Error("a program under /tmp was accepted with PrivateTmp")
	}
	if _, err := u.Command([]string{"flanneld"}); err == nil {
		t.Error("a relative program was accepted")
	}
}

func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../../../dist/flanneld.service"); err == nil {
		f.Add(string(b))
	}
	f.Add("[Service]\nCapabilityBoundingSet=~CAP_A\nProtectHome=tmpfs\n")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		if _, err := u.Command([]string{"/usr/bin/true"}); err != nil {
			t.Fatal(err)
		}
	})
}

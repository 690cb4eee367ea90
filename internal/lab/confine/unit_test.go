package confine

import (
	"io"
	"os"
	"reflect"
	"slices"
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

// TestParseDropIns: drop-ins apply on top of the unit as systemd merges
// them: list-valued directives add up, an empty assignment resets a list,
// a later scalar wins.
func TestParseDropIns(t *testing.T) {
	unit := `[Service]
Environment=A=1
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW
ProtectSystem=full
RestrictAddressFamilies=AF_UNIX AF_INET
ReadWritePaths=/run/a
`
	for _, tc := range []struct {
		name    string
		dropIns []string
		check   func(u Unit) bool
	}{
		{"caps add up", []string{"[Service]\nCapabilityBoundingSet=CAP_BPF CAP_NET_RAW\n"},
			func(u Unit) bool { return slices.Equal(u.Caps, []string{"net_admin", "net_raw", "bpf"}) }},
		{"empty resets caps", []string{"[Service]\nCapabilityBoundingSet=\nCapabilityBoundingSet=CAP_BPF\n"},
			func(u Unit) bool { return slices.Equal(u.Caps, []string{"bpf"}) }},
		{"~ removes from a kept list", []string{"[Service]\nCapabilityBoundingSet=~CAP_NET_RAW\n"},
			func(u Unit) bool { return slices.Equal(u.Caps, []string{"net_admin"}) }},
		{"in order", []string{"[Service]\nCapabilityBoundingSet=\n", "[Service]\nCapabilityBoundingSet=CAP_SYS_ADMIN\n"},
			func(u Unit) bool { return slices.Equal(u.Caps, []string{"sys_admin"}) }},
		{"later scalar wins", []string{"[Service]\nProtectSystem=no\n"},
			func(u Unit) bool { return u.ProtectSystem == "" }},
		{"families add up", []string{"[Service]\nRestrictAddressFamilies=AF_NETLINK\n"},
			func(u Unit) bool {
				return slices.Equal(u.AddressFamilies, []string{"AF_UNIX", "AF_INET", "AF_NETLINK"})
			}},
		{"empty lifts families", []string{"[Service]\nRestrictAddressFamilies=\n"},
			func(u Unit) bool { return u.AddressFamilies == nil }},
		{"paths add up", []string{"[Service]\nReadWritePaths=-/sys/fs/bpf /run/b\n"},
			func(u Unit) bool { return slices.Equal(u.ReadWritePaths, []string{"/run/a", "-/sys/fs/bpf", "/run/b"}) }},
		{"empty resets paths", []string{"[Service]\nReadWritePaths=\n"},
			func(u Unit) bool { return u.ReadWritePaths == nil }},
		{"environment adds up, quoted", []string{"[Service]\nEnvironment=\"B=x y\" 'C=\"q\"' D=a\\ b\n"},
			func(u Unit) bool { return slices.Equal(u.Env, []string{"A=1", "B=x y", `C="q"`, "D=a b"}) }},
		{"empty resets environment", []string{"[Service]\nEnvironment=\nEnvironment=E=2\n"},
			func(u Unit) bool { return slices.Equal(u.Env, []string{"E=2"}) }},
		{"other sections ignored", []string{"[Unit]\nDescription=x\n"},
			func(u Unit) bool {
				return slices.Equal(u.Caps, []string{"net_admin", "net_raw"}) && u.ProtectSystem == "full"
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rs []io.Reader
			for _, d := range tc.dropIns {
				rs = append(rs, strings.NewReader(d))
			}
			u, err := Parse(strings.NewReader(unit), rs...)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(u) {
				t.Errorf("got %+v", u)
			}
		})
	}
	// Everything but some, then some back: everything but the rest; all
	// back: unrestricted.
	u, err := Parse(strings.NewReader("[Service]\nCapabilityBoundingSet=~CAP_A CAP_B\n"), strings.NewReader("[Service]\nCapabilityBoundingSet=CAP_A\n"))
	if err != nil || u.boundingSet() != "-b" {
		t.Errorf("~A B then A: %q, %v", u.boundingSet(), err)
	}
	u, err = Parse(strings.NewReader("[Service]\nCapabilityBoundingSet=~CAP_A\n"), strings.NewReader("[Service]\nCapabilityBoundingSet=CAP_A\n"))
	if err != nil || u.Caps != nil {
		t.Errorf("~A then A: %q, %v", u.Caps, err)
	}
	for _, bad := range []string{
		"[Service]\nEnvironment=\"A=1\n",
		"[Service]\nEnvironment=novalue\n",
		"[Service]\nReadWritePaths=relative\n",
		"[Service]\nReadWritePaths=+/x\n",
		"[Service]\nNoSuchThing=1\n",
	} {
		if _, err := Parse(strings.NewReader(unit), strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "drop-in 1") {
			t.Errorf("drop-in %q: err %v, want one naming the drop-in", bad, err)
		}
	}
}

// TestParseShippedDropIn: the eBPF drop-in adds the datapath to the
// environment and changes nothing else; the unit itself grants CAP_BPF
// and a writable /sys/fs/bpf.
func TestParseShippedDropIn(t *testing.T) {
	unit, dropIn := readFile(t, "../../../dist/flanneld.service"), readFile(t, "../../../dist/flanneld-udp-ebpf.conf")
	base, err := Parse(strings.NewReader(unit))
	if err != nil {
		t.Fatal(err)
	}
	u, err := Parse(strings.NewReader(unit), strings.NewReader(dropIn))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(base.Caps, "bpf") || !slices.Equal(base.ReadWritePaths, []string{"-/sys/fs/bpf"}) {
		t.Errorf("the unit grants %v and writable %v, want CAP_BPF and -/sys/fs/bpf", base.Caps, base.ReadWritePaths)
	}
	want := base
	want.Env = append(slices.Clone(base.Env), "FLANNEL_UDP_DATAPATH=ebpf")
	if !reflect.DeepEqual(u, want) {
		t.Errorf("unit + drop-in:\n%+v\nwant\n%+v", u, want)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
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
	f.Add("[Service]\nEnvironment=\"A=b c\" 'D=\\'e'\nReadWritePaths=-/sys/fs/bpf\n")
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

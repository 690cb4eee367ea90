package main

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

// TestStrayArguments: positional arguments are collected, not refused,
// and flags on either side of them still count (upstream's flag package
// stops at the first one; we step over it).
func TestStrayArguments(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		stray []string
	}{
		{[]string{"-etcd-prefix=/p", "eno1"}, []string{"eno1"}},
		{[]string{"eno1", "-ip-masq", "-iface=eth9"}, []string{"eno1"}},
		{[]string{"a", "-ip-masq", "b", "-iface=eth9"}, []string{"a", "b"}},
		{[]string{"-ip-masq", "-iface=eth9", "--", "-x", "y"}, []string{"-x", "y"}},
	} {
		o, err := parseOptions(tc.args, env(nil), &bytes.Buffer{})
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if !slices.Equal(o.stray, tc.stray) {
			t.Errorf("%q: stray %q, want %q", tc.args, o.stray, tc.stray)
		}
		if strings.Contains(strings.Join(tc.args, " "), "-ip-masq") && (!o.ipMasq || !slices.Equal(o.ifaces, []string{"eth9"})) {
			t.Errorf("%q: flags around the stray words lost: ip-masq %v ifaces %q", tc.args, o.ipMasq, o.ifaces)
		}
	}
}

func TestStrayHint(t *testing.T) {
	isFlag := func(n string) bool { return newFlagSet(&options{}).Lookup(n) != nil }
	has := func(n string) bool { return n == "eno1" }
	for arg, want := range map[string]string{
		"eno1":       "did you mean -iface=eno1? an interface named eno1 exists",
		"eth7":       "did you mean -iface=eth7? (no interface named eth7 exists on this host)",
		"ip-masq":    "did you mean -ip-masq?",
		"iface=eno1": "did you mean -iface=eno1?",
		"10.0.0.1":   "did you mean -iface=10.0.0.1 (or -public-ip=10.0.0.1)?",
	} {
		if got := strayHint(arg, isFlag, has); got != want {
			t.Errorf("%s: %q, want %q", arg, got, want)
		}
	}
}

// TestWarnStrayOnce: one warning line per stray argument, naming it and
// the flag it was probably meant as.
func TestWarnStrayOnce(t *testing.T) {
	var buf bytes.Buffer
	warnStray(slog.New(slog.NewTextHandler(&buf, nil)), []string{"no-such-iface0"})
	out := strings.TrimSpace(buf.String())
	if strings.Count(out, "\n") != 0 || !strings.Contains(out, "level=WARN") ||
		!strings.Contains(out, `no-such-iface0`) || !strings.Contains(out, "-iface=no-such-iface0") {
		t.Errorf("want one warning naming the argument and -iface, got:\n%s", out)
	}
}

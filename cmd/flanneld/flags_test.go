package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaultsMatchUpstream(t *testing.T) {
	o, err := parseOptions(nil, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"etcd-endpoints", strings.Join(o.etcd.Endpoints, ","), "http://127.0.0.1:4001,http://127.0.0.1:2379"},
		{"etcd-prefix", o.etcd.Prefix, "/coreos.com/network"},
		{"subnet-file", o.subnetFile, "/run/flannel/subnet.env"},
		{"subnet-lease-renew-margin", o.renewMargin, 60},
		{"ip-masq", o.ipMasq, false},
		{"healthz-ip", o.healthzIP, "0.0.0.0"},
		{"healthz-port", o.healthzPort, 0},
		{"iptables-resync", o.iptablesResync, 5},
		{"iptables-forward-rules", o.iptablesForward, true},
		{"kube-annotation-prefix", o.kubeAnnotation, "flannel.alpha.coreos.com"},
		{"net-config-path", o.netConfigPath, "/etc/kube-flannel/net-conf.json"},
		{"set-node-network-unavailable", o.setNodeNetUnavail, true},
		{"subnet-lease-ttl", o.leaseTTL, 24 * time.Hour},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("--%s default = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestPrecedenceFlagOverEnvOverDefault(t *testing.T) {
	e := env(map[string]string{
		"FLANNELD_ETCD_PREFIX":     "/from/env",
		"FLANNELD_IP_MASQ":         "true",
		"FLANNELD_IFACE":           "eth9",
		"FLANNELD_HEALTHZ_PORT":    "8081",
		"FLANNELD_PUBLIC_IP":       "",
		"FLANNELD_SUBNET_FILE":     "/env/subnet.env",
		"FLANNELD_IPTABLES_RESYNC": "7",
	})
	o, err := parseOptions([]string{"--etcd-prefix=/from/flag", "-subnet-file", "/flag/subnet.env"}, e, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.etcd.Prefix != "/from/flag" || o.subnetFile != "/flag/subnet.env" {
		t.Errorf("flag must win over env: prefix %q, subnet-file %q", o.etcd.Prefix, o.subnetFile)
	}
	if !o.ipMasq || o.healthzPort != 8081 || o.iptablesResync != 7 {
		t.Errorf("env must fill unset flags: ip-masq %v, healthz-port %d, iptables-resync %d", o.ipMasq, o.healthzPort, o.iptablesResync)
	}
	if len(o.ifaces) != 1 || o.ifaces[0] != "eth9" {
		t.Errorf("FLANNELD_IFACE gives one --iface: %v", o.ifaces)
	}
	if o.publicIP != "" {
		t.Errorf("an empty variable counts as unset, got public-ip %q", o.publicIP)
	}
}

func TestRepeatedIface(t *testing.T) {
	o, err := parseOptions([]string{"-iface=eth0", "--iface", "10.0.0.1", "-iface-regex", "^en"}, env(map[string]string{"FLANNELD_IFACE": "x"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.ifaces, " ") != "eth0 10.0.0.1" || strings.Join(o.ifaceRegexes, " ") != "^en" {
		t.Errorf("ifaces %v regexes %v", o.ifaces, o.ifaceRegexes)
	}
}

func TestRejected(t *testing.T) {
	cases := []struct {
		args []string
		env  map[string]string
		want string // the flag the message must name
	}{
		{[]string{"--subnet-lease-renew-margin=0"}, nil, "--subnet-lease-renew-margin"},
		{[]string{"--subnet-lease-renew-margin=1440"}, nil, "--subnet-lease-renew-margin"},
		{[]string{"--healthz-port=70000"}, nil, "--healthz-port"},
		{nil, map[string]string{"FLANNELD_IP_MASQ": "maybe"}, "FLANNELD_IP_MASQ"},
		{[]string{"--etcd-certfile=/x"}, nil, "--etcd-keyfile"},
		{[]string{"--no-such-flag"}, nil, "no-such-flag"},
	}
	for _, c := range cases {
		var stderr bytes.Buffer
		_, err := parseOptions(c.args, env(c.env), &stderr)
		if err == nil {
			t.Errorf("%v %v: accepted, want an error naming %s", c.args, c.env, c.want)
			continue
		}
		if msg := err.Error() + stderr.String(); !strings.Contains(msg, c.want) {
			t.Errorf("%v %v: error %q does not name %s", c.args, c.env, msg, c.want)
		}
	}
}

// --kube-subnet-mgr (or FLANNELD_KUBE_SUBNET_MGR) outside a pod and
// without --kubeconfig-file is one line that says what to give, exit 1.
func TestKubeSubnetMgrWithoutClusterSaysWhatToGive(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"--kube-subnet-mgr"}, nil},
		{nil, map[string]string{"FLANNELD_KUBE_SUBNET_MGR": "true"}},
	} {
		var stderr bytes.Buffer
		code := run(c.args, env(c.env), &stderr)
		if code != 1 {
			t.Errorf("%v %v: exit code %d, want 1", c.args, c.env, code)
		}
		out := stderr.String()
		if !strings.Contains(out, "--kubeconfig-file") || !strings.Contains(out, "level=ERROR") || strings.Count(out, "level=ERROR") != 1 {
			t.Errorf("%v %v: want one error line naming --kubeconfig-file, got:\n%s", c.args, c.env, out)
		}
	}
}

func TestVersion(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"--version"}, env(nil), &stderr); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if !strings.HasPrefix(stderr.String(), "v") {
		t.Errorf("--version printed %q", stderr.String())
	}
}

func TestShortLeaseTTLRenewsEarly(t *testing.T) {
	o, err := parseOptions([]string{"--subnet-lease-ttl=30s"}, env(nil), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if m := o.renewMarginFor(); m <= 0 || m >= 30*time.Second {
		t.Errorf("renew margin %s for a 30s TTL must be inside (0, 30s)", m)
	}
}

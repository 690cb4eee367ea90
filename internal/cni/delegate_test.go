package cni_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flannel-go/flannel/internal/cni"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

// subnet.env inputs of upstream's plugin tests, plus the manifest's.
const (
	envV4   = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
	envV6   = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
	envDual = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n" +
		"FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
	envTwoNets = "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
	envKube    = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	envNoMasq  = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1410\nFLANNEL_IPMASQ=false\n"

	// upstream's test input (subnetFile and dataDir do not reach the delegate)
	confUpstream = `{"name": "cni-flannel", "type": "flannel", "subnetFile": "/x/subnet.env", "dataDir": "/x/data"}`
	// the conflist entry of upstream's manifest, with the list's name and version
	confManifest = `{"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel",
		"delegate": {"hairpinMode": true, "isDefaultGateway": true}}`
	// upstream's "input IPAM" test plus delegate overrides and runtimeConfig
	confOverrides = `{"cniVersion": "1.0.0", "name": "pods", "type": "flannel",
		"delegate": {"bridge": "kbr0", "ipMasq": true, "mtu": 1400, "isGateway": false, "vlan": 12345678901234567},
		"ipam": {"type": "my-ipam", "unknown-param": "unknown-value",
			"routes": [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20", "extra": 1}]},
		"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}`
	confPTP = `{"cniVersion": "0.4.0", "name": "p2p", "type": "flannel", "delegate": {"type": "ptp"}, "ipam": {"routes": []}}`
)

// TestBuildDelegateGolden compares the delegate configuration byte for byte
// with what upstream's plugin renders for the same input: encoding/json's
// rendering of its map, keys sorted, no spaces. The first four are the
// expectations of upstream's own tests (flannel_linux_test.go); the fifth
// is reference §14.2 (the manifest's conflist).
func TestBuildDelegateGolden(t *testing.T) {
	tests := []struct {
		name, conf, env string
		wantType        string
		want            string
	}{
		{"v4", confUpstream, envV4, "bridge",
			`{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}`},
		{"v4 two networks", confUpstream, envTwoNets, "bridge",
			`{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"},{"dst":"192.168.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}`},
		{"v6", confUpstream, envV6, "bridge",
			`{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"fc00::/64"}]],"routes":[{"dst":"fc00::/48"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}`},
		{"dual stack", confUpstream, envDual, "bridge",
			`{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}],[{"subnet":"fc00::/64"}]],"routes":[{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel","type":"bridge"}`},
		{"manifest conflist", confManifest, envKube, "bridge",
			`{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}`},
		{"flanneld does not masquerade", confManifest, envNoMasq, "bridge",
			`{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":true,"ipam":{"ranges":[[{"subnet":"10.5.72.0/24"}]],"routes":[{"dst":"10.5.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1410,"name":"cbr0","type":"bridge"}`},
		// The delegate's own values win; configured routes come first and
		// lose unknown keys; big numbers pass through exactly.
		{"delegate and ipam overrides, dual stack", confOverrides, envDual, "bridge",
			`{"bridge":"kbr0","cniVersion":"1.0.0","ipMasq":true,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}],[{"subnet":"fc00::/64"}]],"routes":[{"dst":"10.96.0.0/12"},{"dst":"192.168.244.0/24","gw":"10.1.17.20"},{"dst":"10.1.0.0/16"},{"dst":"fc00::/48"}],"type":"my-ipam","unknown-param":"unknown-value"},"isGateway":false,"mtu":1400,"name":"pods","runtimeConfig":{"portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"}]},"type":"bridge","vlan":12345678901234567}`},
		// isGateway is a bridge option only.
		{"other delegate type", confPTP, envV4, "ptp",
			`{"cniVersion":"0.4.0","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"mtu":1472,"name":"p2p","type":"ptp"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf := mustConf(t, tt.conf)
			before := mustMarshal(t, conf)
			d, err := cni.BuildDelegate(conf, mustEnv(t, tt.env))
			if err != nil {
				t.Fatalf("BuildDelegate: %v", err)
			}
			if d.Type != tt.wantType {
				t.Errorf("Type = %q, want %q", d.Type, tt.wantType)
			}
			if string(d.Conf) != tt.want {
				t.Errorf("delegate configuration:\n got %s\nwant %s", d.Conf, tt.want)
			}
			if after := mustMarshal(t, conf); !bytes.Equal(before, after) {
				t.Errorf("BuildDelegate changed its input:\n%s\n%s", before, after)
			}
		})
	}
}

// TestUpstreamExpectations checks the goldens above against upstream's
// expected documents as its tests write them (compared as JSON values, as
// its MatchJSON does), so a typo in a golden cannot go unnoticed.
func TestUpstreamExpectations(t *testing.T) {
	const tmpl = `{"ipMasq": false, "ipam": {"routes": [%s], "ranges": [%s], "type": "host-local"},
		"isGateway": true, "mtu": 1472, "name": "cni-flannel", "type": "bridge"}`
	for _, tt := range []struct{ env, routes, ranges string }{
		{envV4, `{"dst": "10.1.0.0/16"}`, `[{"subnet": "10.1.17.0/24"}]`},
		{envTwoNets, `{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}`, `[{"subnet": "10.1.17.0/24"}]`},
		{envV6, `{"dst": "fc00::/48"}`, `[{"subnet": "fc00::/64"}]`},
		{envDual, `{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}`, `[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]`},
	} {
		d, err := cni.BuildDelegate(mustConf(t, confUpstream), mustEnv(t, tt.env))
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Replace(strings.Replace(tmpl, "%s", tt.routes, 1), "%s", tt.ranges, 1)
		var got, exp any
		if err := json.Unmarshal(d.Conf, &got); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(want), &exp); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(exp, got); diff != "" {
			t.Errorf("env %q: (-upstream +ours)\n%s", tt.env, diff)
		}
	}
}

func TestBuildDelegateErrors(t *testing.T) {
	tests := []struct{ name, conf, errText string }{
		{"delegate name", `{"name":"n","delegate":{"name":"x"}}`, "must not have 'name'"},
		{"delegate ipam", `{"name":"n","delegate":{"ipam":{}}}`, "must not have 'ipam'"},
		{"delegate type not a string", `{"name":"n","delegate":{"type":1}}`, "(string) 'type'"},
		{"routes not a list", `{"name":"n","ipam":{"routes":{"dst":"10.0.0.0/8"}}}`, "ipam.routes"},
		{"route without a CIDR", `{"name":"n","ipam":{"routes":[{"dst":"10.0.0.0"}]}}`, "ipam.routes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := cni.BuildDelegate(mustConf(t, tt.conf), mustEnv(t, envV4))
			if err == nil || !strings.Contains(err.Error(), tt.errText) {
				t.Fatalf("BuildDelegate = %s, %v; want an error containing %q", d.Conf, err, tt.errText)
			}
		})
	}
	env := mustEnv(t, "FLANNEL_NETWORK=10.1.0.0/16\n")
	if _, err := cni.BuildDelegate(mustConf(t, confUpstream), env); err == nil {
		t.Errorf("BuildDelegate with an incomplete subnet.env succeeded")
	}
}

func mustConf(t testing.TB, s string) *cni.NetConf {
	t.Helper()
	c, err := cni.ParseConf([]byte(s))
	if err != nil {
		t.Fatalf("ParseConf(%s): %v", s, err)
	}
	return c
}

func mustEnv(t testing.TB, s string) subnetenv.Full {
	t.Helper()
	e, err := subnetenv.ParseFull([]byte(s))
	if err != nil {
		t.Fatalf("ParseFull(%q): %v", s, err)
	}
	return e
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

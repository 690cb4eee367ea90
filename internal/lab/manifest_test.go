package lab

import (
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flannel-go/flannel/internal/netconf"
)

// The lab's pods get the conflist dist/kube-flannel.yml installs on nodes.
func TestManifestConflistOfDist(t *testing.T) {
	manifest, err := os.ReadFile("../../dist/kube-flannel.yml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ManifestConflist(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Name    string
		Plugins []struct{ Type string }
	}
	if err := json.Unmarshal(c, &list); err != nil {
		t.Fatalf("cni-conf.json: %v\n%s", err, c)
	}
	if list.Name != "cbr0" || len(list.Plugins) != 2 || list.Plugins[0].Type != "flannel" || list.Plugins[1].Type != "portmap" {
		t.Errorf("the manifest's conflist is %+v, want cbr0: flannel, portmap", list)
	}
}

func TestManifestConflistErrors(t *testing.T) {
	cm := "kind: ConfigMap\ndata:\n  cni-conf.json: '{}'\n"
	for name, m := range map[string]string{
		"none":       "kind: Namespace\nmetadata:\n  name: x\n",
		"other kind": "kind: Secret\ndata:\n  cni-conf.json: '{}'\n",
		"two":        cm + "---\n" + cm,
		"not yaml":   "kind: [\n",
	} {
		if _, err := ManifestConflist([]byte(m)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if c, err := ManifestConflist([]byte("# head\n---\n" + cm)); err != nil || string(c) != "{}" {
		t.Errorf("a ConfigMap after a comment: %q, %v", c, err)
	}
}

// Only the per-host paths change; the rest reaches the runtime as the
// manifest has it, numbers as written.
func TestHostConflist(t *testing.T) {
	in := `{"name":"cbr0","cniVersion":"1.0.0","plugins":[
		{"type":"flannel","delegate":{"hairpinMode":true,"mtu":1400},"ipam":{"type":"host-local","x":1.50}},
		{"type":"portmap","capabilities":{"portMappings":true}}]}`
	out, err := hostConflist([]byte(in), "/lab/h1/subnet.env", "/lab/h1/cni/flannel", "/lab/h1/cni/networks")
	if err != nil {
		t.Fatal(err)
	}
	var got, want any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal([]byte(`{"name":"cbr0","cniVersion":"1.0.0","plugins":[
		{"type":"flannel","delegate":{"hairpinMode":true,"mtu":1400},
		 "subnetFile":"/lab/h1/subnet.env","dataDir":"/lab/h1/cni/flannel",
		 "ipam":{"type":"host-local","x":1.50,"dataDir":"/lab/h1/cni/networks"}},
		{"type":"portmap","capabilities":{"portMappings":true}}]}`), &want)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("host conflist (-want +got):\n%s", d)
	}
	if !strings.Contains(string(out), `"x": 1.50`) {
		t.Errorf("a number was rewritten:\n%s", out)
	}
	if _, err := hostConflist([]byte(`{"plugins":[{"type":"bridge"}]}`), "a", "b", "c"); err == nil {
		t.Errorf("a conflist without the flannel plugin: no error")
	}
}

func TestNodeCIDR(t *testing.T) {
	for _, c := range []struct {
		conf string
		n    int
		want string // "" = error
	}{
		{`{"Network":"10.244.0.0/16"}`, 1, "10.244.1.0/24"},
		{`{"Network":"10.244.0.0/16"}`, 3, "10.244.3.0/24"},
		{`{"Network":"10.244.0.0/16","SubnetLen":26}`, 2, "10.244.0.128/26"},
		{`{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0"}`, 1, "10.244.10.0/24"},
		{`{"Network":"10.244.0.0/16","SubnetMax":"10.244.2.0"}`, 2, "10.244.2.0/24"},
		{`{"Network":"10.244.0.0/16","SubnetMax":"10.244.2.0"}`, 3, ""},
		{`{"Network":"255.255.0.0/16"}`, 300, ""},
		{`{"Network":"10.244.0.0/16"}`, 0, ""},
		{`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48"}`, 1, ""},
	} {
		nc, err := netconf.Parse([]byte(c.conf))
		if err != nil {
			t.Fatalf("%s: %v", c.conf, err)
		}
		got, err := NodeCIDR(nc, c.n)
		switch {
		case c.want == "" && err == nil:
			t.Errorf("%s node %d: %s, want an error", c.conf, c.n, got)
		case c.want != "" && (err != nil || got != netip.MustParsePrefix(c.want)):
			t.Errorf("%s node %d: %s, %v; want %s", c.conf, c.n, got, err, c.want)
		}
	}
}

func FuzzManifestConflist(f *testing.F) {
	if m, err := os.ReadFile("../../dist/kube-flannel.yml"); err == nil {
		f.Add(m)
	}
	f.Add([]byte("kind: ConfigMap\ndata:\n  cni-conf.json: '{\"plugins\":[{\"type\":\"flannel\"}]}'\n"))
	f.Fuzz(func(t *testing.T, m []byte) {
		c, err := ManifestConflist(m)
		if err != nil {
			return
		}
		out, err := hostConflist(c, "s", "d", "i")
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Errorf("hostConflist made invalid JSON: %s", out)
		}
	})
}

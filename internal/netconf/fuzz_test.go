package netconf_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flannel-go/flannel/internal/netconf"
)

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"Network":"10.5.0.0/16"}`,
		`{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}`,
		`{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}`,
		`{"NetWork":"10.5.0.0/23","subnetlen":25,"BACKEND":{"type":"VXLAN"}}`,
		`{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"2001:cafe:42::/56"}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120","IPv6SubnetMin":"fc00::80"}`,
		`{"Network":"0.0.0.0/0","SubnetMin":"0.0.0.0"}`,
		`{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.8.0"}`,
		`{"Network":"10.5.1.0/16","SubnetLen":-1}`,
		`{"Network":"10.5.0.0/16",}`,
		`null`, ``, `{"Backend":{}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := netconf.Parse(data)
		if err != nil {
			var e *netconf.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is %T, want *netconf.Error", err, err)
			}
			if len(e.Value) > 64 || len(err.Error()) > 400 || strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error too long or not on one line: %q", err)
			}
			return
		}
		checkInvariants(t, c)

		// What parses must parse again, to the same thing, when every
		// value is spelled out: defaults are stable and nothing depends
		// on how the input was written.
		again, err := netconf.Parse(encode(t, c))
		if err != nil {
			t.Fatalf("config %+v does not re-parse: %v", c, err)
		}
		var compact bytes.Buffer
		if c.Backend != nil {
			if err := json.Compact(&compact, c.Backend); err != nil {
				t.Fatalf("Backend %q is not JSON: %v", c.Backend, err)
			}
			if !bytes.Equal(compact.Bytes(), again.Backend) {
				t.Fatalf("Backend %s re-parsed as %s", c.Backend, again.Backend)
			}
		}
		c.Backend, again.Backend = nil, nil
		if diff := cmp.Diff(c, again, equateNetip); diff != "" {
			t.Fatalf("re-parse mismatch (-first +second):\n%s", diff)
		}
	})
}

func checkInvariants(t *testing.T, c *netconf.Config) {
	t.Helper()
	if !c.EnableIPv4 && !c.EnableIPv6 {
		t.Fatalf("no family enabled: %+v", c)
	}
	type fam struct {
		on            bool
		network       netip.Prefix
		subnetLen     int
		min, max      netip.Addr
		bits, longest int
	}
	for _, f := range []fam{
		{c.EnableIPv4, c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, 32, 30},
		{c.EnableIPv6, c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax, 128, 126},
	} {
		if !f.on {
			if f.network.IsValid() || f.subnetLen != 0 || f.min.IsValid() || f.max.IsValid() {
				t.Fatalf("disabled family has values: %+v", c)
			}
			continue
		}
		n := f.network
		if !n.IsValid() || n.Addr().BitLen() != f.bits || n.Addr().Is4In6() || n.Masked() != n {
			t.Fatalf("bad network %s in %+v", n, c)
		}
		if f.subnetLen < n.Bits()+2 || f.subnetLen > f.longest {
			t.Fatalf("SubnetLen %d for network %s", f.subnetLen, n)
		}
		for _, a := range []netip.Addr{f.min, f.max} {
			if !n.Contains(a) || netip.PrefixFrom(a, f.subnetLen).Masked().Addr() != a {
				t.Fatalf("subnet bound %s not an aligned /%d inside %s", a, f.subnetLen, n)
			}
		}
		if f.min.Compare(f.max) > 0 {
			t.Fatalf("SubnetMin %s > SubnetMax %s", f.min, f.max)
		}
	}
	if c.BackendType == "" || c.BackendType != strings.ToLower(c.BackendType) {
		t.Fatalf("BackendType %q", c.BackendType)
	}
	if c.Backend == nil && c.BackendType != "udp" {
		t.Fatalf("Backend %s with BackendType %q", c.Backend, c.BackendType)
	}
}

// encode writes c back as a config with every key explicit.
func encode(t *testing.T, c *netconf.Config) []byte {
	m := map[string]any{
		"EnableIPv4":     c.EnableIPv4,
		"EnableIPv6":     c.EnableIPv6,
		"EnableNFTables": c.EnableNFTables,
	}
	if c.EnableIPv4 {
		m["Network"], m["SubnetLen"] = c.Network.String(), c.SubnetLen
		m["SubnetMin"], m["SubnetMax"] = c.SubnetMin.String(), c.SubnetMax.String()
	}
	if c.EnableIPv6 {
		m["IPv6Network"], m["IPv6SubnetLen"] = c.IPv6Network.String(), c.IPv6SubnetLen
		m["IPv6SubnetMin"], m["IPv6SubnetMax"] = c.IPv6SubnetMin.String(), c.IPv6SubnetMax.String()
	}
	if c.Backend != nil {
		m["Backend"] = c.Backend
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		t.Fatalf("encode %+v: %v", c, err)
	}
	return b.Bytes()
}

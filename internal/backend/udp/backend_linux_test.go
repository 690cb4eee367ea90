package udp

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/netconf"
)

func TestNewValidates(t *testing.T) {
	good := func() backend.Config {
		return backend.Config{
			Options: []byte(`{"Type":"udp","Port":8285}`),
			Network: &netconf.Config{Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24},
			Ext:     iface.ExtIface{Name: "eth0", MTU: 1500, IfaceAddr: netip.MustParseAddr("192.168.1.5")},
		}
	}
	b, err := Options{}.New(good())
	if err != nil {
		t.Fatal(err)
	}
	if u := b.(*Backend); u.ext.ExtAddr != u.ext.IfaceAddr || u.mtu() != 1472 {
		t.Errorf("ExtAddr %s (want the interface address when unset), mtu %d", u.ext.ExtAddr, u.mtu())
	}
	for _, tc := range []struct {
		name   string
		mutate func(*backend.Config)
		want   string
	}{
		{"port", func(c *backend.Config) { c.Options = []byte(`{"Port":70000}`) }, "Port"},
		{"no network", func(c *backend.Config) { c.Network = nil }, "IPv4 Network"},
		{"v6 only", func(c *backend.Config) { c.Network = &netconf.Config{IPv6Network: netip.MustParsePrefix("fc00::/48")} }, "IPv4 Network"},
		{"no address", func(c *backend.Config) { c.Ext.IfaceAddr = netip.Addr{} }, "no IPv4 address"},
		{"tiny mtu", func(c *backend.Config) { c.Ext.MTU = 90 }, "MTU"},
	} {
		c := good()
		tc.mutate(&c)
		if _, err := (Options{}).New(c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v; want an error about %s", tc.name, err, tc.want)
		}
	}
	if _, err := (Options{Offloads: "bogus"}).New(good()); err == nil {
		t.Errorf("New accepted %s=bogus", OffloadEnv)
	}
}

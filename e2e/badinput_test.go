package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
)

// Garbage written under <prefix>/subnets/ while the overlay runs: every
// entry is ignored with a warning naming it, becomes no route anywhere,
// and the real peers keep working.
func TestBadSubnetEntries(t *testing.T) {
	t.Parallel()
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			l := startLab(t, faultOpts(t, 3, backendConfig(b)))
			h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
			pings := startPings(t, l, [2]*lab.Host{h1, h2}, [2]*lab.Host{h2, h3})
			cli := etcdClient(t, l)
			valid := func(publicIP string) string {
				p := newFakePeer(250)
				p.PublicIP = netip.MustParseAddr(publicIP)
				return p.value(b)
			}
			// Half of h1's subnet, leased again.
			a := h1.Subnet.Addr().As4()
			half := netip.PrefixFrom(netip.AddrFrom4([4]byte{a[0], a[1], a[2], 128}), 25)
			type entry struct {
				name, key, value string
				warnOn           []*lab.Host // hosts that must log a warning naming it
				subnet           string      // its subnet, which must get no route ("" if none)
			}
			entries := []entry{
				{"key that is no subnet", "garbage", valid("192.168.100.240"), l.Hosts, ""},
				{"prefix length 33", "10.5.241.0-33", valid("192.168.100.241"), l.Hosts, ""},
				{"host bits set", "10.5.242.7-24", valid("192.168.100.242"), l.Hosts, "10.5.242.0/24"},
				{"value not JSON", "10.5.243.0-24", `{"PublicIP":`, l.Hosts, "10.5.243.0/24"},
				{"value not an object", "10.5.244.0-24", `[1,2,3]`, l.Hosts, "10.5.244.0/24"},
				{"subnet outside the Network", "10.99.0.0-24", valid("192.168.100.245"), l.Hosts, "10.99.0.0/24"},
				{"subnet overlapping h1's", fmt.Sprintf("%s-25", half.Addr()), valid("192.168.100.246"), l.Hosts, half.String()},
				{"PublicIP inside the overlay", "10.5.247.0-24", valid("10.5.3.4"), l.Hosts, "10.5.247.0/24"},
				{"PublicIP of h2", "10.5.248.0-24", valid(h2.Addr.String()), []*lab.Host{h2}, ""},
				{"unknown backend type", "10.5.249.0-24", `{"PublicIP":"192.168.100.249","PublicIPv6":null,"BackendType":"quantum","BackendData":{"Entangled":true}}`, l.Hosts, "10.5.249.0/24"},
			}
			if b == "vxlan" {
				entries = append(entries,
					entry{"vxlan BackendData of the wrong types", "10.5.250.0-24", `{"PublicIP":"192.168.100.250","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":"one","VtepMAC":42}}`, l.Hosts, "10.5.250.0/24"},
					entry{"vxlan VtepMAC multicast", "10.5.251.0-24", `{"PublicIP":"192.168.100.251","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}}`, l.Hosts, "10.5.251.0/24"},
				)
			}
			offsets := map[*lab.Host]int{}
			for _, h := range l.Hosts {
				offsets[h] = len(logOf(l, h))
			}
			for _, e := range entries {
				etcdPut(t, cli, etcdPrefix+"/subnets/"+e.key, e.value)
			}
			for _, e := range entries {
				for _, h := range e.warnOn {
					ok := func() bool { return warnsAbout(logSince(l, h, offsets[h]), e.key) }
					if _, warned := pollUntil(3*time.Second, ok); !warned {
						t.Errorf("%s: %s (%s): no warning naming the key", h.Name, e.name, e.key)
					}
				}
			}
			// A full resync (as after a restart or compaction) must not
			// turn any of it into a route either.
			stopFlanneld(t, l, h3, syscall.SIGTERM)
			restartAndWait(t, l, h3)
			time.Sleep(time.Second) // let the restarted host sync and traffic run
			for _, h := range l.Hosts {
				if !lab.Alive(h.FlanneldPID) {
					t.Errorf("%s's flanneld exited:\n%s", h.Name, logOf(l, h))
				}
				routes := nsOutput(h.NS, "ip", "-4", "route", "show")
				for _, e := range entries {
					if e.subnet != "" && strings.Contains(routes, e.subnet+" ") {
						t.Errorf("%s routes %s, from the %s entry:\n%s", h.Name, e.subnet, e.name, routes)
					}
				}
				for _, peer := range l.Hosts {
					if peer != h {
						if en := entriesFor(h, peer.Subnet, peer.Addr); !en.complete(b) {
							t.Errorf("%s lost its entries for %s: %s", h.Name, peer.Name, en)
						}
					}
				}
			}
			if t.Failed() {
				for _, h := range l.Hosts {
					t.Logf("%s log since the garbage:\n%s", h.Name, logSince(l, h, offsets[h]))
				}
			}
			pings.stopNoLoss(t)
		})
	}
}

// warnsAbout reports whether log has a WARN line naming key.
func warnsAbout(log, key string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, key) {
			return true
		}
	}
	return false
}

// Hostile network configs are in etcd before flanneld starts: each
// flanneld logs one error naming the key at fault, leases nothing, writes
// no subnet.env, and keeps running (waiting for a fixed config).
func TestHostileConfigs(t *testing.T) {
	t.Parallel()
	configs := []struct{ config, names string }{
		{`{"Network":"10.5.0.0/33","Backend":{"Type":"vxlan"}}`, "Network"},
		{`{"Network":"10.5.0.1/16","Backend":{"Type":"vxlan"}}`, "Network"},
		{`{"Network":"10.5.0.0/29","Backend":{"Type":"vxlan"}}`, "Network"},
		{`{"Network":"fc00::/48","Backend":{"Type":"vxlan"}}`, "Network"},
		{`{"Network":"10.5.0.0/16","SubnetLen":8,"Backend":{"Type":"vxlan"}}`, "SubnetLen"},
		{`{"Network":"10.5.0.0/16","SubnetLen":"24","Backend":{"Type":"vxlan"}}`, "SubnetLen"},
		{`{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0","Backend":{"Type":"vxlan"}}`, "SubnetMin"},
		{`{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.1.0","Backend":{"Type":"vxlan"}}`, "SubnetMin"},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"quantum"}}`, "Backend.Type"},
		{`{"Network":"10.5.0.0/16","Backend":"vxlan"}`, "Backend"},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":99999999}}`, "VNI"},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Port":"8472"}}`, "Port"},
		{`{"Network":"10.5.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}`, "IPv6Network"},
		{`{"EnableIPv4":false,"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`, "EnableIPv4"},
		{`[{"Network":"10.5.0.0/16"}]`, "JSON object"},
		{`{"Network":"10.5.0.0/16",`, "not valid JSON"},
	}
	o := faultOpts(t, len(configs), backendConfig("vxlan"))
	o.NoFlanneld = true
	l := startLab(t, o)
	cli := etcdClient(t, l)
	pfx := func(i int) string { return fmt.Sprintf("/hostile/%d", i) }
	for i, h := range l.Hosts {
		etcdPut(t, cli, pfx(i)+"/config", configs[i].config)
		h.Args = []string{"-etcd-prefix=" + pfx(i)}
		if err := l.StartFlanneld(h); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range l.Hosts {
		waitFor(t, 10*time.Second, h.Name+" to log an error", func() bool { return strings.Contains(logOf(l, h), "level=ERROR") })
	}
	// flanneld retries the config (after 1 s, then 2 s, ...): give it a
	// few retries to show it reports the problem once, not per retry.
	time.Sleep(4 * time.Second)
	for i, h := range l.Hosts {
		c := configs[i]
		log := logOf(l, h)
		var errs []string
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "level=ERROR") {
				errs = append(errs, line)
			}
		}
		switch {
		case len(errs) != 1:
			t.Errorf("config %s: %d error lines, want 1:\n%s", c.config, len(errs), log)
		case !strings.Contains(errs[0], c.names):
			t.Errorf("config %s: the error does not name %s: %s", c.config, c.names, errs[0])
		default:
			t.Logf("%s → %s", c.config, errs[0][strings.Index(errs[0], "msg="):])
		}
		if !lab.Alive(h.FlanneldPID) {
			t.Errorf("config %s: flanneld exited:\n%s", c.config, log)
		}
		if n := countKeys(t, cli, pfx(i)+"/subnets/"); n != 0 {
			t.Errorf("config %s: flanneld leased %d subnets", c.config, n)
		}
		if _, err := os.Stat(l.SubnetFile(h)); err == nil {
			t.Errorf("config %s: flanneld wrote %s", c.config, l.SubnetFile(h))
		}
	}
}

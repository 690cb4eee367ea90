package masq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/logbuf"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/ns"
)

// iptVariant is one iptables flavour: the default (iptables-nft on this
// distribution) or iptables-legacy.
type iptVariant struct {
	name, ipt, ipt6, save, save6, restore, restore6 string
}

var iptVariants = []iptVariant{
	{"default", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore"},
	{"legacy", "iptables-legacy", "ip6tables-legacy", "iptables-legacy-save", "ip6tables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-restore"},
}

func newTestManager(t *testing.T, kind Kind, v iptVariant) (*Manager, *logbuf.Buffer) {
	t.Helper()
	logs := &logbuf.Buffer{}
	m, err := New(kind, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if v.save != "" {
		for _, bin := range []string{v.save, v.restore, v.save6, v.restore6} {
			if _, err := exec.LookPath(bin); err != nil {
				t.Skipf("%s not installed", bin)
			}
		}
		m.ipt.fams[0].save, m.ipt.fams[0].restore = v.save, v.restore
		m.ipt.fams[1].save, m.ipt.fams[1].restore = v.save6, v.restore6
	}
	return m, logs
}

func apply(t *testing.T, n *ns.NS, m *Manager, r Rules) bool {
	t.Helper()
	var changed bool
	err := n.Do(func() error {
		var err error
		changed, err = m.Apply(context.Background(), r)
		return err
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return changed
}

func removeOther(t *testing.T, n *ns.NS, m *Manager) {
	t.Helper()
	if err := n.Do(func() error { return m.RemoveOther(context.Background()) }); err != nil {
		t.Fatalf("RemoveOther: %v", err)
	}
}

func run(t *testing.T, n *ns.NS, name string, args ...string) string {
	t.Helper()
	out, err := n.Command(context.Background(), name, args...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

var v6Rules = strings.NewReplacer("10.244.0.0/16", "fd00:10:244::/56", "10.244.1.0/24", "fd00:10:244:1::/64", "224.0.0.0/4", "ff00::/8")

var dualStack = Rules{
	Network: testRules.Network, Subnet: testRules.Subnet,
	Network6: netip.MustParsePrefix("fd00:10:244::/56"), Subnet6: netip.MustParsePrefix("fd00:10:244:1::/64"),
	Masq: true, FullyRandom: true, Forward: true,
}

var counterRE = regexp.MustCompile(`^\[\d+:\d+\] `)

// iptLines returns table's "-A" lines for the chains named, in order,
// without counters.
func iptLines(save, table string, chains ...string) []string {
	var out []string
	in := false
	for _, l := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			in = l == "*"+table
		case in:
			l = counterRE.ReplaceAllString(l, "")
			for _, c := range chains {
				if strings.HasPrefix(l, "-A "+c+" ") {
					out = append(out, l)
				}
			}
		}
	}
	return out
}

// counters maps each rule line of a table to its [packets:bytes].
func counters(save, table string) map[string]string {
	out := map[string]string{}
	in := false
	for _, l := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			in = l == "*"+table
		case in && counterRE.MatchString(l):
			c := counterRE.FindString(l)
			out[strings.TrimPrefix(l, c)] = c
		}
	}
	return out
}

func lines(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }

// savedRules is iptables-save output without its counters and its
// comment lines (which carry the time of the save, to the second).
func savedRules(save string) []string {
	return slices.DeleteFunc(lines(counterRE.ReplaceAllString(save, "")), func(l string) bool { return strings.HasPrefix(l, "#") })
}

func sameLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s:\n%s\nwant:\n%s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestIPTables(t *testing.T) {
	for _, v := range iptVariants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			n := netnstest.New(t, "fmq")
			m, logs := newTestManager(t, IPTables, v)
			// Other components' rules (Docker's) that must never be touched.
			run(t, n, v.ipt, "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE")
			run(t, n, v.ipt, "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT")
			run(t, n, v.ipt6, "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT")
			first := func(l []string) []string { return l[:min(1, len(l))] }
			foreign := func() []string {
				s := run(t, n, v.save)
				return slices.Concat(first(iptLines(s, "nat", "POSTROUTING")), first(iptLines(s, "filter", "FORWARD")),
					first(iptLines(run(t, n, v.save6), "filter", "FORWARD")))
			}
			foreignBefore := foreign()

			start := time.Now()
			if !apply(t, n, m, dualStack) {
				t.Fatal("first Apply: changed = false")
			}
			t.Logf("first Apply (IPv4+IPv6, masq+forward): %v", time.Since(start))
			check := func(r Rules) {
				t.Helper()
				s, s6 := run(t, n, v.save), run(t, n, v.save6)
				natText := upstreamNAT
				if !r.FullyRandom {
					natText = strings.ReplaceAll(natText, " --random-fully", "")
				}
				repl := strings.NewReplacer(testRules.Network.String(), r.Network.String(), testRules.Subnet.String(), r.Subnet.String())
				nat, filter := lines(repl.Replace(natText)), lines(repl.Replace(upstreamFilter))
				// Upstream's rules, each jump appended after the foreign rule.
				sameLines(t, "nat POSTROUTING", iptLines(s, "nat", "POSTROUTING"), []string{foreignBefore[0], nat[0]})
				sameLines(t, "nat FLANNEL-POSTRTG", iptLines(s, "nat", "FLANNEL-POSTRTG"), nat[1:])
				sameLines(t, "filter FORWARD", iptLines(s, "filter", "FORWARD"), []string{foreignBefore[1], filter[0]})
				sameLines(t, "filter FLANNEL-FWD", iptLines(s, "filter", "FLANNEL-FWD"), filter[1:])
				if r.Network6.IsValid() {
					sameLines(t, "ip6 nat", iptLines(s6, "nat", "POSTROUTING", "FLANNEL-POSTRTG"), lines(v6Rules.Replace(natText)))
					sameLines(t, "ip6 filter", iptLines(s6, "filter", "FORWARD", "FLANNEL-FWD"),
						append([]string{foreignBefore[2]}, lines(v6Rules.Replace(upstreamFilter))...))
				}
			}
			check(dualStack)
			if l := logs.Take(); len(l) != 2 || !strings.Contains(l[0], "rules repaired") || !strings.Contains(l[1], "family=ipv6") {
				t.Fatalf("want one log line per family, got %q", l)
			}

			// Give every rule of ours distinct counters, as traffic would: a
			// rule that is flushed and re-added comes back at [0:0].
			mark := func() {
				s := run(t, n, v.save)
				for _, c := range []struct{ table, chain string }{{"nat", "FLANNEL-POSTRTG"}, {"filter", "FLANNEL-FWD"}} {
					for i, l := range iptLines(s, c.table, c.chain) {
						toks, _ := splitRule(strings.TrimPrefix(l, "-A "+c.chain+" "))
						args := append([]string{"-t", c.table, "-R", c.chain, fmt.Sprint(i + 1), "-c", fmt.Sprint(i + 1), fmt.Sprint(100 * (i + 1))}, toks...)
						run(t, n, v.ipt, args...)
					}
				}
			}
			mark()
			before := run(t, n, v.save, "-c")
			start = time.Now()
			if apply(t, n, m, dualStack) {
				t.Fatal("second Apply: changed = true")
			}
			t.Logf("no-op Apply: %v", time.Since(start))
			if after := run(t, n, v.save, "-c"); iptLines(after, "nat", "FLANNEL-POSTRTG", "POSTROUTING") == nil ||
				!slices.Equal(savedRules(after), savedRules(before)) ||
				fmt.Sprint(counters(after, "nat")) != fmt.Sprint(counters(before, "nat")) {
				t.Fatalf("no-op Apply changed the ruleset:\n%s\nbefore:\n%s", after, before)
			}
			if l := logs.Take(); l != nil {
				t.Fatalf("no-op Apply logged %q", l)
			}

			// A rule and a jump deleted by hand come back; nothing else is
			// re-added (counters survive).
			deleted := iptLines(before, "nat", "FLANNEL-POSTRTG")[2]
			run(t, n, v.ipt, "-t", "nat", "-D", "FLANNEL-POSTRTG", "3")
			run(t, n, v.ipt, "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD")
			if !apply(t, n, m, dualStack) {
				t.Fatal("repair: changed = false")
			}
			check(dualStack)
			after := run(t, n, v.save, "-c")
			for _, table := range []string{"nat", "filter"} {
				cb, ca := counters(before, table), counters(after, table)
				for rule, c := range cb {
					if rule == deleted || strings.HasPrefix(rule, "-A FORWARD -m comment") {
						continue
					}
					if ca[rule] != c {
						t.Errorf("%s: counters %s → %s: re-added although it was right", rule, c, ca[rule])
					}
				}
			}
			if l := logs.Take(); len(l) != 1 || !strings.Contains(l[0], "rules repaired") || !strings.Contains(l[0], "FLANNEL-POSTRTG: 1 rules added") {
				t.Fatalf("want one repair line, got %q", l)
			}

			// Leftovers of flannel before v0.20 (rules straight in POSTROUTING)
			// and a stray rule in our chain go.
			run(t, n, v.ipt, "-t", "nat", "-I", "POSTROUTING", "-s", "10.244.0.0/16", "-d", "10.244.0.0/16", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN")
			run(t, n, v.ipt, "-t", "nat", "-I", "FLANNEL-POSTRTG", "2", "-s", "192.0.2.1", "-j", "RETURN")
			apply(t, n, m, dualStack)
			check(dualStack)

			// New Network and subnet: only the new rules remain.
			moved := dualStack
			moved.Network, moved.Subnet = netip.MustParsePrefix("10.250.0.0/16"), netip.MustParsePrefix("10.250.9.0/24")
			moved.FullyRandom = false
			apply(t, n, m, moved)
			check(moved)

			// Masquerade off, then IPv6 off, then forward rules off.
			noMasq := moved
			noMasq.Masq = false
			apply(t, n, m, noMasq)
			s := run(t, n, v.save)
			sameLines(t, "nat after masq off", iptLines(s, "nat", "POSTROUTING", "FLANNEL-POSTRTG"), foreignBefore[:1])
			if strings.Contains(s, ":FLANNEL-POSTRTG") || len(iptLines(s, "filter", "FLANNEL-FWD")) != 2 {
				t.Fatalf("masq off:\n%s", s)
			}
			v4only := noMasq
			v4only.Network6, v4only.Subnet6 = netip.Prefix{}, netip.Prefix{}
			apply(t, n, m, v4only)
			if s6 := run(t, n, v.save6); strings.Contains(s6, "FLANNEL") {
				t.Fatalf("IPv6 off, rules left:\n%s", s6)
			}
			v4only.Forward = false
			apply(t, n, m, v4only)
			if s := run(t, n, v.save); strings.Contains(s, "FLANNEL") || strings.Contains(s, "flanneld") {
				t.Fatalf("all off, rules left:\n%s", s)
			}
			if apply(t, n, m, v4only) {
				t.Fatal("Apply with everything off and nothing left: changed = true")
			}
			sameLines(t, "foreign rules", foreign(), foreignBefore)
		})
	}
}

var handleRE = regexp.MustCompile(` # handle (\d+)$`)

// nftRules returns the rule lines of a chain as `nft -a list` prints them,
// and their handles.
func nftRules(t *testing.T, n *ns.NS, family, table, chain string) (rules []string, handles map[string]string) {
	t.Helper()
	out, err := n.Command(context.Background(), "nft", "-a", "list", "chain", family, table, chain).Output()
	if err != nil {
		return nil, nil
	}
	handles = map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		m := handleRE.FindStringSubmatch(l)
		if m == nil || strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "table ") {
			continue
		}
		r := strings.TrimSuffix(l, m[0])
		rules = append(rules, r)
		handles[r] = m[1]
	}
	return rules, handles
}

// upstreamNFT is upstream's nftables postrtg chain for testRules, with
// our two deliberate differences (masked mark match, fourth rule as in
// iptables), and its forward chain.
const upstreamNFT = `meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq"
ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return comment "flanneld masq"
ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment "flanneld masq"
ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment "flanneld masq"
ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment "flanneld masq"
ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment "flanneld masq"`

const upstreamNFTForward = `ip saddr 10.244.0.0/16 accept comment "flanneld forward"
ip daddr 10.244.0.0/16 accept comment "flanneld forward"`

func TestNFTables(t *testing.T) {
	t.Parallel()
	n := netnstest.New(t, "fmq")
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed (needed to inspect the ruleset)")
	}
	m, logs := newTestManager(t, NFTables, iptVariant{})
	// Another component's table, which must never be touched.
	run(t, n, "nft", "add table ip other; add chain ip other post { type nat hook postrouting priority srcnat; }; add rule ip other post oifname \"docker0\" masquerade")
	otherBefore := run(t, n, "nft", "-a", "list", "table", "ip", "other")

	start := time.Now()
	if !apply(t, n, m, dualStack) {
		t.Fatal("first Apply: changed = false")
	}
	t.Logf("first Apply (IPv4+IPv6, masq+forward): %v", time.Since(start))
	v6NFT := strings.NewReplacer("ip saddr", "ip6 saddr", "ip daddr", "ip6 daddr")
	check := func(r Rules) map[string]string {
		t.Helper()
		post, h := nftRules(t, n, "ip", "flannel-ipv4", "postrtg")
		fwd, hf := nftRules(t, n, "ip", "flannel-ipv4", "forward")
		repl := strings.NewReplacer(testRules.Network.String(), r.Network.String(), testRules.Subnet.String(), r.Subnet.String())
		wantText := upstreamNFT
		if !r.FullyRandom {
			wantText = strings.ReplaceAll(wantText, " fully-random", "")
		}
		want := repl.Replace(wantText)
		sameLines(t, "flannel-ipv4 postrtg", post, lines(want))
		sameLines(t, "flannel-ipv4 forward", fwd, lines(repl.Replace(upstreamNFTForward)))
		if r.Network6.IsValid() {
			post6, _ := nftRules(t, n, "ip6", "flannel-ipv6", "postrtg")
			fwd6, _ := nftRules(t, n, "ip6", "flannel-ipv6", "forward")
			sameLines(t, "flannel-ipv6 postrtg", post6, lines(v6NFT.Replace(v6Rules.Replace(wantText))))
			sameLines(t, "flannel-ipv6 forward", fwd6, lines(v6NFT.Replace(v6Rules.Replace(upstreamNFTForward))))
		}
		for k, v := range hf {
			h["forward "+k] = v
		}
		return h
	}
	handles := check(dualStack)
	table := run(t, n, "nft", "list", "table", "ip", "flannel-ipv4")
	for _, want := range []string{"type nat hook postrouting priority srcnat; policy accept;", "type filter hook forward priority filter; policy accept;"} {
		if !strings.Contains(table, want) {
			t.Fatalf("no %q in\n%s", want, table)
		}
	}
	if l := logs.Take(); len(l) != 2 {
		t.Fatalf("want one log line per family, got %q", l)
	}

	start = time.Now()
	if apply(t, n, m, dualStack) {
		t.Fatal("second Apply: changed = true")
	}
	t.Logf("no-op Apply: %v", time.Since(start))
	if h := check(dualStack); fmt.Sprint(h) != fmt.Sprint(handles) {
		t.Fatalf("no-op Apply changed handles: %v → %v", handles, h)
	}
	if l := logs.Take(); l != nil {
		t.Fatalf("no-op Apply logged %q", l)
	}

	// Rules deleted by hand at the top, in the middle and at the bottom,
	// plus a stray one, are repaired in place: the others keep their handles.
	post, _ := nftRules(t, n, "ip", "flannel-ipv4", "postrtg")
	for _, i := range []int{0, 3, 5} {
		run(t, n, "nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", handles[post[i]])
	}
	run(t, n, "nft", "insert", "rule", "ip", "flannel-ipv4", "postrtg", "position", handles[post[2]], "ip", "saddr", "192.0.2.1", "return")
	run(t, n, "nft", "delete", "rule", "ip", "flannel-ipv4", "forward", "handle", handles["forward "+lines(upstreamNFTForward)[1]])
	if !apply(t, n, m, dualStack) {
		t.Fatal("repair: changed = false")
	}
	h := check(dualStack)
	for _, i := range []int{1, 2, 4} {
		if h[post[i]] != handles[post[i]] {
			t.Errorf("%s: handle %s → %s: re-added although it was right", post[i], handles[post[i]], h[post[i]])
		}
	}
	if k := "forward " + lines(upstreamNFTForward)[0]; h[k] != handles[k] {
		t.Errorf("%s: handle changed", k)
	}
	if l := logs.Take(); len(l) != 1 || !strings.Contains(l[0], "rules repaired") {
		t.Fatalf("want one repair line, got %q", l)
	}

	// A chain someone re-created with the wrong hook is replaced.
	run(t, n, "nft", "flush chain ip flannel-ipv4 forward; delete chain ip flannel-ipv4 forward; add chain ip flannel-ipv4 forward { type filter hook input priority filter; }")
	apply(t, n, m, dualStack)
	if table := run(t, n, "nft", "list", "table", "ip", "flannel-ipv4"); !strings.Contains(table, "hook forward") {
		t.Fatalf("wrong hook not repaired:\n%s", table)
	}
	check(dualStack)

	moved := dualStack
	moved.Network, moved.Subnet = netip.MustParsePrefix("10.250.0.0/16"), netip.MustParsePrefix("10.250.9.0/24")
	moved.FullyRandom = false
	apply(t, n, m, moved)
	check(moved)

	noMasq := moved
	noMasq.Masq, noMasq.Network6 = false, netip.Prefix{}
	apply(t, n, m, noMasq)
	if r, _ := nftRules(t, n, "ip", "flannel-ipv4", "postrtg"); r != nil {
		t.Fatalf("masq off, postrtg left: %q", r)
	}
	if r, _ := nftRules(t, n, "ip", "flannel-ipv4", "forward"); len(r) != 2 {
		t.Fatalf("masq off removed the forward rules: %q", r)
	}
	if out := run(t, n, "nft", "list", "tables"); strings.Contains(out, "flannel-ipv6") {
		t.Fatalf("IPv6 off, table left: %s", out)
	}
	noMasq.Forward = false
	apply(t, n, m, noMasq)
	if out := run(t, n, "nft", "list", "tables"); strings.Contains(out, "flannel") {
		t.Fatalf("all off, tables left: %s", out)
	}
	if got := run(t, n, "nft", "-a", "list", "table", "ip", "other"); got != otherBefore {
		t.Fatalf("foreign table changed:\n%s\nwas:\n%s", got, otherBefore)
	}
}

func TestRemoveOther(t *testing.T) {
	t.Parallel()
	n := netnstest.New(t, "fmq")
	ipt, _ := newTestManager(t, IPTables, iptVariant{})
	nft, _ := newTestManager(t, NFTables, iptVariant{})
	run(t, n, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "-j", "MASQUERADE")
	run(t, n, "iptables", "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT")
	foreign := func() []string {
		s := run(t, n, "iptables-save")
		return slices.Concat(iptLines(s, "nat", "POSTROUTING"), iptLines(s, "filter", "FORWARD"))
	}
	apply(t, n, ipt, dualStack)
	apply(t, n, nft, dualStack)

	// nftables mode clears flannel's iptables chains and jumps, both
	// families, and nothing else.
	removeOther(t, n, nft)
	for _, bin := range []string{"iptables-save", "ip6tables-save"} {
		if s := run(t, n, bin); strings.Contains(s, "FLANNEL") || strings.Contains(s, "flanneld") {
			t.Fatalf("%s after RemoveOther:\n%s", bin, s)
		}
	}
	sameLines(t, "foreign iptables rules", foreign(), []string{
		"-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE", "-A FORWARD -i docker0 -j ACCEPT"})
	if out := run(t, n, "nft", "list", "tables"); !strings.Contains(out, "flannel-ipv4") || !strings.Contains(out, "flannel-ipv6") {
		t.Fatalf("nftables RemoveOther removed its own tables: %s", out)
	}

	// iptables mode deletes the nftables tables and keeps its own rules.
	apply(t, n, ipt, dualStack)
	removeOther(t, n, ipt)
	if out := run(t, n, "nft", "list", "tables"); strings.Contains(out, "flannel") {
		t.Fatalf("tables after RemoveOther: %s", out)
	}
	if apply(t, n, ipt, dualStack) {
		t.Fatal("iptables RemoveOther touched iptables rules")
	}
	removeOther(t, n, ipt) // nothing left to remove: not an error
}

// TestTraffic sends UDP from a pod (client namespace) through a host
// namespace to a server outside the flannel Network and checks the source
// address the server sees: the host's with masquerade, the pod's without.
func TestTraffic(t *testing.T) {
	for _, kind := range []Kind{IPTables, NFTables} {
		t.Run(kind.String(), func(t *testing.T) {
			t.Parallel()
			client, host, server := netnstest.New(t, "fmq"), netnstest.New(t, "fmq"), netnstest.New(t, "fmq")
			ip := func(n *ns.NS, args ...string) { run(t, n, "ip", args...) }
			ip(host, "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", client.Name)
			ip(host, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", server.Name)
			ip(host, "addr", "add", "10.244.1.1/24", "dev", "pod0")
			ip(host, "addr", "add", "192.0.2.1/24", "dev", "ext0")
			ip(host, "link", "set", "pod0", "up")
			ip(host, "link", "set", "ext0", "up")
			ip(client, "addr", "add", "10.244.1.2/24", "dev", "eth0")
			ip(client, "link", "set", "eth0", "up")
			ip(client, "route", "add", "default", "via", "10.244.1.1")
			ip(server, "addr", "add", "192.0.2.2/24", "dev", "eth0")
			ip(server, "link", "set", "eth0", "up")
			// So that un-masqueraded replies find their way back too.
			ip(server, "route", "add", "10.244.0.0/16", "via", "192.0.2.1")
			run(t, host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
			if kind == IPTables {
				// Docker's FORWARD policy, the reason for the forward rules.
				run(t, host, "iptables", "-P", "FORWARD", "DROP")
			}
			srv := startEcho(t, server)

			m, _ := newTestManager(t, kind, iptVariant{})
			r := testRules
			apply(t, host, m, r)
			if got := sourceSeen(t, client, srv, 5*time.Second); got != "192.0.2.1" {
				t.Fatalf("with masquerade the server saw %q, want the host's 192.0.2.1", got)
			}
			r.Masq = false
			apply(t, host, m, r)
			if got := sourceSeen(t, client, srv, 5*time.Second); got != "10.244.1.2" {
				t.Fatalf("without masquerade the server saw %q, want the pod's 10.244.1.2", got)
			}
			if kind == IPTables {
				r.Forward = false
				apply(t, host, m, r)
				if got := sourceSeen(t, client, srv, 300*time.Millisecond); got != "" {
					t.Fatalf("FORWARD policy DROP and no forward rules, yet the server answered (saw %q)", got)
				}
			}
		})
	}
}

// startEcho runs a UDP server in n that answers each datagram with the
// source address it saw, until the test ends.
func startEcho(t *testing.T, n *ns.NS) netip.AddrPort {
	t.Helper()
	var conn *net.UDPConn
	if err := n.Do(func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		conn.Close()
		wg.Wait()
	})
	wg.Go(func() {
		buf := make([]byte, 64)
		for {
			_, peer, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDPAddrPort([]byte(peer.Addr().String()), peer)
		}
	})
	port := conn.LocalAddr().(*net.UDPAddr).Port
	return netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), uint16(port))
}

// sourceSeen sends one datagram from a fresh socket in n (a new flow, so
// NAT is decided anew) and returns what the server reports, or "" when no
// answer arrives within wait.
func sourceSeen(t *testing.T, n *ns.NS, srv netip.AddrPort, wait time.Duration) string {
	t.Helper()
	var got string
	if err := n.Do(func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(srv))
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("who am i")); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 64)
		k, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil
			}
			return err
		}
		got = string(buf[:k])
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func BenchmarkApplyNoOp(b *testing.B) {
	for _, kind := range []Kind{IPTables, NFTables} {
		b.Run(kind.String(), func(b *testing.B) {
			n := netnstest.New(b, "fmq")
			m, err := New(kind, nil)
			if err != nil {
				b.Fatal(err)
			}
			err = n.Do(func() error {
				if _, err := m.Apply(context.Background(), dualStack); err != nil {
					return err
				}
				for b.Loop() {
					if _, err := m.Apply(context.Background(), dualStack); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}

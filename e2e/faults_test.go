package e2e

// Fault tests (issue 4): each breaks one thing under a running overlay,
// with containers on different hosts pinging each other at 10/s across
// the fault, and checks what a user would see.

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lab"
)

// etcd is stopped for a minute: traffic is unaffected, flanneld neither
// exits nor spins, and once etcd is back a peer written to it is routed
// within 2 s.
func TestFaultEtcdDown(t *testing.T) {
	t.Parallel()
	const outage = 60 * time.Second
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			l := startLab(t, faultOpts(t, 2, backendConfig(b)))
			h1, h2 := l.Hosts[0], l.Hosts[1]
			pings := startPings(t, l, [2]*lab.Host{h1, h2})

			cpu0 := cpuOf(t, l.Hosts)
			if err := l.StopEtcd(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			down := time.Now()
			// The outage itself: flanneld must ride it out.
			for time.Since(down) < outage {
				time.Sleep(time.Second)
				for _, h := range l.Hosts {
					if !lab.Alive(h.FlanneldPID) {
						t.Fatalf("%s's flanneld exited %s into the etcd outage", h.Name, time.Since(down).Round(time.Second))
					}
				}
			}
			cpu1 := cpuOf(t, l.Hosts)
			for i, h := range l.Hosts {
				used := cpu1[i] - cpu0[i]
				t.Logf("%s: flanneld used %.2f s CPU during the %s outage", h.Name, used, outage)
				if used > 1.5 {
					t.Errorf("%s: flanneld used %.2f s CPU while etcd was down for %s; it should be idle", h.Name, used, outage)
				}
			}

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := l.StartEtcd(ctx); err != nil {
				t.Fatal(err)
			}
			back := time.Now()
			peer := newFakePeer(250)
			etcdPut(t, etcdClient(t, l), subnetKey(peer.Subnet), peer.value(b))
			took := whenEach(back, 3*time.Second, l.Hosts, func(h *lab.Host) bool {
				return entriesFor(h, peer.Subnet, peer.PublicIP).complete(b)
			})
			for i, h := range l.Hosts {
				t.Logf("%s: a peer written after etcd's return was routed %s after etcd answered again", h.Name, took[i])
				if took[i] < 0 || took[i] > 2*time.Second {
					t.Errorf("%s: a peer written once etcd was back was not routed within 2 s (took %s): %s",
						h.Name, took[i], entriesFor(h, peer.Subnet, peer.PublicIP))
				}
				if log := logOf(l, h); !strings.Contains(log, "etcd reachable again") {
					t.Errorf("%s: flanneld did not log that etcd is reachable again", h.Name)
				}
			}
			pings.stopNoLoss(t)
		})
	}
}

// cpuOf returns the CPU seconds each host's flanneld has used.
func cpuOf(t *testing.T, hosts []*lab.Host) []float64 {
	t.Helper()
	out := make([]float64, len(hosts))
	for i, h := range hosts {
		s, err := lab.CPUSeconds(h.FlanneldPID)
		if err != nil {
			t.Fatalf("%s: flanneld CPU time: %v", h.Name, err)
		}
		out[i] = s
	}
	return out
}

// flanneld is SIGKILLed and restarted, then stopped and replaced by a
// differently built binary (an upgrade with a compatible config): the
// host keeps its subnet, no ping is lost, and nothing is recreated: the
// device keeps its index and MAC, the rules their nftables handles, and
// their counters keep counting; no route, neighbour or FDB entry is
// deleted along the way.
func TestFaultRestartAndUpgrade(t *testing.T) {
	t.Parallel()
	next := upgradedFlanneld(t)
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			l := startLab(t, faultOpts(t, 2, backendConfig(b)))
			h1, h2 := l.Hosts[0], l.Hosts[1]
			subnet := h1.Subnet
			mon := startMonitor(t, h1.NS, "ip", "-o", "monitor", "link", "route", "neigh")
			fdbMon := startMonitor(t, h1.NS, "bridge", "monitor", "fdb")
			pings := startPings(t, l, [2]*lab.Host{h1, h2})
			dev0 := linkOf(h1.NS, "flannel.1")
			if b == "vxlan" && dev0.Index == 0 {
				t.Fatalf("h1 has no flannel.1")
			}
			// Let traffic cross the rules, so their counters have
			// something to keep.
			waitFor(t, 5*time.Second, "pings to cross h1's forward rules", func() bool { return sumPackets(rulesOf(t, h1)) > 10 })

			restart := func(how string, sig syscall.Signal, bin string) {
				t.Helper()
				rules0 := rulesOf(t, h1)
				stopFlanneld(t, l, h1, sig)
				// The host runs without flanneld for a second: the
				// kernel keeps forwarding.
				time.Sleep(time.Second)
				l.Flanneld = bin
				start := time.Now()
				restartAndWait(t, l, h1)
				t.Logf("%s: ready again %s after start", how, time.Since(start).Round(time.Millisecond))
				if err := l.WaitSubnet(context.Background(), h1, 5*time.Second); err != nil {
					t.Fatal(err)
				}
				if h1.Subnet != subnet {
					t.Errorf("%s: subnet changed %s → %s", how, subnet, h1.Subnet)
				}
				if dev := linkOf(h1.NS, "flannel.1"); dev != dev0 {
					t.Errorf("%s: flannel.1 changed from %+v to %+v: the device was recreated", how, dev0, dev)
				}
				// Traffic keeps crossing the rules: wait for the counters
				// to move past where they were, then compare.
				waitFor(t, 5*time.Second, "forward counters to grow", func() bool { return sumPackets(rulesOf(t, h1)) > sumPackets(rules0) })
				rules1 := rulesOf(t, h1)
				assertSameRules(t, how, rules0, rules1)
				// Traffic goes on after the restart, too.
				time.Sleep(time.Second)
			}
			restart("SIGKILL and restart", syscall.SIGKILL, l.Flanneld)
			restart("upgrade to "+nextVersion, syscall.SIGTERM, next)
			if !strings.Contains(logOf(l, h1), "version="+nextVersion) {
				t.Errorf("h1's flanneld log shows no start of version %s: the upgrade did not run", nextVersion)
			}

			pings.stopNoLoss(t)
			for _, line := range strings.Split(mon.stop()+fdbMon.stop(), "\n") {
				if strings.HasPrefix(line, "Deleted") && (strings.Contains(line, "flannel.1") || strings.Contains(line, "10.5.")) {
					t.Errorf("restarts deleted kernel state: %s", line)
				}
			}
		})
	}
}

// sumPackets is the packets counted by the forward rules.
func sumPackets(s rulesSnap) int64 {
	var n int64
	for r, p := range s.Packets {
		if strings.Contains(r, "-A FLANNEL-FWD") {
			n += p
		}
	}
	return n
}

func assertSameRules(t *testing.T, how string, before, after rulesSnap) {
	t.Helper()
	if len(before.Packets) == 0 {
		t.Fatalf("%s: no flannel rules in iptables-save before the restart", how)
	}
	for r, p := range before.Packets {
		q, ok := after.Packets[r]
		switch {
		case !ok:
			t.Errorf("%s: rule gone: %s", how, r)
		case q < p:
			t.Errorf("%s: counter of %s went from %d to %d: the rule was recreated", how, r, p, q)
		}
	}
	for r := range after.Packets {
		if _, ok := before.Packets[r]; !ok {
			t.Errorf("%s: rule added: %s", how, r)
		}
	}
	for r, h := range before.Handles {
		if after.Handles[r] != h {
			t.Errorf("%s: nftables rule %s: handle %s → %q", how, r, h, after.Handles[r])
		}
	}
	if len(after.Handles) != len(before.Handles) {
		t.Errorf("%s: %d nftables rules before, %d after", how, len(before.Handles), len(after.Handles))
	}
}

// A host vanishes (its flanneld is SIGKILLed and never comes back): once
// its 15 s lease expires in etcd, every other host drops its route,
// neighbour and FDB entries within a second, and traffic between the
// others goes on.
func TestFaultHostVanishes(t *testing.T) {
	t.Parallel()
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			l := startLab(t, faultOpts(t, 3, backendConfig(b), "--subnet-lease-ttl=15s"))
			h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
			others := []*lab.Host{h1, h2}
			for _, h := range others {
				if e := entriesFor(h, h3.Subnet, h3.Addr); !e.complete(b) {
					t.Fatalf("%s has no entries for h3 before the test: %s", h.Name, e)
				}
			}
			pings := startPings(t, l, [2]*lab.Host{h1, h2})
			cli := etcdClient(t, l)
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			wch := cli.Watch(ctx, subnetKey(h3.Subnet))

			stopFlanneld(t, l, h3, syscall.SIGKILL)
			killed := time.Now()
			var expired time.Time
			for resp := range wch {
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypeDelete {
						expired = time.Now()
					}
				}
				if !expired.IsZero() {
					break
				}
			}
			if expired.IsZero() {
				t.Fatalf("h3's lease did not expire within %s of the kill", time.Since(killed).Round(time.Second))
			}
			t.Logf("h3's lease expired %s after its flanneld was killed", expired.Sub(killed).Round(time.Millisecond))
			took := whenEach(expired, 3*time.Second, others, func(h *lab.Host) bool { return !entriesFor(h, h3.Subnet, h3.Addr).any() })
			for i, h := range others {
				t.Logf("%s: h3's entries removed %s after the lease expired", h.Name, took[i])
				if took[i] < 0 || took[i] > time.Second {
					t.Errorf("%s: h3's entries not removed within 1 s of its lease's expiry (took %s): %s",
						h.Name, took[i], entriesFor(h, h3.Subnet, h3.Addr))
				}
			}
			pings.stopNoLoss(t)
		})
	}
}

// While h1's flanneld is stopped, entries for a peer that no longer
// exists are added by hand, alongside entries flannel does not own, and a
// real peer (h3) disappears from etcd. Starting flanneld removes the
// stale entries and h3's, keeps the foreign ones, and never disturbs the
// live peer h2.
func TestFaultStaleStateAtStart(t *testing.T) {
	t.Parallel()
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			l := startLab(t, faultOpts(t, 3, backendConfig(b)))
			h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
			pings := startPings(t, l, [2]*lab.Host{h1, h2})
			stopFlanneld(t, l, h3, syscall.SIGKILL)
			stopFlanneld(t, l, h1, syscall.SIGTERM)
			// h1 runs without flanneld for a while; traffic must not
			// notice.
			time.Sleep(time.Second)

			gone := newFakePeer(250)
			var stale [][]string
			if b == "vxlan" {
				stale = [][]string{
					{"ip", "neigh", "replace", gone.Subnet.Addr().String(), "lladdr", gone.MAC, "dev", "flannel.1", "nud", "permanent"},
					{"bridge", "fdb", "append", gone.MAC, "dev", "flannel.1", "dst", gone.PublicIP.String(), "self", "permanent"},
					{"ip", "route", "replace", gone.Subnet.String(), "via", gone.Subnet.Addr().String(), "dev", "flannel.1", "onlink"},
				}
			} else {
				stale = [][]string{{"ip", "route", "replace", gone.Subnet.String(), "via", gone.PublicIP.String(), "dev", "eth0"}}
			}
			// Not flannel's: outside the Network; inside it but on
			// another device; inside it on eth0 without a gateway; a
			// permanent neighbour on eth0.
			foreign := [][]string{
				{"ip", "link", "add", "ffother", "type", "bridge"},
				{"ip", "link", "set", "ffother", "up"},
				{"ip", "route", "add", "172.30.9.0/24", "via", "192.168.100.251", "dev", "eth0"},
				{"ip", "route", "add", "10.5.251.0/24", "dev", "ffother"},
				{"ip", "route", "add", "10.5.252.0/24", "dev", "eth0"},
				{"ip", "neigh", "replace", "192.168.100.252", "lladdr", "0a:fe:00:00:01:fc", "dev", "eth0", "nud", "permanent"},
			}
			for _, c := range append(stale, foreign...) {
				nsRun(t, h1.NS, c...)
			}
			routesBefore := foreignRoutes(h1)
			if len(routesBefore) != 3 {
				t.Fatalf("foreign routes on h1 before the start: %q, want 3", routesBefore)
			}
			etcdDel(t, etcdClient(t, l), subnetKey(h3.Subnet))

			start := time.Now()
			restartAndWait(t, l, h1)
			took, ok := pollUntil(3*time.Second, func() bool {
				return !entriesFor(h1, gone.Subnet, gone.PublicIP).any() && !entriesFor(h1, h3.Subnet, h3.Addr).any()
			})
			t.Logf("stale entries gone %s after the start (%s after ready)", time.Since(start).Round(time.Millisecond), took.Round(time.Millisecond))
			if !ok {
				t.Errorf("stale entries still on h1 3 s after flanneld became ready: departed peer: %s; h3: %s",
					entriesFor(h1, gone.Subnet, gone.PublicIP), entriesFor(h1, h3.Subnet, h3.Addr))
			}
			if got := foreignRoutes(h1); !slices.Equal(got, routesBefore) {
				t.Errorf("foreign routes changed:\nbefore %q\nafter  %q", routesBefore, got)
			}
			if out := nsOutput(h1.NS, "ip", "neigh", "show", "dev", "eth0", "192.168.100.252"); !strings.Contains(out, "PERMANENT") {
				t.Errorf("foreign neighbour on eth0 removed: %q", out)
			}
			if e := entriesFor(h1, h2.Subnet, h2.Addr); !e.complete(b) {
				t.Errorf("h1 lost its entries for the live peer h2: %s", e)
			}
			if e := entriesFor(h2, h3.Subnet, h3.Addr); e.any() {
				t.Errorf("h2 still has entries for h3, whose lease was deleted: %s", e)
			}
			time.Sleep(time.Second) // and traffic goes on after the start
			pings.stopNoLoss(t)
		})
	}
}

// foreignRoutes lists h's routes that the test added and flannel does not
// own.
func foreignRoutes(h *lab.Host) []string {
	var out []string
	for _, line := range strings.Split(nsOutput(h.NS, "ip", "-4", "route", "show"), "\n") {
		for _, p := range []string{"172.30.9.0/24 ", "10.5.251.0/24 ", "10.5.252.0/24 "} {
			if strings.HasPrefix(line, p) {
				out = append(out, strings.TrimSpace(line))
			}
		}
	}
	return out
}

// h1's watch falls behind an etcd compaction: while h1 is cut off from
// etcd, the peers change, etcd is written many times and compacted to
// its latest revision. When h1 is reconnected its watch cannot resume: it
// re-lists once, ends up with exactly the peers in etcd, keeps following
// later changes, and logs no repeated errors.
func TestFaultWatchCompacted(t *testing.T) {
	t.Parallel()
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			l := startLab(t, faultOpts(t, 2, backendConfig(b)))
			h1, h2 := l.Hosts[0], l.Hosts[1]
			cli := etcdClient(t, l)
			pA, pB, pC := newFakePeer(250), newFakePeer(251), newFakePeer(252)
			etcdPut(t, cli, subnetKey(pB.Subnet), pB.value(b))
			waitFor(t, 5*time.Second, "h1 to route peer B", func() bool { return entriesFor(h1, pB.Subnet, pB.PublicIP).complete(b) })
			pings := startPings(t, l, [2]*lab.Host{h1, h2})
			logStart := len(logOf(l, h1))

			// Cut h1 off: restart etcd while h1 cannot reach it, so h1's
			// connection breaks now and cannot come back until unblocked.
			nsRun(t, h1.NS, "nft", "add table inet ffblock")
			nsRun(t, h1.NS, "nft", "add chain inet ffblock out { type filter hook output priority 0 ; }")
			nsRun(t, h1.NS, "nft", "add rule inet ffblock out tcp dport 2379 reject with tcp reset")
			if err := l.StopEtcd(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := l.StartEtcd(ctx); err != nil {
				t.Fatal(err)
			}
			// Peers change while h1 cannot see it, among many writes.
			etcdDel(t, cli, subnetKey(pB.Subnet))
			for i := range 300 {
				etcdPut(t, cli, etcdPrefix+"/ff-noise", strconv.Itoa(i))
			}
			rev := etcdPut(t, cli, subnetKey(pA.Subnet), pA.value(b)).Header.Revision
			if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
				t.Fatal(err)
			}
			nsRun(t, h1.NS, "nft", "delete table inet ffblock")
			unblocked := time.Now()

			took, ok := pollUntil(10*time.Second, func() bool {
				return entriesFor(h1, pA.Subnet, pA.PublicIP).complete(b) && !entriesFor(h1, pB.Subnet, pB.PublicIP).any()
			})
			t.Logf("h1 caught up %s after it could reach etcd again", took.Round(time.Millisecond))
			if !ok {
				t.Fatalf("h1 did not catch up with the peers changed while it was cut off: A %s; B %s",
					entriesFor(h1, pA.Subnet, pA.PublicIP), entriesFor(h1, pB.Subnet, pB.PublicIP))
			}
			// And it follows changes made after the re-list.
			etcdDel(t, cli, subnetKey(pA.Subnet))
			etcdPut(t, cli, subnetKey(pC.Subnet), pC.value(b))
			took, ok = pollUntil(2*time.Second, func() bool {
				return entriesFor(h1, pC.Subnet, pC.PublicIP).complete(b) && !entriesFor(h1, pA.Subnet, pA.PublicIP).any()
			})
			if !ok {
				t.Errorf("h1 did not follow a change after the re-list within 2 s: A %s; C %s",
					entriesFor(h1, pA.Subnet, pA.PublicIP), entriesFor(h1, pC.Subnet, pC.PublicIP))
			} else {
				t.Logf("a change after the re-list reached h1 in %s", took.Round(time.Millisecond))
			}
			assertRoutesMatchLeases(t, cli, b, h1)

			log := logSince(l, h1, logStart)
			if n := strings.Count(log, "re-listing"); n != 1 {
				t.Errorf("h1 logged %d re-listings, want exactly 1:\n%s", n, log)
			}
			for msg, n := range problems(log) {
				if n > 1 {
					t.Errorf("h1 logged %q %d times after the compaction fault", msg, n)
				}
			}
			t.Logf("h1's log from the fault on (%s after reconnecting):\n%s", time.Since(unblocked).Round(time.Millisecond), log)
			pings.stopNoLoss(t)
		})
	}
}

// assertRoutesMatchLeases checks that h routes exactly the overlay
// subnets leased in etcd, its own excepted.
func assertRoutesMatchLeases(t *testing.T, cli *clientv3.Client, b string, h *lab.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, etcdPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), etcdPrefix+"/subnets/")
		sn := strings.Replace(k, "-", "/", 1)
		if sn != h.Subnet.String() {
			want = append(want, sn)
		}
	}
	var got []string
	for _, line := range strings.Split(nsOutput(h.NS, "ip", "-4", "route", "show"), "\n") {
		f := strings.Fields(line)
		// "10.5.x.0/24 [nhid N] via …": IPv4 routes go through nexthop objects.
		if len(f) > 2 && strings.HasPrefix(f[0], "10.5.") && slices.Contains(f, "via") {
			got = append(got, f[0])
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("%s routes %q; etcd leases (other than its own) %q", h.Name, got, want)
	}
}

// Kernel state removed by hand is restored at once, on the kernel's delete
// notification (the 5 s periodic repair is only the fallback): a peer's
// route (and with vxlan its neighbour and FDB entries), and with vxlan the
// whole device. Pings lost meanwhile are counted; they
// flow again once repaired.
func TestFaultRemovedByHand(t *testing.T) {
	t.Parallel()
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			l := startLab(t, faultOpts(t, 3, backendConfig(b)))
			h1, peers := l.Hosts[0], l.Hosts[1:]
			dev0 := linkOf(h1.NS, "flannel.1")
			pings := startPings(t, l, [2]*lab.Host{h1, peers[0]})
			restored := func() bool {
				for _, p := range peers {
					if !entriesFor(h1, p.Subnet, p.Addr).complete(b) {
						return false
					}
				}
				return true
			}

			breakIt := map[string][][]string{}
			for _, p := range peers {
				breakIt["peer routes"] = append(breakIt["peer routes"], []string{"ip", "route", "del", p.Subnet.String()})
				if b == "vxlan" {
					breakIt["peer routes, neighbours and fdb"] = append(breakIt["peer routes, neighbours and fdb"],
						[]string{"ip", "route", "del", p.Subnet.String()},
						[]string{"ip", "neigh", "del", p.Subnet.Addr().String(), "dev", "flannel.1"},
						[]string{"bridge", "fdb", "del", entryMAC(entriesFor(h1, p.Subnet, p.Addr).FDB), "dev", "flannel.1", "dst", p.Addr.String(), "self"})
				}
			}
			if b == "vxlan" {
				breakIt["device flannel.1"] = [][]string{{"ip", "link", "del", "flannel.1"}}
			}
			for _, what := range slices.Sorted(maps.Keys(breakIt)) {
				for _, c := range breakIt[what] {
					nsRun(t, h1.NS, c...)
				}
				took, ok := pollUntil(8*time.Second, restored)
				t.Logf("%s: restored for all %d peers %s after removal", what, len(peers), took.Round(time.Millisecond))
				if !ok || took > 3*time.Second {
					for _, p := range peers {
						t.Errorf("%s removed by hand: not restored within 3 s: %s: %s", what, p.Name, entriesFor(h1, p.Subnet, p.Addr))
					}
				}
				if b == "vxlan" {
					if dev := linkOf(h1.NS, "flannel.1"); dev.MAC != dev0.MAC {
						t.Errorf("%s: flannel.1's MAC changed from %s to %s: peers' entries point at the old one", what, dev0.MAC, dev.MAC)
					}
				}
				for _, p := range [][2]*lab.Host{{h1, peers[0]}, {h1, peers[1]}, {peers[1], h1}} {
					got, out, err := l.Ping(context.Background(), p[0], p[1].Container, 3, 100*time.Millisecond)
					if err != nil || got != 3 {
						t.Errorf("%s: after the repair %s → %s answered %d/3: %v\n%s", what, p[0].Name, p[1].Name, got, err, out)
					}
				}
			}
			for i, r := range pings.stop() {
				t.Logf("ping %s → %s across the faults: %d of %d lost while broken", pings.ps[i].From, pings.ps[i].To, len(r.Lost), r.Sent)
			}
		})
	}
}

// entryMAC is the MAC an FDB line starts with.
func entryMAC(fdb string) string {
	f, _, _ := strings.Cut(fdb, " ")
	return f
}

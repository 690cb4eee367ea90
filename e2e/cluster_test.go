package e2e

import (
	"context"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
)

// A 3-member etcd cluster loses its leader: flanneld, given all three
// endpoints, carries on (no ping lost, a peer written after the kill is
// routed), and a host started during the election still gets a lease.
func TestFaultEtcdLeaderKilled(t *testing.T) {
	t.Parallel()
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("needs the etcd binary (Debian: apt-get install etcd-server)")
	}
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			t.Parallel()
			o := faultOpts(t, 3, backendConfig(b))
			o.EtcdCmd = nil
			o.EtcdMembers = 3
			o.EtcdMemberCmd = lab.SystemEtcdMember(etcdBin)
			o.NoFlanneld = true
			l := startLab(t, o)
			h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
			startHost(t, l, h1)
			startHost(t, l, h2)
			pings := startPings(t, l, [2]*lab.Host{h1, h2})
			cli := etcdClient(t, l)

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			leader, err := l.Leader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.StopMember(leader, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed := time.Now()
			// h3 starts while the survivors elect a new leader.
			if err := l.StartFlanneld(h3); err != nil {
				t.Fatal(err)
			}
			peer := newFakePeer(250)
			var written time.Time
			for {
				pctx, pcancel := context.WithTimeout(ctx, time.Second)
				_, err := cli.Put(pctx, subnetKey(peer.Subnet), peer.value(b))
				pcancel()
				if err == nil {
					written = time.Now()
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("no write succeeded after the leader %s was killed: %v", leader.Name, err)
				}
			}
			nl, err := l.Leader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("killed leader %s; %s leads, a write succeeded %s after the kill", leader.Name, nl.Name, written.Sub(killed).Round(time.Millisecond))

			took := whenEach(written, 10*time.Second, []*lab.Host{h1, h2}, func(h *lab.Host) bool {
				return entriesFor(h, peer.Subnet, peer.PublicIP).complete(b)
			})
			for i, h := range []*lab.Host{h1, h2} {
				t.Logf("%s: routed the peer written after the kill %s after the write", h.Name, took[i])
				if took[i] < 0 || took[i] > 5*time.Second {
					t.Errorf("%s: the peer written after the leader was killed was not routed within 5 s: %s", h.Name, entriesFor(h, peer.Subnet, peer.PublicIP))
				}
			}
			if err := l.WaitSubnet(ctx, h3, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			t.Logf("h3, started during the election, wrote subnet.env %s after the kill", time.Since(killed).Round(time.Millisecond))
			if err := l.SetupContainer(h3); err != nil {
				t.Fatal(err)
			}
			for _, h := range []*lab.Host{h1, h2} {
				waitFor(t, 5*time.Second, h.Name+" to route h3", func() bool { return entriesFor(h, h3.Subnet, h3.Addr).complete(b) })
				if got, out, _ := l.Ping(ctx, h3, h.Container, 3, 100*time.Millisecond); got != 3 {
					t.Errorf("c3 → %s: %d/3 answered\n%s", h.Container, got, out)
				}
			}
			for _, h := range l.Hosts {
				if !lab.Alive(h.FlanneldPID) {
					t.Errorf("%s's flanneld exited", h.Name)
				}
			}
			pings.stopNoLoss(t)
		})
	}
}

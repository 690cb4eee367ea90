package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lab"
)

// 32 flanneld processes start at once on a Network with exactly 32 free
// subnets: each gets its own and none exits. A 33rd says clearly that no
// subnet is free and waits, alive, until one frees up, then takes it.
// Allocation does not depend on the datapath, so the alloc backend runs
// it (no devices to create for 33 hosts).
func TestFaultAllocationRace(t *testing.T) {
	t.Parallel()
	// 10.7.0.0/20 holds 64 /26s; SubnetMin..SubnetMax spans 32 of them.
	const config = `{"Network":"10.7.0.0/20","SubnetLen":26,"SubnetMin":"10.7.0.64","SubnetMax":"10.7.8.0","Backend":{"Type":"alloc"}}`
	var want []netip.Prefix
	for i := range 32 {
		off := 64 + 64*i
		want = append(want, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 7, byte(off / 256), byte(off % 256)}), 26))
	}
	o := faultOpts(t, 33, config, "-ip-masq=false", "-iptables-forward-rules=false")
	o.NoFlanneld = true
	l := startLab(t, o)
	racers, last := l.Hosts[:32], l.Hosts[32]

	start := time.Now()
	for _, h := range racers {
		if err := l.StartFlanneld(h); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("32 flanneld started within %s", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var got []netip.Prefix
	for _, h := range racers {
		if err := l.WaitSubnet(ctx, h, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		got = append(got, h.Subnet)
	}
	t.Logf("all 32 leased a subnet %s after the first start", time.Since(start).Round(time.Millisecond))
	slices.SortFunc(got, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if !slices.Equal(got, want) {
		t.Errorf("subnets leased:\n%v\nwant each of the 32 once:\n%v", got, want)
	}
	cli := etcdClient(t, l)
	if n := countKeys(t, cli, etcdPrefix+"/subnets/"); n != 32 {
		t.Errorf("%d subnet keys in etcd, want 32", n)
	}
	for _, h := range racers {
		if !lab.Alive(h.FlanneldPID) {
			t.Errorf("%s's flanneld exited:\n%s", h.Name, logOf(l, h))
		}
	}

	if err := l.StartFlanneld(last); err != nil {
		t.Fatal(err)
	}
	full := "no free subnet"
	waitFor(t, 10*time.Second, "h33 to report that no subnet is free", func() bool { return strings.Contains(logOf(l, last), full) })
	// It waits rather than exits, and says so once, however long the
	// wait (long enough here for retries to have backed off).
	time.Sleep(8 * time.Second)
	if !lab.Alive(last.FlanneldPID) {
		t.Fatalf("h33's flanneld exited on a full network:\n%s", logOf(l, last))
	}
	if n := strings.Count(logOf(l, last), full); n != 1 {
		t.Errorf("h33 reported the full network %d times, want once:\n%s", n, logOf(l, last))
	}
	t.Logf("h33: %s", firstLine(logOf(l, last), full))

	// A host leaves for good and its lease is deleted: h33 takes the
	// subnet.
	gone := racers[4]
	stopFlanneld(t, l, gone, syscall.SIGTERM)
	etcdDel(t, cli, subnetKey(gone.Subnet))
	freed := time.Now()
	if err := l.WaitSubnet(ctx, last, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	took := time.Since(freed)
	t.Logf("h33 leased %s %s after it was freed", last.Subnet, took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("h33 took %s to lease the freed subnet; a waiting host should take it at once (within 2 s)", took.Round(time.Millisecond))
	}
	if last.Subnet != gone.Subnet {
		t.Errorf("h33 leased %s; the only free subnet is %s", last.Subnet, gone.Subnet)
	}
}

func countKeys(t *testing.T, cli *clientv3.Client, p string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return r.Count
}

func firstLine(log, sub string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return fmt.Sprintf("(no line with %q)", sub)
}

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
)

// Each flanneld holds exactly one watch on etcd, the subnets prefix: its
// lease renewal, its wait for a free subnet and its peer updates all read
// that one feed. Counted by etcd itself (its watcher gauge), so a second
// watch anywhere in flanneld, or one left behind by a restart, shows.
func TestOneWatchPerFlanneld(t *testing.T) {
	l := startLab(t, labOpts(t, 2, backendConfig("host-gw")))
	watchers := func() int {
		n, err := etcdGauge(l, "etcd_debugging_mvcc_watcher_total")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	expect := func(want int, what string) {
		t.Helper()
		if _, ok := pollUntil(10*time.Second, func() bool { return watchers() == want }); !ok {
			t.Fatalf("%s: etcd counts %d watchers, want %d", what, watchers(), want)
		}
		// and it stays there: nothing opens a second one a moment later.
		time.Sleep(500 * time.Millisecond)
		if n := watchers(); n != want {
			t.Fatalf("%s: etcd counts %d watchers a moment later, want %d", what, n, want)
		}
	}
	expect(2, "two flanneld running")
	stopFlanneld(t, l, l.Hosts[1], syscall.SIGTERM)
	expect(1, "one flanneld stopped")
	restartAndWait(t, l, l.Hosts[1])
	expect(2, "it started again")
	stopFlanneld(t, l, l.Hosts[0], syscall.SIGKILL)
	restartAndWait(t, l, l.Hosts[0])
	expect(2, "the other killed and started again")
}

// etcdGauge reads one unlabelled metric from the lab's etcd.
func etcdGauge(l *lab.Lab, name string) (int, error) {
	from := l.EtcdNS
	if from == "" {
		from = l.Hosts[0].NS
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return lab.DialerIn(from)(ctx, addr) },
	}}
	resp, err := client.Get(l.EtcdEndpoints[0] + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("etcd metrics have no %s", name)
}

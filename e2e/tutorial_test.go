package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/ns"
)

// The tutorials' commands, replayed as written against our flanneld, with
// the config in etcd's v2 keyspace (etcdctl set, curl to /v2/keys) and in
// the v3 one (etcdctl put).
func TestTutorialReplay(t *testing.T) {
	for _, tool := range []string{"etcd", "etcdctl", "curl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/setup.sh --test installs it)", tool)
		}
	}
	cases := []struct {
		name      string
		api       string // the keyspace the tutorial writes to
		putConfig func(t *testing.T, h *ns.NS, url, dir string)
	}{
		{"v2 etcdctl set", "v2", func(t *testing.T, h *ns.NS, url, _ string) {
			runIn(t, h, []string{"ETCDCTL_API=2"}, "etcdctl", "--endpoints", url, "set", "/coreos.com/network/config",
				`{"Network":"10.0.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}`)
		}},
		{"v2 curl", "v2", func(t *testing.T, h *ns.NS, url, dir string) {
			f := filepath.Join(dir, "flannel-config.json")
			if err := os.WriteFile(f, []byte(`{"Network":"10.0.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}`), 0o644); err != nil {
				t.Fatal(err)
			}
			runIn(t, h, nil, "curl", "-sSfL", url+"/v2/keys/coreos.com/network/config", "-XPUT", "--data-urlencode", "value@"+f)
		}},
		{"v3 etcdctl put", "v3", func(t *testing.T, h *ns.NS, url, _ string) {
			runIn(t, h, []string{"ETCDCTL_API=3"}, "etcdctl", "--endpoints", url, "put", "/coreos.com/network/config",
				`{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}`)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			replay(t, c.api, c.putConfig)
		})
	}
}

func replay(t *testing.T, api string, putConfig func(t *testing.T, h *ns.NS, url, dir string)) {
	o := labOpts(t, 2, backendConfig("vxlan"))
	o.EtcdCmd = func(listen, dataDir string) []string {
		return []string{"etcd", "--name", "lab", "--data-dir", dataDir,
			"--listen-client-urls", listen, "--advertise-client-urls", listen,
			"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
			"--initial-cluster", "lab=http://127.0.0.1:2380", "--enable-v2"}
	}
	l := startLab(t, o)
	ctx := context.Background()
	url := l.EtcdEndpoints[0]
	dir := t.TempDir()

	// Start from a clean cluster, as the tutorial does: no flanneld, no
	// keys, no subnet.env.
	for _, h := range l.Hosts {
		if err := l.StopFlanneld(h, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		_ = os.Remove(l.SubnetFile(h))
	}
	cli, err := l.Etcd()
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = cli.Delete(dctx, "/coreos.com/network/", clientv3WithPrefix())
	cancel()
	cli.Close()
	if err != nil {
		t.Fatal(err)
	}

	h1, _ := ns.Open(l.Hosts[0].NS)
	putConfig(t, h1, url, dir)

	// /etc/sysconfig/flanneld as the tutorial writes it, and the unit's
	// ExecStart line expanded by a shell as systemd would.
	procs := map[*lab.Host]*os.Process{}
	t.Cleanup(func() {
		for _, p := range procs {
			// Signal (a pidfd underneath), not kill(2) by number: once
			// Wait has reaped it, its PID may be someone else's.
			_ = p.Signal(syscall.SIGTERM)
		}
	})
	for _, h := range l.Hosts {
		sysconfig := filepath.Join(dir, h.Name+".sysconfig")
		body := fmt.Sprintf("FLANNEL_ETCD=%q\nFLANNEL_ETCD_KEY=\"/coreos.com/network\"\nFLANNEL_OPTIONS=\"-iface=eth0 --ip-masq=true -subnet-file=%s\"\n",
			url, l.SubnetFile(h))
		if err := os.WriteFile(sysconfig, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		script := fmt.Sprintf(`. %s; exec %s -etcd-endpoints=${FLANNEL_ETCD} -etcd-prefix=${FLANNEL_ETCD_KEY} $FLANNEL_OPTIONS`,
			sysconfig, l.Flanneld)
		cmd := exec.Command("ip", "netns", "exec", h.NS, "sh", "-c", script)
		logf, err := os.Create(l.LogFile(h))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		logf.Close()
		procs[h] = cmd.Process
		go func() { _ = cmd.Wait() }()
	}
	for _, h := range l.Hosts {
		if err := l.WaitSubnet(ctx, h, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(l.LogFile(h))
		if !strings.Contains(string(b), "using the etcd "+api+" API") {
			t.Errorf("%s: flanneld did not say it uses the %s keyspace:\n%s", h.Name, api, b)
		}
	}

	// The subnets listing: one node per host.
	if api == "v2" {
		out := runIn(t, h1, nil, "sh", "-c", "curl -sSfL "+url+"/v2/keys/coreos.com/network/subnets | python3 -mjson.tool")
		var resp struct {
			Node struct {
				Nodes []struct {
					Key   string `json:"key"`
					Value string `json:"value"`
					TTL   int    `json:"ttl"`
				} `json:"nodes"`
			} `json:"node"`
		}
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("subnets listing is not JSON: %v\n%s", err, out)
		}
		if len(resp.Node.Nodes) != len(l.Hosts) {
			t.Errorf("the /v2/keys subnets listing has %d nodes, want one per host (%d):\n%s", len(resp.Node.Nodes), len(l.Hosts), out)
		}
		for _, n := range resp.Node.Nodes {
			if !regexp.MustCompile(`^/coreos\.com/network/subnets/10\.0\.\d+\.0-24$`).MatchString(n.Key) || n.TTL <= 0 ||
				!strings.HasPrefix(n.Value, `{"PublicIP":"192.168.100.`) {
				t.Errorf("subnet node %+v lacks upstream's key, value or TTL", n)
			}
		}
	} else {
		out := runIn(t, h1, []string{"ETCDCTL_API=3"}, "etcdctl", "--endpoints", url, "get", "--prefix", "--keys-only", "/coreos.com/network/subnets")
		if n := len(strings.Fields(out)); n != len(l.Hosts) {
			t.Errorf("etcdctl get --prefix lists %d subnet keys, want %d:\n%s", n, len(l.Hosts), out)
		}
	}

	// subnet.env lines and mk-docker-opts.sh's DOCKER_OPTS.
	script, _ := filepath.Abs("../dist/mk-docker-opts.sh")
	for _, h := range l.Hosts {
		b, _ := os.ReadFile(l.SubnetFile(h))
		want := fmt.Sprintf("FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", h.Subnet.Addr().Next())
		if string(b) != want {
			t.Errorf("%s subnet.env:\n%s\nwant:\n%s", h.Name, b, want)
		}
		opts := filepath.Join(dir, h.Name+".docker_opts.env")
		hn, _ := ns.Open(h.NS)
		runIn(t, hn, nil, script, "-c", "-f", l.SubnetFile(h), "-d", opts)
		got, _ := os.ReadFile(opts)
		if w := fmt.Sprintf("DOCKER_OPTS=\" --bip=%s/24 --ip-masq=false --mtu=1450\"\n", h.Subnet.Addr().Next()); string(got) != w {
			t.Errorf("%s: mk-docker-opts.sh -c wrote %q, want %q", h.Name, got, w)
		}
		// dockerd --bip=${FLANNEL_SUBNET} --mtu=${FLANNEL_MTU}: the lab's
		// container set-up does what those flags do.
		if err := l.SetupContainer(h); err != nil {
			t.Fatal(err)
		}
	}
	assertAllPairsPing(t, l)
}

func runIn(t *testing.T, n *ns.NS, env []string, name string, args ...string) string {
	t.Helper()
	cmd := n.Command(context.Background(), name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func clientv3WithPrefix() clientv3.OpOption { return clientv3.WithPrefix() }

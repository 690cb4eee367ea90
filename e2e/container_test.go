package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flannel-go/flannel/internal/kubetest"
	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lab/kubeapi"
	"github.com/flannel-go/flannel/internal/lab/labdocker"
	"github.com/flannel-go/flannel/internal/ns"
)

// containerImage is the tag the image gets in each host's engine.
const containerImage = "flannel-go/flannel:e2e"

// shippedManifest parses dist/kube-flannel.yml.
func shippedManifest(t *testing.T) *dsManifest {
	t.Helper()
	b, err := os.ReadFile("../dist/kube-flannel.yml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseDSManifest(b)
	if err != nil {
		t.Fatalf("dist/kube-flannel.yml: %v", err)
	}
	return m
}

// TestContainerDaemonSet runs the image in a real Docker engine in each
// lab host as the kubelet would run dist/kube-flannel.yml's DaemonSet:
// the docker run options, environment and command line are derived from
// the file (translateDS; a field it does not know fails the test), in
// Kubernetes mode against a real API server holding the applied
// manifest, with the ConfigMap's net-conf.json (its backend set per
// subtest) and the ServiceAccount's token as the kubelet mounts them;
// the manifest's liveness and readiness probes must answer. Every
// backend, 2 nodes, pings across, and a restart of the container keeps
// traffic. The image has no iptables: net-conf.json says
// "EnableNFTables": true, as the manifest ships it.
func TestContainerDaemonSet(t *testing.T) {
	if err := labdocker.Check(); err != nil {
		t.Skip(err)
	}
	apiBin := kubetest.Require(t)
	m := shippedManifest(t)
	// Before any lab starts: a field the translation does not know.
	if u := dsUnknownFields("", m.raw); len(u) > 0 {
		t.Fatalf("dist/kube-flannel.yml: DaemonSet fields the test does not translate: %s", strings.Join(u, ", "))
	}
	bin := imageBinaries(t)
	for _, b := range []string{"vxlan", "host-gw", "udp", "wireguard", "alloc", "iptables-mode", "udp-without-tun"} {
		t.Run(b, func(t *testing.T) {
			backend, nft, pod := b, true, m
			switch b {
			case "iptables-mode":
				// Without EnableNFTables, in an image without iptables:
				// flanneld must say what to do.
				backend, nft = "vxlan", false
			case "udp-without-tun":
				backend, pod = "udp", m.withoutMount("/dev/net/tun")
			}
			// The lab's etcd config goes unused: flanneld runs in
			// Kubernetes mode, with the ConfigMap's net-conf.json.
			o := labOpts(t, 2, backendConfig(backend))
			o.ID = ns.Unique("fk")
			o.NoFlanneld = true
			l := startLab(t, o)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			api, client := startManifestAPI(t, l, apiBin)

			engines := make([]*labdocker.Docker, len(l.Hosts))
			var wg sync.WaitGroup
			errs := make([]error, len(l.Hosts))
			for i, h := range l.Hosts {
				wg.Go(func() { engines[i], errs[i] = startImageEngine(ctx, l, h, bin) })
			}
			wg.Wait()
			for i, d := range engines {
				if d != nil {
					t.Cleanup(func() {
						if t.Failed() {
							out, _ := d.Run(context.Background(), "logs", "flanneld")
							t.Logf("--- %s flanneld container log:\n%s", d.Host.Name, out)
						}
						if err := d.Stop(); err != nil {
							t.Errorf("stop docker on %s: %v", d.Host.Name, err)
						}
					})
				}
				if errs[i] != nil {
					t.Fatal(errs[i])
				}
			}

			node := podNodeFiles(t, ctx, l, pod, api, client, backend, nft)
			var runs []*dsRun
			for i, h := range l.Hosts {
				kubetest.CreateNode(t, client, h.Name, fmt.Sprintf("10.244.%d.0/24", 10+i))
				n := node
				n.Name, n.Addr = h.Name, h.Addr
				n.HostPath = func(p string) string {
					if p == "/run/flannel" { // each lab host has its own
						return filepath.Join(l.Dir, h.Name)
					}
					return p
				}
				run, err := translateDS(pod, n)
				if err != nil {
					t.Fatalf("dist/kube-flannel.yml: %v", err)
				}
				if err := run.prepareHostPaths(); err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					t.Logf("docker %s", strings.Join(run.dockerRun("flanneld", containerImage), " "))
				}
				if _, err := engines[i].Run(ctx, run.dockerRun("flanneld", containerImage)...); err != nil {
					t.Fatal(err)
				}
				runs = append(runs, run)
			}
			if want, ok := map[string]string{
				"iptables-mode":   "iptables mode needs iptables-restore (or set EnableNFTables in the network config)",
				"udp-without-tun": "udp backend needs /dev/net/tun",
			}[b]; ok {
				waitFor(t, 20*time.Second, "flanneld to say what it lacks: "+want, func() bool {
					out, _ := engines[0].Run(ctx, "logs", "flanneld")
					return strings.Contains(out, want)
				})
				return
			}
			for i, h := range l.Hosts {
				if err := l.WaitSubnet(ctx, h, 30*time.Second); err != nil {
					out, _ := engines[i].Run(context.Background(), "logs", "flanneld")
					t.Fatalf("%v\ncontainer log:\n%s", err, out)
				}
				if err := l.SetupContainer(h); err != nil {
					t.Fatal(err)
				}
				// The kubelet's probes, as the manifest points them.
				for kind, u := range runs[i].Probes {
					waitFor(t, 10*time.Second, h.Name+"'s "+kind+" probe "+u+" to answer 200", func() bool {
						return httpStatusIn(ctx, h.NS, u) == http.StatusOK
					})
				}
			}
			for i, d := range engines {
				out, err := d.Run(ctx, "inspect", "--format", "{{.HostConfig.Privileged}} {{.HostConfig.CapAdd}} {{.HostConfig.CapDrop}} {{.State.Running}}", "flanneld")
				want := fmt.Sprintf("%t %v %v true", runs[i].Privileged, runs[i].CapAdd, runs[i].CapDrop)
				// Docker spells the capabilities with or without CAP_.
				if err != nil || strings.ReplaceAll(strings.TrimSpace(out), "CAP_", "") != want {
					t.Errorf("%s: container not as the DaemonSet runs it: %s %v, want %s", d.Host.Name, out, err, want)
				}
				out, err = d.Run(ctx, "inspect", "--format", "{{.State.Pid}}", "flanneld")
				if pid, perr := strconv.Atoi(strings.TrimSpace(out)); err == nil && perr == nil {
					assertPodConfined(t, d.Host.Name, pid, runs[i])
				} else {
					t.Errorf("%s: flanneld's pid: %q %v %v", d.Host.Name, out, err, perr)
				}
				logs, _ := d.Run(ctx, "logs", "flanneld")
				if m := refusals.FindString(logs); m != "" {
					t.Errorf("%s: the container's log shows a refusal (%q):\n%s", d.Host.Name, m, logs)
				}
			}
			for i, h := range l.Hosts {
				if want := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", 10+i)); h.Subnet != want {
					t.Errorf("%s: subnet.env has %s, want the node's podCIDR %s", h.Name, h.Subnet, want)
				}
			}
			if b == "alloc" {
				return
			}
			// Up to here each host has its lease, not yet every peer's.
			waitFor(t, 10*time.Second, "a first ping across", func() bool {
				got, _, _ := l.Ping(ctx, l.Hosts[0], l.Hosts[1].Container, 1, 200*time.Millisecond)
				return got == 1
			})
			assertAllPairsPing(t, l)

			// A restarted pod keeps traffic: without a lost ping for the
			// kernel datapaths, back right after for udp and for
			// wireguard (in flanneld where the kernel has no module),
			// whose TUN dies with the process.
			var pings *pingSet
			if b != "udp" && b != "wireguard" {
				pings = startPings(t, l, [2]*lab.Host{l.Hosts[0], l.Hosts[1]})
			}
			if _, err := engines[0].Run(ctx, "restart", "flanneld"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 20*time.Second, "the restarted container to be ready", func() bool {
				out, _ := engines[0].Run(ctx, "logs", "flanneld")
				return strings.Count(out, "msg=ready") >= 2
			})
			if pings != nil {
				time.Sleep(time.Second) // pings run after the restart too: the scenario, not synchronisation
				pings.stopNoLoss(t)
			}
			waitFor(t, 10*time.Second, "pings across after the restart", func() bool {
				got, _, _ := l.Ping(ctx, l.Hosts[0], l.Hosts[1].Container, 1, 200*time.Millisecond)
				return got == 1
			})
			assertAllPairsPing(t, l)
		})
	}
}

// startManifestAPI runs a kube-apiserver beside the lab's etcd (in its
// namespace, reachable from every host) and applies dist/kube-flannel.yml
// to it, as an admin would; it returns the server and an admin client.
func startManifestAPI(t *testing.T, l *lab.Lab, apiBin string) (*kubeapi.Server, kubernetes.Interface) {
	t.Helper()
	from := l.EtcdNS
	if from == "" {
		from = l.Hosts[0].NS
	}
	host, _, err := net.SplitHostPort(strings.TrimPrefix(l.EtcdEndpoints[0], "http://"))
	if err != nil {
		t.Fatal(err)
	}
	dial := lab.DialerIn(from)
	api := kubetest.Start(t, kubeapi.Options{
		Binary:  apiBin,
		Etcd:    l.EtcdEndpoints,
		Address: netip.MustParseAddr(host),
		Wrap:    []string{"ip", "netns", "exec", from},
		Dial:    func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
	})
	manifest, err := filepath.Abs("../dist/kube-flannel.yml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", from,
		"kubectl", "--kubeconfig", api.Kubeconfig, "apply", "--server-side", "-f", manifest).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply -f dist/kube-flannel.yml: %v\n%s", err, out)
	}
	return api, kubetest.Client(t, api)
}

// podNodeFiles writes what the kubelet would give the pod on any node:
// the ConfigMaps as directories (net-conf.json with backend, and without
// EnableNFTables unless nft) and the service account volume with a token
// the API server issues for the DaemonSet's ServiceAccount.
func podNodeFiles(t *testing.T, ctx context.Context, l *lab.Lab, m *dsManifest, api *kubeapi.Server, client kubernetes.Interface, backend string, nft bool) dsNode {
	t.Helper()
	u, err := url.Parse(api.URL)
	if err != nil {
		t.Fatal(err)
	}
	apiAddr, err := netip.ParseAddrPort(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	n := dsNode{APIServer: apiAddr, ConfigMaps: map[string]string{}, ServiceAccountDir: filepath.Join(l.Dir, "serviceaccount")}
	for name, cm := range m.ConfigMaps {
		dir := filepath.Join(l.Dir, "configmap-"+name)
		err := writeConfigMapDir(dir, cm, func(key, value string) (string, error) {
			if key != "net-conf.json" {
				return value, nil
			}
			return netConfWithBackend(value, backend, nft)
		})
		if err != nil {
			t.Fatal(err)
		}
		n.ConfigMaps[name] = dir
	}
	ds := m.DaemonSet
	tr, err := client.CoreV1().ServiceAccounts(ds.Namespace).CreateToken(ctx, ds.Spec.Template.Spec.ServiceAccountName,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", ds.Namespace, ds.Spec.Template.Spec.ServiceAccountName, err)
	}
	cfg, err := api.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(n.ServiceAccountDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"token": []byte(tr.Status.Token), "ca.crt": cfg.CAData, "namespace": []byte(ds.Namespace)} {
		if err := os.WriteFile(filepath.Join(n.ServiceAccountDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// startImageEngine starts a Docker engine in h as a container runtime
// only and builds the image in it with dist/build-image.sh.
func startImageEngine(ctx context.Context, l *lab.Lab, h *lab.Host, bin string) (*labdocker.Docker, error) {
	d, err := labdocker.Start(ctx, l, h, labdocker.Options{Runtime: true})
	if err != nil {
		if errors.Is(err, labdocker.ErrNoDocker) {
			return nil, err
		}
		return nil, fmt.Errorf("docker on %s: %w", h.Name, err)
	}
	build := exec.CommandContext(ctx, "../dist/build-image.sh", bin, containerImage)
	build.Env = append(os.Environ(), "DOCKER_HOST=unix://"+d.Socket, "DOCKER_CONFIG="+filepath.Join(d.Dir, "cli"))
	if out, err := build.CombinedOutput(); err != nil {
		return d, fmt.Errorf("build-image.sh on %s: %w\n%s", h.Name, err, out)
	}
	return d, nil
}

// imageBinaries builds what the image holds, static, into a test dir.
func imageBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, c := range []string{"flanneld", "flannelctl"} {
		if err := copyFile(filepath.Join(binDir, c), filepath.Join(dir, c)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []string{"flannel", "install-cni"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../cmd/"+c)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", c, err, out)
		}
	}
	return dir
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// ensureFile creates path empty if it does not exist, as the DaemonSet's
// hostPath volume of type FileOrCreate does for the xtables lock.
func ensureFile(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// httpStatusIn GETs url from inside the network namespace nsName, as the
// kubelet probes a hostNetwork pod, and returns the status (0: no answer).
func httpStatusIn(ctx context.Context, nsName, url string) int {
	dial := lab.DialerIn(nsName)
	c := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) }},
	}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

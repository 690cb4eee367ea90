package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lab/labdocker"
	"github.com/flannel-go/flannel/internal/ns"
)

// containerImage is the tag the image gets in each host's engine.
const containerImage = "flannel-go/flannel:e2e"

// daemonSetArgs are `docker run` options equivalent to upstream's
// DaemonSet (kube-flannel.yml) for the flanneld container: hostNetwork,
// capabilities NET_ADMIN and NET_RAW only, not privileged, /run/flannel
// and the xtables lock from the host; /dev/net/tun as a device for the
// udp backend (a Kubernetes pod gets it from a hostPath CharDevice
// volume, or the device plugin of its runtime).
func daemonSetArgs(subnetDir string) []string {
	return []string{
		"--network", "host",
		"--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
		"-v", subnetDir + ":/run/flannel",
		"-v", "/run/xtables.lock:/run/xtables.lock",
		"--device", "/dev/net/tun",
	}
}

// TestContainerDaemonSet runs the image in a real Docker engine in each
// lab host, with the DaemonSet's securityContext (docker run options
// above), in etcd mode, every backend, 2 hosts, pings across, and a
// restart of the container keeps traffic. The image
// has no iptables: the config says "EnableNFTables": true, as
// dist/README.md tells DaemonSet users.
func TestContainerDaemonSet(t *testing.T) {
	if err := labdocker.Check(); err != nil {
		t.Skip(err)
	}
	bin := imageBinaries(t)
	if err := ensureFile("/run/xtables.lock"); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"vxlan", "host-gw", "udp", "alloc", "iptables-mode", "udp-without-tun"} {
		t.Run(b, func(t *testing.T) {
			config := fmt.Sprintf(`{"Network":"10.5.0.0/16","EnableNFTables":true,"Backend":{"Type":%q}}`, b)
			if b == "iptables-mode" {
				// Without EnableNFTables, in an image without iptables:
				// flanneld must say what to do.
				config = backendConfig("vxlan")
			}
			if b == "udp-without-tun" {
				config = `{"Network":"10.5.0.0/16","EnableNFTables":true,"Backend":{"Type":"udp"}}`
			}
			o := labOpts(t, 2, config)
			o.ID = ns.Unique("fk")
			o.NoFlanneld = true
			l := startLab(t, o)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
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
			for i, h := range l.Hosts {
				args := append([]string{"run", "-d", "--name", "flanneld"}, daemonSetArgs(filepath.Join(l.Dir, h.Name))...)
				if b == "udp-without-tun" {
					args = slices.DeleteFunc(args, func(a string) bool { return a == "--device" || a == "/dev/net/tun" })
				}
				args = append(args, containerImage,
					"-etcd-endpoints="+strings.Join(l.EtcdEndpoints, ","), "-etcd-prefix="+l.Prefix,
					"-subnet-file=/run/flannel/subnet.env", "-ip-masq")
				if _, err := engines[i].Run(ctx, args...); err != nil {
					t.Fatal(err)
				}
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
			}
			for _, d := range engines {
				out, err := d.Run(ctx, "inspect", "--format", "{{.HostConfig.Privileged}} {{.HostConfig.CapAdd}} {{.HostConfig.CapDrop}} {{.State.Running}}", "flanneld")
				// Docker spells the capabilities with or without CAP_.
				if err != nil || strings.ReplaceAll(strings.TrimSpace(out), "CAP_", "") != "false [NET_ADMIN NET_RAW] [ALL] true" {
					t.Errorf("%s: container not as the DaemonSet runs it: %s %v", d.Host.Name, out, err)
				}
				out, err = d.Run(ctx, "inspect", "--format", "{{.State.Pid}}", "flanneld")
				if pid, perr := strconv.Atoi(strings.TrimSpace(out)); err == nil && perr == nil {
					assertProcConfined(t, d.Host.Name, pid, false)
				} else {
					t.Errorf("%s: flanneld's pid: %q %v %v", d.Host.Name, out, err, perr)
				}
				logs, _ := d.Run(ctx, "logs", "flanneld")
				if m := refusals.FindString(logs); m != "" {
					t.Errorf("%s: the container's log shows a refusal (%q):\n%s", d.Host.Name, m, logs)
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
			// kernel datapaths, back right after for udp.
			var pings *pingSet
			if b != "udp" {
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

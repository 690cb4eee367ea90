package dist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestImage builds the image with a real Docker engine, as `make image`
// does, and runs it: each binary prints the version it was built with
// (so each starts in a scratch image: static), and install-cni, run as
// the DaemonSet's init container would, puts the plugin and the conflist
// into the "host" directories mounted into it.
func TestImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a private Docker engine)")
	}
	for _, b := range []string{"dockerd", "docker"} {
		if _, err := exec.LookPath(b); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s missing in CI: scripts/setup.sh --test installs docker.io", b)
			}
			t.Skipf("needs %s (Debian's docker.io; scripts/setup.sh --test installs it)", b)
		}
	}
	const version = "v9.9.9-imagetest"
	bin := t.TempDir()
	buildCommands(t, bin, version, "flanneld", "flannelctl", "flannel", "install-cni")
	d := startDockerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const image = "flannel-go/flannel:imagetest"
	build := exec.CommandContext(ctx, "./build-image.sh", bin, image)
	build.Env = d.env()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build-image.sh: %v\n%s", err, out)
	}
	if out := d.run(t, ctx, "image", "inspect", "--format", "{{json .Config.Entrypoint}} {{index .Config.Labels \"org.opencontainers.image.version\"}}", image); strings.TrimSpace(out) != `["/opt/bin/flanneld"] `+version {
		t.Errorf("image entrypoint and version label: %s", out)
	}

	for _, tt := range []struct {
		entrypoint string
		args       []string
		want       string
	}{
		{"", []string{"-version"}, version},
		{"/opt/bin/flannelctl", []string{"version"}, version},
		{"/opt/bin/install-cni", []string{"-version"}, version},
		{"/flannel", nil, "flannel CNI plugin " + version}, // no CNI_COMMAND: it says what it is
	} {
		args := []string{"run", "--rm", "--network", "none"}
		if tt.entrypoint != "" {
			args = append(args, "--entrypoint", tt.entrypoint)
		}
		out := d.run(t, ctx, append(append(args, image), tt.args...)...)
		if !strings.Contains(out, tt.want) {
			t.Errorf("%s %v printed %q, want %q", tt.entrypoint, tt.args, out, tt.want)
		}
	}

	// The init step: the host's CNI directories and the ConfigMap
	// mounted, as the DaemonSet mounts them.
	host := t.TempDir()
	cm := filepath.Join(host, "configmap")
	if err := os.MkdirAll(cm, 0o755); err != nil {
		t.Fatal(err)
	}
	const conflist = `{"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
  {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
`
	writeFile(t, filepath.Join(cm, "cni-conf.json"), conflist, 0o644)
	d.run(t, ctx, "run", "--rm", "--network", "none",
		"-v", filepath.Join(host, "opt/cni/bin")+":/host/opt/cni/bin",
		"-v", filepath.Join(host, "etc/cni/net.d")+":/host/etc/cni/net.d",
		"-v", cm+":/etc/kube-flannel:ro",
		"--entrypoint", "/opt/bin/install-cni", image,
		"-cni-bin-dir", "/host/opt/cni/bin", "-cni-conf-dir", "/host/etc/cni/net.d")
	got := tree(t, host)
	if g := got["/opt/cni/bin/flannel"]; g.mode != 0o755 || g.data != readFile(t, filepath.Join(bin, "flannel")) {
		t.Errorf("installed plugin: mode %v, same as bin/flannel: %t", g.mode, g.data == readFile(t, filepath.Join(bin, "flannel")))
	}
	if g := got["/etc/cni/net.d/10-flannel.conflist"]; g.mode != 0o644 || g.data != conflist {
		t.Errorf("installed conflist: mode %v\n%s", g.mode, g.data)
	}
	if len(got) != 3 {
		t.Errorf("host directories hold %d files, want the plugin, the conflist and the ConfigMap's file", len(got))
	}
}

// buildCommands builds cmd/NAME for each name into dir, static and with
// version, as `make build` does.
func buildCommands(t *testing.T, dir, version string, names ...string) {
	t.Helper()
	// go test does not always run with the toolchain on PATH; the
	// project's documented place is the fallback.
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	for _, n := range names {
		cmd := exec.Command(goBin, "build", "-trimpath",
			"-ldflags", "-s -w -X github.com/flannel-go/flannel/internal/version.Version="+version,
			"-o", filepath.Join(dir, n), "github.com/flannel-go/flannel/cmd/"+n)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build cmd/%s: %v\n%s", n, err, out)
		}
	}
}

// dockerd is a private Docker engine: its own network namespace (with
// only lo: building FROM scratch and running with --network none need
// nothing else), its own mount namespace with a fresh /run and
// /etc/docker (the machine's engine, if any, and its files are not
// touched), its state in a test directory.
type dockerd struct {
	dir          string
	cgroupParent string
	cmd          *exec.Cmd
	done         chan struct{} // closed when dockerd has exited (not yet reaped)
}

func startDockerd(t *testing.T) *dockerd {
	t.Helper()
	// Short: containerd's socket lives under it (107 bytes at most).
	dir, err := os.MkdirTemp("", "fdi")
	if err != nil {
		t.Fatal(err)
	}
	// Containers' cgroups go under a parent of this test's, removed at
	// the end, not under the machine's /docker.
	d := &dockerd{dir: dir, done: make(chan struct{}), cgroupParent: "flannel-imagetest-" + filepath.Base(dir)}
	writeFile(t, filepath.Join(dir, "daemon.json"), "{}\n", 0o600)
	script := `set -e
mount -t tmpfs -o mode=755 tmpfs /run
if [ -d /etc/docker ]; then mount -t tmpfs -o mode=755 tmpfs /etc/docker; fi
ip link set lo up
exec dockerd --config-file=` + dir + `/daemon.json --data-root=` + dir + `/root --exec-root=` + dir + `/exec \
  --pidfile=` + dir + `/docker.pid -H unix://` + dir + `/docker.sock \
  --bridge=none --iptables=false --ip-masq=false --storage-driver=vfs \
  --exec-opt=native.cgroupdriver=cgroupfs --userland-proxy=false --cgroup-parent=/` + d.cgroupParent + `
`
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command("sh", "-c", script)
	d.cmd.Env = withoutDocker(os.Environ())
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Go makes / private in the new mount namespace, so the mounts above
	// stay in it; the session makes the engine's processes one group.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWNET, Setsid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		// Wait without reaping: while dockerd is a zombie its PID, and
		// so its session's group ID, cannot be another process's, which
		// lets stop signal the group safely.
		var info unix.Siginfo
		for unix.Waitid(unix.P_PID, d.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
		}
		close(d.done)
	}()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			t.Logf("dockerd log:\n%s", b)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := d.waitReady(90 * time.Second); err != nil {
		t.Fatal(err)
	}
	return d
}

// waitReady polls the engine's API until it answers: dockerd signals
// readiness no other way (no systemd here).
func (d *dockerd) waitReady(timeout time.Duration) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		cmd := exec.Command("docker", "version", "--format", "{{.Server.Version}}")
		cmd.Env = d.env()
		if err := cmd.Run(); err == nil {
			return nil
		}
		select {
		case <-d.done:
			return errors.New("dockerd exited before it was ready")
		case <-deadline:
			return fmt.Errorf("dockerd not ready after %v", timeout)
		case <-tick.C:
		}
	}
}

// stop ends the engine: SIGTERM to dockerd (it stops its containerd),
// then SIGKILL to whatever of the session is left.
func (d *dockerd) stop(t *testing.T) {
	pid := d.cmd.Process.Pid
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		t.Errorf("dockerd did not stop within 30 s of SIGTERM; killing it")
	}
	// The session's process group: containerd and shims that outlived it.
	// dockerd is not reaped yet, so -pid is still its group.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = d.cmd.Wait()
	// runc removed each container's cgroup (--rm); the parent is ours.
	// (cgroup v1: one per hierarchy; v2: one.)
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", d.cgroupParent))
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", d.cgroupParent)); err == nil {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", d.cgroupParent))
	}
	for _, cg := range dirs {
		if err := os.Remove(cg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}

func (d *dockerd) env() []string {
	return append(withoutDocker(os.Environ()),
		"DOCKER_HOST=unix://"+filepath.Join(d.dir, "docker.sock"),
		"DOCKER_CONFIG="+filepath.Join(d.dir, "cli"))
}

func (d *dockerd) run(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = d.env()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out.Bytes())
	}
	return out.String()
}

func withoutDocker(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "DOCKER_") {
			out = append(out, kv)
		}
	}
	return out
}

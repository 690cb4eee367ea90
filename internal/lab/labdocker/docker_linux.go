// Package labdocker runs real Docker engines inside lab hosts, for the
// end-to-end tests of the tutorial's Docker setup. It is apart from lab so
// that the operator's binary (flannelctl) does not link it.
package labdocker

// Real Docker engines inside lab hosts, started the way the flannel
// tutorial starts them: `mk-docker-opts.sh -c -d FILE` turns the host's
// subnet.env into DOCKER_OPTS, then `dockerd $DOCKER_OPTS`.
//
// Several engines share one machine, so each gets its own data root, exec
// root, pidfile, socket and config file, all under one directory, and runs
// in a private mount namespace (the one `ip netns exec` makes). That
// namespace is also where the machine-wide paths dockerd and containerd
// insist on are covered: /sys/fs/cgroup (empty after `ip netns exec`
// remounts /sys) gets the machine's cgroup hierarchies mounted again,
// /etc/docker is covered so key.json and daemon.json stay the engine's own,
// and /run/containerd (where containerd-shim puts its sockets whatever the
// configuration says) and /run/docker (plugin sockets) are private tmpfs.
// Nothing mounted there is seen outside, and it all goes away with the
// engine's processes; the machine keeps at most the empty directories
// /run/containerd and /run/docker.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/flannel-go/flannel/internal/lab"
	"github.com/flannel-go/flannel/internal/lab/proc"
	"github.com/flannel-go/flannel/internal/ns"
)

// ErrNoDocker means a Docker engine cannot run on this machine; the error
// wrapping it says why. Tests skip on it.
var ErrNoDocker = errors.New("docker engine cannot run here")

// Options say how to start a Docker engine in a lab host.
type Options struct {
	MkDockerOpts string // required unless Runtime: path to mk-docker-opts.sh
	// Runtime starts the engine only as a container runtime, as a
	// Kubernetes node's is: not on the flannel subnet (no DOCKER_OPTS, no
	// docker0: --bridge=none) and with no iptables rules of its own, so
	// it can start before flanneld, which then runs in it as the
	// DaemonSet's container does (--network host).
	Runtime bool
	Dockerd string // optional: dockerd binary, default "dockerd" from PATH
	CLI     string // optional: docker client, default "docker" from PATH
	// Dir holds everything of the engine; optional, default
	// <lab dir>/<host>/docker. Keep it short: containerd's sockets live
	// under it and a socket path has at most 107 bytes.
	Dir          string
	Args         []string      // optional: extra dockerd flags
	ReadyTimeout time.Duration // optional: default 60s (dockerd needs 5-10 s on a loaded machine)
}

func (o *Options) defaults(l *lab.Lab, h *lab.Host) error {
	if o.MkDockerOpts == "" && !o.Runtime {
		return errors.New("lab: docker: no mk-docker-opts.sh given")
	}
	if o.Dockerd == "" {
		o.Dockerd = "dockerd"
	}
	if o.CLI == "" {
		o.CLI = "docker"
	}
	if o.Dir == "" {
		o.Dir = filepath.Join(l.Dir, h.Name, "docker")
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	var err error
	if o.Dockerd, err = exec.LookPath(o.Dockerd); err != nil {
		return fmt.Errorf("lab: %w: dockerd: %w (install docker.io)", ErrNoDocker, err)
	}
	if o.CLI, err = exec.LookPath(o.CLI); err != nil {
		return fmt.Errorf("lab: %w: docker client: %w (install docker.io)", ErrNoDocker, err)
	}
	return nil
}

// Check reports, as an error wrapping ErrNoDocker, why a Docker
// engine cannot run here: no dockerd or docker binary on PATH, or cgroup
// hierarchies that cannot be mounted in a private mount namespace.
func Check() error {
	for _, bin := range []string{"dockerd", "docker"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("lab: %w: %s: %w (install docker.io)", ErrNoDocker, bin, err)
		}
	}
	script, err := cgroupScript()
	if err != nil {
		return err
	}
	// Go makes / private in the child's new mount namespace, so the
	// probe's mounts never reach the machine's.
	cmd := exec.Command("sh", "-ec", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: %w: cannot mount the cgroup hierarchies in a private mount namespace: %w: %s", ErrNoDocker, err, bytes.TrimSpace(out))
	}
	return nil
}

// cgroupScript returns shell commands that mount again, under
// /sys/fs/cgroup, the cgroup hierarchies the machine has there, so
// dockerd and runc find them after `ip netns exec` has remounted /sys.
// Equivalent to, on a cgroup v1 machine:
//
//	mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
//	mkdir /sys/fs/cgroup/cpu; mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu
//	... (each hierarchy, and name=systemd with "none")
//
// and on a cgroup v2 machine: mount -t cgroup2 cgroup2 /sys/fs/cgroup.
func cgroupScript() (string, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("lab: %w: %w", ErrNoDocker, err)
	}
	controllers := map[string]bool{}
	if b, err := os.ReadFile("/proc/cgroups"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
				controllers[f[0]] = true
			}
		}
	}
	const root = "/sys/fs/cgroup"
	var top string
	subs := map[string]string{} // mount point → its mount command; the last mount of a point wins
	var order []string
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		sep := mountinfoIndex(f, "-")
		if len(f) < 5 || sep < 0 || sep+3 >= len(f) {
			continue
		}
		mp, fstype, super := unescapeMount(f[4]), f[sep+1], f[sep+3]
		if mp == root {
			top = fstype
			continue
		}
		if !strings.HasPrefix(mp, root+"/") || (fstype != "cgroup" && fstype != "cgroup2") {
			continue
		}
		cmd := "mkdir -p " + shellQuote(mp) + " && mount -t cgroup2 cgroup2 " + shellQuote(mp)
		if fstype == "cgroup" {
			cmd = "mkdir -p " + shellQuote(mp) + " && mount -t cgroup -o " + shellQuote(cgroupV1Opts(super, controllers)) + " cgroup " + shellQuote(mp)
		}
		if _, ok := subs[mp]; !ok {
			order = append(order, mp)
		}
		subs[mp] = cmd
	}
	if top == "cgroup2" {
		return "mount -t cgroup2 cgroup2 " + root + "\n", nil
	}
	if len(order) == 0 {
		return "", fmt.Errorf("lab: %w: no cgroup hierarchy is mounted under %s", ErrNoDocker, root)
	}
	var b strings.Builder
	b.WriteString("mount -t tmpfs -o mode=755 cgroup " + root + "\n")
	for _, mp := range order {
		b.WriteString(subs[mp] + "\n")
	}
	// Systemd's aliases (cpu -> cpu,cpuacct) are symlinks in the tmpfs.
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if e.Type()&os.ModeSymlink == 0 {
			continue
		}
		if target, err := os.Readlink(filepath.Join(root, e.Name())); err == nil {
			b.WriteString("ln -s " + shellQuote(target) + " " + shellQuote(filepath.Join(root, e.Name())) + "\n")
		}
	}
	return b.String(), nil
}

// cgroupV1Opts keeps, of a v1 hierarchy's super options, the controllers
// and name=, which identify the hierarchy; flags such as rw or xattr would
// only risk a mismatch. A hierarchy with no controller needs "none".
func cgroupV1Opts(super string, controllers map[string]bool) string {
	var keep []string
	hasController := false
	for _, o := range strings.Split(super, ",") {
		switch {
		case controllers[o]:
			keep = append(keep, o)
			hasController = true
		case strings.HasPrefix(o, "name="):
			keep = append(keep, o)
		}
	}
	if !hasController {
		keep = append([]string{"none"}, keep...)
	}
	return strings.Join(keep, ",")
}

func mountinfoIndex(f []string, s string) int {
	for i, v := range f {
		if v == s {
			return i
		}
	}
	return -1
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Docker is a dockerd running inside a lab host. Stop it with Stop.
type Docker struct {
	Host   *lab.Host
	Dir    string // everything of the engine: data and exec roots, socket, logs
	Socket string // the API's unix socket
	Opts   string // DOCKER_OPTS as mk-docker-opts.sh wrote it
	PID    int    // dockerd

	cli     string
	cmd     *exec.Cmd
	mntNS   string        // dockerd's private mount namespace, once seen
	mntPin  *os.File      // holds that namespace open, so its inode is not reused
	pidfd   int           // dockerd's pidfd, or -1
	done    chan struct{} // closed once dockerd has exited and been reaped
	stopped sync.Once
	stopErr error
}

// Start starts dockerd in host h of lab l with the options mk-docker-opts.sh
// makes of h's subnet.env, and waits until its API answers. A docker0
// left by SetupContainer's imitation is deleted first (taking the lab's
// container link with it), so that the bridge is dockerd's own, made from
// --bip and --mtu. Errors wrapping ErrNoDocker mean Docker cannot run here.
func Start(ctx context.Context, l *lab.Lab, h *lab.Host, o Options) (*Docker, error) {
	if err := o.defaults(l, h); err != nil {
		return nil, err
	}
	cg, err := cgroupScript()
	if err != nil {
		return nil, err
	}
	if err := removeLabBridge(h); err != nil {
		return nil, err
	}
	d := &Docker{
		Host:   h,
		Dir:    o.Dir,
		Socket: filepath.Join(o.Dir, "docker.sock"),
		cli:    o.CLI,
		done:   make(chan struct{}),
	}
	for _, sub := range []string{"etc", "cli"} {
		if err := os.MkdirAll(filepath.Join(d.Dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("lab: docker on %s: %w", h.Name, err)
		}
	}
	// An explicit empty config: a daemon.json of the machine's could
	// contradict the flags (dockerd refuses to start then).
	if err := os.WriteFile(filepath.Join(d.Dir, "daemon.json"), []byte("{}\n"), 0o600); err != nil {
		return nil, fmt.Errorf("lab: docker on %s: %w", h.Name, err)
	}
	optsFile := filepath.Join(d.Dir, "docker_opts.env")
	args := append([]string{
		"--config-file=" + filepath.Join(d.Dir, "daemon.json"),
		"--data-root=" + filepath.Join(d.Dir, "root"),
		"--exec-root=" + filepath.Join(d.Dir, "exec"),
		"--pidfile=" + filepath.Join(d.Dir, "docker.pid"),
		"-H", "unix://" + d.Socket,
		// Docker's own rules and its FORWARD policy DROP, as on a real
		// host: traffic from other hosts then passes only thanks to
		// flanneld's forward rules.
		"--iptables=" + strconv.FormatBool(!o.Runtime),
		// vfs works on any filesystem and the images here are tiny.
		"--storage-driver=vfs",
		"--exec-opt=native.cgroupdriver=cgroupfs",
		"--userland-proxy=false",
	}, o.Args...)
	if o.Runtime {
		args = append(args, "--bridge=none")
	}
	var s strings.Builder
	s.WriteString("set -e\n")
	s.WriteString(cg)
	s.WriteString("for d in /run/containerd /run/docker; do mkdir -p $d && mount -t tmpfs -o mode=711 tmpfs $d; done\n")
	s.WriteString("if [ -d /etc/docker ]; then mount --bind " + shellQuote(filepath.Join(d.Dir, "etc")) + " /etc/docker; fi\n")
	s.WriteString("unset DOCKER_OPTS\n")
	if !o.Runtime {
		// The tutorial's two steps.
		s.WriteString(shellQuote(o.MkDockerOpts) + " -c -f " + shellQuote(l.SubnetFile(h)) + " -d " + shellQuote(optsFile) + "\n")
		s.WriteString(". " + shellQuote(optsFile) + "\n")
	}
	s.WriteString("exec " + shellQuote(o.Dockerd) + " $DOCKER_OPTS")
	for _, a := range args {
		s.WriteString(" " + shellQuote(a))
	}
	s.WriteString("\n")
	script := filepath.Join(d.Dir, "start.sh")
	if err := os.WriteFile(script, []byte(s.String()), 0o600); err != nil {
		return nil, fmt.Errorf("lab: docker on %s: %w", h.Name, err)
	}
	logf, err := os.OpenFile(d.LogFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: docker on %s: %w", h.Name, err)
	}
	defer logf.Close()
	// `ip netns exec` gives the private mount namespace and a /sys of the
	// host's network namespace; sh then execs dockerd, so the PID is
	// dockerd's.
	d.cmd = exec.Command("ip", "netns", "exec", h.NS, "sh", script)
	d.cmd.Env = withoutDockerEnv(os.Environ())
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: start dockerd on %s: %w", h.Name, err)
	}
	d.PID = d.cmd.Process.Pid
	// Opened before Wait can reap dockerd, so it is dockerd's.
	if d.pidfd, err = unix.PidfdOpen(d.PID, 0); err != nil {
		d.pidfd = -1
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.done)
	}()
	if err := d.waitReady(ctx, o.ReadyTimeout); err != nil {
		return nil, errors.Join(err, d.Stop())
	}
	if b, err := os.ReadFile(optsFile); err == nil {
		d.Opts = dockerOptsValue(string(b), "DOCKER_OPTS")
	}
	return d, nil
}

// removeLabBridge deletes the docker0 and vethc that SetupContainer
// creates in place of Docker. Equivalent to: `ip link del vethc; ip link
// del docker0` in the host.
func removeLabBridge(h *lab.Host) error {
	hn, err := ns.Open(h.NS)
	if err != nil {
		return err
	}
	return hn.Do(func() error {
		for _, name := range []string{"vethc", "docker0"} {
			link, err := netlink.LinkByName(name)
			if err != nil {
				continue
			}
			if err := netlink.LinkDel(link); err != nil {
				return fmt.Errorf("lab: docker on %s: delete the lab's %s: %w", h.Name, name, err)
			}
		}
		return nil
	})
}

// waitReady polls the API's /_ping until it answers OK.
func (d *Docker) waitReady(ctx context.Context, timeout time.Duration) error {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.Socket)
		},
	}, Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		d.noteMntNS()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				d.noteMntNS()
				return nil
			}
			err = fmt.Errorf("/_ping: %s %s", resp.Status, body)
		}
		last = err
		select {
		case <-d.done:
			return fmt.Errorf("lab: dockerd on %s exited at start; log %s:\n%s", d.Host.Name, d.LogFile(), tail(d.LogFile(), 20))
		case <-ctx.Done():
			return fmt.Errorf("lab: dockerd on %s: %w", d.Host.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: dockerd on %s not ready within %s: %w; log %s:\n%s", d.Host.Name, timeout, last, d.LogFile(), tail(d.LogFile(), 20))
		}
	}
}

// noteMntNS records dockerd's mount namespace once it is its own: it
// differs from ours after `ip netns exec` has unshared it.
func (d *Docker) noteMntNS() {
	if d.mntNS != "" {
		return
	}
	if d.pidfd < 0 {
		return
	}
	// Hold the namespace open before trusting its name: once dockerd and
	// containerd are gone, a namespace nobody holds is freed and its inode
	// number handed to the next one, and every `ip netns exec` makes one,
	// so the teardown would kill some other test's command.
	pin, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", d.PID))
	if err != nil {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(int(pin.Fd()), &st) != nil {
		pin.Close()
		return
	}
	m := fmt.Sprintf("mnt:[%d]", st.Ino)
	// Only a read made while dockerd had not exited counts: after that,
	// its PID may be another process's. The pidfd, opened before dockerd
	// could be reaped, turns readable when it exits.
	if pfd := []unix.PollFd{{Fd: int32(d.pidfd), Events: unix.POLLIN}}; func() bool {
		n, err := unix.Poll(pfd, 0)
		return err != nil || n != 0
	}() || m == "" || m == mntNS(os.Getpid()) {
		pin.Close()
		return
	}
	d.mntNS, d.mntPin = m, pin
}

// LogFile is dockerd's output (containerd's too).
func (d *Docker) LogFile() string { return filepath.Join(d.Dir, "dockerd.log") }

// Command returns a docker client command talking to this engine only.
func (d *Docker) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.cli, args...)
	cmd.Env = append(withoutDockerEnv(os.Environ()),
		"DOCKER_HOST=unix://"+d.Socket,
		"DOCKER_CONFIG="+filepath.Join(d.Dir, "cli"))
	return cmd
}

// Run runs a docker client command and returns its combined output, with
// the output in the error when it fails.
func (d *Docker) Run(ctx context.Context, args ...string) (string, error) {
	out, err := d.Command(ctx, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker on %s: docker %s: %w: %s", d.Host.Name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Stop removes every container (dockerd would otherwise wait 15 s for
// each), stops dockerd with SIGTERM, then kills whatever of the engine
// is left: containerd and its shims. Safe to call more than once.
func (d *Docker) Stop() error {
	d.stopped.Do(func() { d.stopErr = d.stop() })
	return d.stopErr
}

func (d *Docker) stop() error {
	var errs []error
	select {
	case <-d.done:
	default:
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := d.Run(ctx, "ps", "-aq")
		if ids := strings.Fields(out); err == nil && len(ids) > 0 {
			if _, err := d.Run(ctx, append([]string{"rm", "-f"}, ids...)...); err != nil {
				errs = append(errs, err)
			}
		} else if err != nil {
			errs = append(errs, err)
		}
		cancel()
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		errs = append(errs, fmt.Errorf("lab: dockerd on %s ignored SIGTERM for 30 s; killed", d.Host.Name))
	}
	if d.pidfd >= 0 {
		unix.Close(d.pidfd)
		d.pidfd = -1
	}
	// dockerd stops the containerd it started, and shims end with their
	// containers; anything left is killed.
	for pid, start := range d.enginePIDs() {
		proc.StopPinned(pid, func(pid int) bool { return proc.StartTime(pid) == start }, syscall.SIGKILL, 5*time.Second)
	}
	if d.mntPin != nil {
		d.mntPin.Close()
		d.mntPin = nil
	}
	return errors.Join(errs...)
}

// enginePIDs lists the engine's leftover processes: those in dockerd's
// private mount namespace (containerd, its shims), or, if that was never
// seen, those naming the exec root on their command line; and the
// children of either (container inits whose shim is gone), each with its
// start time.
func (d *Docker) enginePIDs() map[int]string {
	execRoot := []byte(filepath.Join(d.Dir, "exec") + "/")
	in := map[int]bool{}
	ppid := map[int]int{}
	start := map[int]string{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if f, err := proc.Stat(pid); err == nil {
			ppid[pid], _ = strconv.Atoi(f[1])
			start[pid] = f[19]
		}
		if d.mntNS != "" {
			in[pid] = mntNS(pid) == d.mntNS
		} else if b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline")); err == nil {
			in[pid] = bytes.Contains(b, execRoot)
		}
	}
	pids := map[int]string{}
	for pid := range ppid {
		if in[pid] || in[ppid[pid]] {
			pids[pid] = start[pid]
		}
	}
	return pids
}

// mntNS names pid's mount namespace ("mnt:[4026532303]"), or "".
func mntNS(pid int) string {
	s, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	return s
}

// withoutDockerEnv drops DOCKER_* variables (DOCKER_HOST, DOCKER_CONTEXT,
// DOCKER_OPTS, ...) that would point a command at another engine or
// change its options.
func withoutDockerEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "DOCKER_") {
			out = append(out, kv)
		}
	}
	return out
}

// dockerOptsValue returns the value of NAME="value" in an env file.
func dockerOptsValue(file, name string) string {
	sc := bufio.NewScanner(strings.NewReader(file))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+"="); ok {
			return strings.TrimSuffix(strings.TrimPrefix(v, `"`), `"`)
		}
	}
	return ""
}

// BusyboxImage writes to path a tarball for `docker import`: a static
// busybox as /bin/busybox with applet links for each name in applets. The
// busybox binary is found on PATH; a dynamically linked one would not run
// in an image without libc, so that is an error wrapping ErrNoDocker
// (install busybox-static).
func BusyboxImage(path string, applets ...string) error {
	bin, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("lab: %w: busybox: %w (install busybox-static)", ErrNoDocker, err)
	}
	if err := checkStatic(bin); err != nil {
		return err
	}
	return writeBusyboxTar(path, bin, applets)
}

func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("lab: busybox %s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("lab: %w: %s is dynamically linked (install busybox-static)", ErrNoDocker, bin)
		}
	}
	return nil
}

func writeBusyboxTar(path, bin string, applets []string) (err error) {
	src, err := os.Open(bin)
	if err != nil {
		return fmt.Errorf("lab: busybox image: %w", err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return fmt.Errorf("lab: busybox image: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("lab: busybox image: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("lab: busybox image: %w", cerr)
		}
	}()
	tw := tar.NewWriter(f)
	mtime := st.ModTime()
	hdrs := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755, ModTime: mtime},
		{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: st.Size(), ModTime: mtime},
	}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("lab: busybox image: %w", err)
		}
	}
	if _, err := io.Copy(tw, src); err != nil {
		return fmt.Errorf("lab: busybox image: %w", err)
	}
	for _, a := range applets {
		h := &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("lab: busybox image: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("lab: busybox image: %w", err)
	}
	return nil
}

// tail is the last n lines of the file at path.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

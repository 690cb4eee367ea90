package dist

import (
	"bufio"
	"bytes"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// installer runs `make install` through a throwaway makefile that only
// includes mk/install.mk, from a work dir holding fake bin/flanneld and
// bin/flannelctl, so no Go build is needed.
type installer struct {
	work string
}

func newInstaller(t *testing.T) *installer {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not found")
	}
	mk, err := filepath.Abs(filepath.Join("..", "mk", "install.mk"))
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	if err := os.Mkdir(filepath.Join(work, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	// 0600 on purpose: install must set the mode, not copy it.
	writeFile(t, filepath.Join(work, "bin", "flanneld"), "#!/bin/sh\necho fake flanneld v1\n", 0o600)
	writeFile(t, filepath.Join(work, "bin", "flannelctl"), "#!/bin/sh\necho fake flannelctl v1\n", 0o600)
	writeFile(t, filepath.Join(work, "bin", "flannel"), "#!/bin/sh\necho fake flannel CNI plugin v1\n", 0o600)
	writeFile(t, filepath.Join(work, "test.mk"), "include "+mk+"\n", 0o644)
	return &installer{work: work}
}

// make runs `make -f test.mk` with vars and returns its combined output.
// The environment is scrubbed of make's and install's variables so that
// neither a parent make (MAKEFLAGS) nor the caller's PREFIX leaks in.
func (in *installer) make(t *testing.T, vars ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("make", append([]string{"--no-print-directory", "-C", in.work, "-f", "test.mk"}, vars...)...)
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES", "DESTDIR", "PREFIX", "BINDIR",
			"LIBEXECDIR", "SYSTEMDUNITDIR", "SYSCONFDIR", "INSTALL", "FLANNEL_BIN", "CNIBINDIR":
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (in *installer) install(t *testing.T, vars ...string) string {
	t.Helper()
	out, err := in.make(t, append([]string{"install"}, vars...)...)
	if err != nil {
		t.Fatalf("make install %v: %v\n%s", vars, err, out)
	}
	return out
}

type file struct {
	mode os.FileMode
	data string // "" = don't compare
}

// tree returns every regular file under root, by path relative to root.
func tree(t *testing.T, root string) map[string]file {
	t.Helper()
	got := map[string]file{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		got["/"+filepath.ToSlash(rel)] = file{fi.Mode(), string(b)}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// unitValues returns the values of key in the unit text, in order.
func unitValues(unit, key string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(unit))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

func checkTree(t *testing.T, got, want map[string]file) {
	t.Helper()
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s not installed", p)
			continue
		}
		if g.mode != w.mode {
			t.Errorf("%s: mode %v, want %v", p, g.mode, w.mode)
		}
		if w.data != "" && g.data != w.data {
			t.Errorf("%s: content differs from its source:\n%s", p, g.data)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("unexpected file installed: %s", p)
		}
	}
}

func TestInstallPrefixUsr(t *testing.T) {
	in := newInstaller(t)
	dest := t.TempDir()
	in.install(t, "DESTDIR="+dest, "PREFIX=/usr")

	got := tree(t, dest)
	checkTree(t, got, map[string]file{
		"/usr/bin/flanneld":                                 {0o755, "#!/bin/sh\necho fake flanneld v1\n"},
		"/usr/bin/flannelctl":                               {0o755, "#!/bin/sh\necho fake flannelctl v1\n"},
		"/opt/cni/bin/flannel":                              {0o755, "#!/bin/sh\necho fake flannel CNI plugin v1\n"},
		"/usr/libexec/flannel/mk-docker-opts.sh":            {0o755, readFile(t, "mk-docker-opts.sh")},
		"/usr/lib/systemd/system/flanneld.service":          {0o644, ""},
		"/etc/systemd/system/docker.service.d/flannel.conf": {0o644, readFile(t, "docker-flannel.conf")},
		"/etc/sysconfig/flanneld":                           {0o644, readFile(t, "sysconfig/flanneld")},
	})

	unit := got["/usr/lib/systemd/system/flanneld.service"].data
	start := unitValues(unit, "ExecStart")
	if len(start) != 1 || !strings.HasPrefix(start[0], "/usr/bin/flanneld ") {
		t.Errorf("ExecStart = %q, want one command running /usr/bin/flanneld", start)
	}
	post := unitValues(unit, "ExecStartPost")
	want := "/usr/libexec/flannel/mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker"
	if len(post) != 1 || post[0] != want {
		t.Errorf("ExecStartPost = %q, want %q", post, want)
	}
	if ef := unitValues(unit, "EnvironmentFile"); !slices.Equal(ef, []string{"-/etc/sysconfig/flanneld"}) {
		t.Errorf("EnvironmentFile = %q", ef)
	}
	if strings.Contains(unit, "/usr/local") {
		t.Errorf("unit still mentions /usr/local:\n%s", unit)
	}
}

// With the default PREFIX the installed unit is dist/flanneld.service
// byte for byte, so the file in the tree is usable as it is.
func TestInstallDefaultPrefix(t *testing.T) {
	in := newInstaller(t)
	dest := t.TempDir()
	in.install(t, "DESTDIR="+dest)
	got := tree(t, dest)
	for _, p := range []string{"/usr/local/bin/flanneld", "/usr/local/bin/flannelctl", "/usr/local/libexec/flannel/mk-docker-opts.sh"} {
		if got[p].mode != 0o755 {
			t.Errorf("%s: mode %v, want 0755", p, got[p].mode)
		}
	}
	unit, ok := got["/usr/local/lib/systemd/system/flanneld.service"]
	if !ok {
		t.Fatal("unit not in /usr/local/lib/systemd/system")
	}
	if unit.data != readFile(t, "flanneld.service") {
		t.Errorf("unit differs from dist/flanneld.service:\n%s", unit.data)
	}
}

// A second install replaces the binaries and the unit but keeps the
// operator's configuration.
func TestInstallKeepsConfig(t *testing.T) {
	in := newInstaller(t)
	dest := t.TempDir()
	vars := []string{"DESTDIR=" + dest, "PREFIX=/usr"}
	in.install(t, vars...)

	sysconfig := filepath.Join(dest, "etc/sysconfig/flanneld")
	dropin := filepath.Join(dest, "etc/systemd/system/docker.service.d/flannel.conf")
	const mine = "FLANNEL_ETCD=\"https://etcd.example:2379\"\n"
	const myDropin = "[Service]\nExecStart=\nExecStart=/opt/docker/dockerd --bip=${FLANNEL_SUBNET}\n"
	writeFile(t, sysconfig, mine, 0o600)
	if err := os.Chmod(sysconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dropin, myDropin, 0o644)
	writeFile(t, filepath.Join(in.work, "bin", "flanneld"), "#!/bin/sh\necho fake flanneld v2\n", 0o755)

	out := in.install(t, vars...)
	got := tree(t, dest)
	if g := got["/etc/sysconfig/flanneld"]; g.data != mine || g.mode != 0o600 {
		t.Errorf("sysconfig overwritten: mode %v\n%s", g.mode, g.data)
	}
	if g := got["/etc/systemd/system/docker.service.d/flannel.conf"]; g.data != myDropin {
		t.Errorf("docker drop-in overwritten:\n%s", g.data)
	}
	if g := got["/usr/bin/flanneld"]; g.data != "#!/bin/sh\necho fake flanneld v2\n" {
		t.Errorf("flanneld not replaced:\n%s", g.data)
	}
	for _, p := range []string{sysconfig, dropin} {
		if !strings.Contains(out, "keeping existing "+p) {
			t.Errorf("install output does not say it kept %s:\n%s", p, out)
		}
	}
	for p := range got {
		if strings.HasSuffix(p, ".tmp") {
			t.Errorf("leftover temporary file %s", p)
		}
	}
}

func TestInstallWithoutBuild(t *testing.T) {
	in := newInstaller(t)
	if err := os.Remove(filepath.Join(in.work, "bin", "flannelctl")); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	out, err := in.make(t, "install", "DESTDIR="+dest)
	if err == nil {
		t.Fatalf("make install succeeded without bin/flannelctl:\n%s", out)
	}
	if !strings.Contains(out, "bin/flannelctl not found: run 'make build' first") {
		t.Errorf("output does not say what to do:\n%s", out)
	}
	if files := tree(t, dest); len(files) != 0 {
		t.Errorf("files installed anyway: %v", slices.Sorted(maps.Keys(files)))
	}
}

func TestUninstall(t *testing.T) {
	in := newInstaller(t)
	dest := t.TempDir()
	vars := []string{"DESTDIR=" + dest, "PREFIX=/usr"}
	in.install(t, vars...)
	if out, err := in.make(t, append([]string{"uninstall"}, vars...)...); err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	got := tree(t, dest)
	if len(got) != 1 || got["/etc/sysconfig/flanneld"].data == "" {
		t.Errorf("after uninstall, want only /etc/sysconfig/flanneld left, got %v", got)
	}
	if _, err := os.Stat(filepath.Join(dest, "usr/libexec/flannel")); !os.IsNotExist(err) {
		t.Errorf("usr/libexec/flannel not removed: %v", err)
	}
}

// TestSystemdVerify checks the installed unit and the Docker drop-in with
// systemd's own parser. systemd-analyze checks that Exec paths exist on this
// machine, so the copies it reads point at the files in DESTDIR (for
// dockerd, at a stand-in).
func TestSystemdVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not found (Debian/Ubuntu package systemd): cannot verify the units")
	}
	in := newInstaller(t)
	for _, f := range []string{"flanneld", "flannelctl"} {
		if err := os.Chmod(filepath.Join(in.work, "bin", f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dest := t.TempDir()
	in.install(t, "DESTDIR="+dest, "PREFIX=/usr")

	vdir := t.TempDir()
	unit := strings.NewReplacer(
		"/usr/bin/flanneld", dest+"/usr/bin/flanneld",
		"/usr/libexec/flannel/", dest+"/usr/libexec/flannel/",
	).Replace(readFile(t, filepath.Join(dest, "usr/lib/systemd/system/flanneld.service")))
	writeFile(t, filepath.Join(vdir, "flanneld.service"), unit, 0o644)

	dockerd := filepath.Join(vdir, "dockerd")
	writeFile(t, dockerd, "#!/bin/sh\nexit 0\n", 0o755)
	writeFile(t, filepath.Join(vdir, "docker.service"), "[Unit]\nDescription=stand-in for docker.service\n[Service]\nExecStart="+dockerd+"\n", 0o644)
	if err := os.Mkdir(filepath.Join(vdir, "docker.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	dropin := strings.ReplaceAll(readFile(t, filepath.Join(dest, "etc/systemd/system/docker.service.d/flannel.conf")), "/usr/bin/dockerd", dockerd)
	writeFile(t, filepath.Join(vdir, "docker.service.d", "flannel.conf"), dropin, 0o644)

	// The eBPF drop-in is installed by hand next to the unit; verify
	// reads it with flanneld.service.
	if err := os.Mkdir(filepath.Join(vdir, "flanneld.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	ebpf := readFile(t, "flanneld-udp-ebpf.conf")
	writeFile(t, filepath.Join(vdir, "flanneld.service.d", "udp-ebpf.conf"), ebpf, 0o644)

	// verify exits 0 on unknown keys and bad values ("…, ignoring"), so
	// any output at all is a failure.
	verify := func(unit string) (string, error) {
		cmd := exec.Command(analyze, "verify", "--man=no", unit)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	for _, u := range []string{"flanneld.service", "docker.service"} {
		t.Run(u, func(t *testing.T) {
			if out, err := verify(filepath.Join(vdir, u)); err != nil || out != "" {
				t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
			}
		})
	}

	// The drop-ins are only checked if systemd-analyze reads them from
	// next to their units: a broken copy must be reported.
	t.Run("drop-in is read", func(t *testing.T) {
		writeFile(t, filepath.Join(vdir, "docker.service.d", "flannel.conf"), dropin+"[Service]\nNoSuchKey=1\n", 0o644)
		if out, _ := verify(filepath.Join(vdir, "docker.service")); !strings.Contains(out, "NoSuchKey") {
			t.Errorf("a bad key in the drop-in went unreported: %q", out)
		}
	})
	t.Run("eBPF drop-in is read", func(t *testing.T) {
		writeFile(t, filepath.Join(vdir, "flanneld.service.d", "udp-ebpf.conf"), ebpf+"NoSuchKey=1\n", 0o644)
		if out, _ := verify(filepath.Join(vdir, "flanneld.service")); !strings.Contains(out, "NoSuchKey") {
			t.Errorf("a bad key in the eBPF drop-in went unreported: %q", out)
		}
	})
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The CNI plugin goes where runtimes look for plugins, whatever PREFIX is;
// CNIBINDIR moves it (e.g. k3s's /var/lib/rancher/k3s/data/current/bin).
func TestInstallCNIBinDir(t *testing.T) {
	in := newInstaller(t)
	dest := t.TempDir()
	in.install(t, "DESTDIR="+dest, "PREFIX=/opt/flannel", "CNIBINDIR=/usr/libexec/cni")
	got := tree(t, dest)
	if g := got["/usr/libexec/cni/flannel"]; g.mode != 0o755 || !strings.Contains(g.data, "fake flannel CNI plugin") {
		t.Errorf("CNI plugin not installed in CNIBINDIR: %v", slices.Sorted(maps.Keys(got)))
	}
	if _, ok := got["/opt/cni/bin/flannel"]; ok {
		t.Errorf("CNI plugin installed in /opt/cni/bin despite CNIBINDIR")
	}
	if out, err := in.make(t, "uninstall", "DESTDIR="+dest, "PREFIX=/opt/flannel", "CNIBINDIR=/usr/libexec/cni"); err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	if _, ok := tree(t, dest)["/usr/libexec/cni/flannel"]; ok {
		t.Errorf("uninstall left the CNI plugin")
	}
}

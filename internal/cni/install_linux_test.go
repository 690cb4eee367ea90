package cni_test

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/flannel-go/flannel/internal/cni"
)

// The conflist of upstream's manifest (reference §9).
const manifestConflist = `{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

func TestInstall(t *testing.T) {
	src, host := t.TempDir(), t.TempDir()
	plugin := filepath.Join(src, "flannel")
	conflist := filepath.Join(src, "cni-conf.json")
	write(t, plugin, "#!binary v1", 0o700)
	write(t, conflist, manifestConflist, 0o600)
	o := cni.InstallOptions{
		Plugin: plugin, BinDir: filepath.Join(host, "opt/cni/bin"),
		Conflist: conflist, ConfDir: filepath.Join(host, "etc/cni/net.d"),
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := cni.Install(log, o); err != nil {
		t.Fatalf("Install: %v", err)
	}
	bin := filepath.Join(o.BinDir, "flannel")
	conf := filepath.Join(o.ConfDir, "10-flannel.conflist")
	check(t, bin, "#!binary v1", 0o755)
	check(t, conf, manifestConflist, 0o644)
	binIno, confIno := inode(t, bin), inode(t, conf)

	// Unchanged: left alone (runtimes watching net.d do not reload).
	if err := cni.Install(log, o); err != nil {
		t.Fatalf("Install again: %v", err)
	}
	if inode(t, bin) != binIno || inode(t, conf) != confIno {
		t.Errorf("an unchanged file was rewritten")
	}

	// A new binary replaces the old one by rename: a plugin running from
	// the old inode keeps it.
	write(t, plugin, "#!binary v2", 0o755)
	if err := cni.Install(log, o); err != nil {
		t.Fatalf("Install v2: %v", err)
	}
	check(t, bin, "#!binary v2", 0o755)
	if inode(t, bin) == binIno {
		t.Errorf("binary rewritten in place, not replaced")
	}

	// A broken conflist is refused and the working one stays.
	write(t, conflist, `{"name": "cbr0", "plugins": [{"delegate": {}}]}`, 0o644)
	err := cni.Install(log, o)
	if err == nil || !strings.Contains(err.Error(), "not a valid CNI network configuration list") {
		t.Fatalf("Install of a broken conflist: %v", err)
	}
	check(t, conf, manifestConflist, 0o644)

	for _, d := range []string{o.BinDir, o.ConfDir} {
		if entries, _ := os.ReadDir(d); len(entries) != 1 {
			t.Errorf("%s holds %v, want one file (no temporary files)", d, entries)
		}
	}
}

func TestInstallSkips(t *testing.T) {
	host := t.TempDir()
	o := cni.InstallOptions{BinDir: filepath.Join(host, "bin"), ConfDir: filepath.Join(host, "net.d")}
	if err := cni.Install(slog.New(slog.NewTextHandler(io.Discard, nil)), o); err != nil {
		t.Fatalf("Install of nothing: %v", err)
	}
	if _, err := os.Stat(o.BinDir); err == nil {
		t.Errorf("created %s with nothing to install", o.BinDir)
	}
	o.Plugin = filepath.Join(host, "absent")
	if err := cni.Install(slog.New(slog.NewTextHandler(io.Discard, nil)), o); err == nil {
		t.Errorf("Install of a missing plugin succeeded")
	}
}

func write(t *testing.T, path, s string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func check(t *testing.T, path, want string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || string(b) != want {
		t.Errorf("%s = %q, %v; want %q", path, b, err, want)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != mode {
		t.Errorf("%s mode %v, want %v", path, st.Mode().Perm(), mode)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

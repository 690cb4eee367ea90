package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"-version"}, &out); code != 0 || strings.TrimSpace(out.String()) == "" {
		t.Errorf("-version: exit %d, printed %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"extra"}, &out); code != 2 || !strings.Contains(out.String(), "unexpected argument") {
		t.Errorf("an argument: exit %d, printed %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"-no-such-flag"}, &out); code != 2 {
		t.Errorf("an unknown flag: exit %d", code)
	}

	dir := t.TempDir()
	plugin := filepath.Join(dir, "flannel")
	if err := os.WriteFile(plugin, []byte("plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	args := []string{"-plugin", plugin, "-conflist", "", "-cni-bin-dir", filepath.Join(dir, "bin"), "-cni-conf-dir", filepath.Join(dir, "net.d")}
	if code := run(args, &out); code != 0 {
		t.Fatalf("install: exit %d\n%s", code, out.String())
	}
	if b, err := os.ReadFile(filepath.Join(dir, "bin", "flannel")); err != nil || string(b) != "plugin" {
		t.Errorf("plugin not installed: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "net.d")); err == nil {
		t.Errorf("-conflist '' still installed a conflist")
	}
	out.Reset()
	if code := run([]string{"-plugin", filepath.Join(dir, "absent"), "-conflist", ""}, &out); code != 1 || !strings.Contains(out.String(), "install-cni:") {
		t.Errorf("missing plugin: exit %d, printed %q", code, out.String())
	}
}

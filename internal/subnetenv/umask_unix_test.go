//go:build unix

package subnetenv_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/flannel-go/flannel/internal/subnetenv"
)

// flanneld may run under a strict umask; the CNI plugin and docker still
// need to read the file.
func TestWriteModeIgnoresUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	t.Cleanup(func() { syscall.Umask(old) })
	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := subnetenv.Write(path, v4Env); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v under umask 077, want 0644", st.Mode().Perm())
	}
}

// Package netnstest gives tests throwaway network namespaces that are
// removed when the test ends, pass or fail, and skips tests that need root
// or a kernel module this machine lacks; and what datapath tests do with
// them: wire them up (Run, Container, NICWire), pass checked TCP traffic
// between them (Transfer), watch an interface (StartCapture), and mount a
// private bpffs (BPFFS).
package netnstest

import (
	"os"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/ns"
)

// SkipUnlessRoot skips t unless it runs as root.
func SkipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("test requires root (network namespaces)")
	}
}

// SkipUnlessModule skips t unless the kernel has module (loaded or built in).
func SkipUnlessModule(t testing.TB, module string) {
	t.Helper()
	if b, err := os.ReadFile("/proc/modules"); err == nil && strings.Contains(string(b), module+" ") {
		return
	}
	if _, err := os.Stat("/sys/module/" + module); err == nil {
		return
	}
	t.Skipf("test requires kernel module %s", module)
}

// New creates a namespace named prefix+random (prefix ≤ 9 bytes) and
// deletes it in t.Cleanup.
func New(t testing.TB, prefix string) *ns.NS {
	t.Helper()
	SkipUnlessRoot(t)
	n, err := ns.Create(ns.Unique(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return n
}

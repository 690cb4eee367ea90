package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The operator's binary carries the lab, but not the rigs only the
// end-to-end tests use.
func TestDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on $PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"/internal/lab/labdocker", "/internal/etcdtest", "/leasetest"} {
			if strings.Contains(dep, banned) {
				t.Errorf("flannelctl links %s", dep)
			}
		}
	}
}

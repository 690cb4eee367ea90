package main

import (
	"os/exec"
	"strings"
	"testing"
)

// flanneld runs on every host: it must not carry an etcd server (the lab's
// embedded etcd lives in flannelctl) nor the test rigs.
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
		for _, banned := range []string{"go.etcd.io/etcd/server", "/internal/lab", "/internal/etcdembed", "/internal/etcdtest", "/leasetest"} {
			if strings.Contains(dep, banned) {
				t.Errorf("flanneld links %s", dep)
			}
		}
	}
}

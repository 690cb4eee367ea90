// Package depcheck is for a binary's tests: it checks that the binary does
// not link packages it must not carry (an etcd server, test rigs). Only
// tests import it, so it is never linked itself.
package depcheck

import (
	"os/exec"
	"strings"
	"testing"
)

// NotLinked fails t for every package that the package in the current
// directory (the test's own) links whose import path contains one of
// banned; name says which binary, in the failures. Without a go tool on
// $PATH it skips t.
func NotLinked(t testing.TB, name string, banned ...string) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on $PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, b := range banned {
			if strings.Contains(dep, b) {
				t.Errorf("%s links %s", name, dep)
			}
		}
	}
}

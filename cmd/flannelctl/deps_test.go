package main

import (
	"testing"

	"github.com/flannel-go/flannel/internal/depcheck"
)

// The operator's binary carries the lab, but not the rigs only the
// end-to-end tests use.
func TestDeps(t *testing.T) {
	depcheck.NotLinked(t, "flannelctl", "/internal/lab/labdocker", "/internal/etcdtest", "/leasetest", "/internal/kubetest", "/internal/netnstest")
}

package main

import (
	"testing"

	"github.com/flannel-go/flannel/internal/depcheck"
)

// flanneld runs on every host: it must not carry an etcd server (the lab's
// embedded etcd lives in flannelctl) nor the test rigs.
func TestDeps(t *testing.T) {
	depcheck.NotLinked(t, "flanneld", "go.etcd.io/etcd/server", "/internal/lab", "/internal/etcdembed", "/internal/etcdtest", "/leasetest")
}

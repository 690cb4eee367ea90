// Package etcdtest starts throw-away embedded etcd servers for tests and
// makes the stores and client TLS configs tests connect to them with. It
// lives apart from leasetest so that tests which only need the in-memory
// fake do not link an etcd server.
package etcdtest

import (
	"context"
	"testing"

	"github.com/flannel-go/flannel/internal/etcdembed"
)

// StartEtcd starts one etcd on 127.0.0.1 (port 0) with its data in
// t.TempDir() and returns its client endpoints. It is closed at cleanup.
func StartEtcd(t testing.TB) []string {
	t.Helper()
	return Start(t, etcdembed.Options{}).Endpoints()
}

// Start starts an etcd with o, filling in Dir (t.TempDir()) when empty and
// always skipping fsync; it is closed at cleanup (closing it earlier is
// fine).
func Start(t testing.TB, o etcdembed.Options) *etcdembed.Server {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	o.UnsafeNoFsync = true
	s, err := etcdembed.Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

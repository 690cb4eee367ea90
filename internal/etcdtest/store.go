package etcdtest

import (
	"io"
	"testing"

	"github.com/flannel-go/flannel/internal/etcdconf/etcdopt"
)

// NewStore makes a store with newStore (etcdstore.New or etcdv2store.New)
// and closes it at cleanup, failing t on either's error. An empty Prefix
// becomes one of the test's own, so tests sharing an etcd do not see each
// other's keys.
func NewStore[S io.Closer](t testing.TB, newStore func(etcdopt.Options) (S, error), o etcdopt.Options) S {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = "/test/" + t.Name()
	}
	s, err := newStore(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

package etcdconf

import (
	"fmt"
	"log/slog"

	"github.com/flannel-go/flannel/internal/etcdconf/etcdopt"
	"github.com/flannel-go/flannel/internal/lease/etcdstore"
	"github.com/flannel-go/flannel/internal/lease/etcdv2store"
)

// Hooks are optional observers of the connection.
type Hooks struct {
	// OnConnState is told when etcd becomes unreachable (false) and when
	// it is reachable again (true), for metrics. v3 only: the v2 client
	// keeps no connection to watch.
	OnConnState func(up bool)
}

// Open validates o, builds the TLS config (warning on log about plain
// http or a loose key file) and creates the store of the API o.API names;
// for auto, both and the choice between them (see Store). It contacts
// etcd only to authenticate a v3 Username. The caller closes the store.
func Open(o Options, log *slog.Logger, h Hooks) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	tc, err := o.ClientTLS(log)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	base := etcdopt.Options{
		Endpoints: o.Endpoints, Prefix: o.Prefix, TLS: tc,
		Username: o.Username, Password: o.Password, Timeout: o.Timeout,
	}
	v3 := func() (keyspace, error) {
		so := base
		so.Log, so.OnConnState = log.With("component", "etcd"), h.OnConnState
		return etcdstore.New(so)
	}
	v2 := func() (keyspace, error) {
		so := base
		so.Log = log.With("component", "etcd-v2")
		return etcdv2store.New(so)
	}
	switch o.API {
	case APIv3:
		s, err := v3()
		if err != nil {
			return nil, err
		}
		return newFixed(s, APIv3), nil
	case APIv2:
		s, err := v2()
		if err != nil {
			return nil, err
		}
		return newFixed(s, APIv2), nil
	}
	s3, err := v3()
	if err != nil {
		return nil, err
	}
	s2, err := v2()
	if err != nil {
		s3.Close()
		return nil, err
	}
	return newAuto(s3, s2, log), nil
}

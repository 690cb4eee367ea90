package etcdv2store_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/etcdv2store"
)

// A host on a cluster whose config was written with `etcdctl set` (the v2
// API) reads it and lists the current leases.
func ExampleNew() {
	s, err := etcdv2store.New(etcdv2store.Options{
		Endpoints: []string{"http://127.0.0.1:2379"},
		Log:       slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	var store lease.Store = s // what the daemon uses, whichever API
	cfg, err := store.Config(ctx)
	if err != nil {
		fmt.Println(err) // wraps lease.ErrNoConfig when only the v3 keyspace has it
		return
	}
	leases, rev, err := store.Leases(ctx)
	fmt.Println(string(cfg), len(leases), rev, err)
}

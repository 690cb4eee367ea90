package etcdopt_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/etcdconf/etcdopt"
)

func TestWithDefaults(t *testing.T) {
	d := etcdopt.Options{Endpoints: []string{"http://127.0.0.1:2379"}}.WithDefaults()
	if d.Prefix != etcdopt.DefaultPrefix || d.Timeout != etcdopt.DefaultTimeout || d.Log == nil {
		t.Errorf("defaults: prefix %q, timeout %v, log %v", d.Prefix, d.Timeout, d.Log)
	}
	if d.Timeout = -time.Second; d.WithDefaults().Timeout != etcdopt.DefaultTimeout {
		t.Error("a negative timeout must become the default")
	}
	log := slog.New(slog.DiscardHandler)
	set := etcdopt.Options{Prefix: "/p", Log: log, Timeout: time.Second}.WithDefaults()
	if set.Prefix != "/p" || set.Log != log || set.Timeout != time.Second {
		t.Errorf("set fields changed: %+v", set)
	}
}

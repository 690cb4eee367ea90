package etcdconf

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
)

func TestPicksTheKeyspaceHoldingTheConfig(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name       string
		inV3, inV2 bool
		want       string
	}{
		{"v3 only", true, false, "v3"},
		{"v2 only", false, true, "v2"},
		{"both: v3 preferred", true, true, "v3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v3, v2 := leasetest.New(nil), leasetest.New(nil)
			if c.inV3 {
				_ = v3.PutConfig(ctx, []byte(`{"from":"v3"}`))
			}
			if c.inV2 {
				_ = v2.PutConfig(ctx, []byte(`{"from":"v2"}`))
			}
			s := newAuto(fake{v3}, fake{v2}, nil)
			cfg, err := s.Config(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := `{"from":"` + c.want + `"}`; string(cfg) != want || s.API() != c.want {
				t.Errorf("config %s from %s, want %s from %s", cfg, s.API(), want, c.want)
			}
			// Leases go to the same keyspace.
			chosen := map[string]*leasetest.Store{"v3": v3, "v2": v2}[c.want]
			if _, err := chosen.Create(ctx, lease.Lease{Subnet: mustPrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.0.9")}}, 0); err != nil {
				t.Fatal(err)
			}
			ls, _, err := s.Leases(ctx)
			if err != nil || len(ls) != 1 {
				t.Errorf("leases through the auto store: %v %v", ls, err)
			}
		})
	}
}

func TestWaitsForAConfigInEither(t *testing.T) {
	ctx := context.Background()
	v3, v2 := leasetest.New(nil), leasetest.New(nil)
	s := newAuto(fake{v3}, fake{v2}, nil)
	if _, err := s.Config(ctx); !errors.Is(err, lease.ErrNoConfig) {
		t.Fatalf("no config anywhere: got %v, want ErrNoConfig", err)
	}
	if _, _, err := s.Leases(ctx); err == nil {
		t.Error("Leases before a keyspace is chosen must fail")
	}
	_ = v2.PutConfig(ctx, []byte(`{}`)) // the tutorial's `etcdctl set`
	if _, err := s.Config(ctx); err != nil || s.API() != "v2" {
		t.Errorf("config written later to v2: %v, api %q", err, s.API())
	}
}

func TestV2DisabledIsNotFound(t *testing.T) {
	ctx := context.Background()
	v3, v2 := leasetest.New(nil), leasetest.New(nil)
	v2.SetDown(true) // an etcd without the v2 API
	if _, err := newAuto(fake{v3}, fake{v2}, nil).Config(ctx); !errors.Is(err, lease.ErrNoConfig) {
		t.Errorf("got %v, want ErrNoConfig when v3 answers and v2 is off", err)
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// fake is the in-memory store with what Store needs besides.
type fake struct{ *leasetest.Store }

func (fake) Prefix() string { return DefaultPrefix }
func (fake) Close() error   { return nil }

func TestChooseFallsBackToV3(t *testing.T) {
	ctx := context.Background()
	v3, v2 := leasetest.New(nil), leasetest.New(nil)
	s := newAuto(fake{v3}, fake{v2}, nil)
	if api, err := s.Choose(ctx); err != nil || api != "v3" {
		t.Fatalf("Choose with no config anywhere = %q, %v; want v3", api, err)
	}
	if err := s.PutConfig(ctx, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := v3.Config(ctx); err != nil {
		t.Errorf("config not written to v3: %v", err)
	}

	v3, v2 = leasetest.New(nil), leasetest.New(nil)
	_ = v2.PutConfig(ctx, []byte(`{}`))
	if api, err := newAuto(fake{v3}, fake{v2}, nil).Choose(ctx); err != nil || api != "v2" {
		t.Fatalf("Choose with the config in v2 = %q, %v; want v2", api, err)
	}

	v3, v2 = leasetest.New(nil), leasetest.New(nil)
	v3.SetDown(true)
	v2.SetDown(true)
	if api, err := newAuto(fake{v3}, fake{v2}, nil).Choose(ctx); err == nil {
		t.Fatalf("Choose with etcd down = %q, want an error", api)
	}
}

package status_test

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel/internal/doctor"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/lease/leasetest"
	"github.com/flannel-go/flannel/internal/status"
	"github.com/flannel-go/flannel/internal/subnetenv"
)

type store struct{ *leasetest.Store }

func (store) Prefix() string { return "/coreos.com/network" }

type links map[string]doctor.Link

func (l links) Link(name string) (doctor.Link, error) {
	if k, ok := l[name]; ok {
		return k, nil
	}
	return doctor.Link{}, doctor.ErrNoLink
}

func TestCollect(t *testing.T) {
	ctx := context.Background()
	s := leasetest.New(nil)
	if err := s.PutConfig(ctx, []byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)); err != nil {
		t.Fatal(err)
	}
	own, err := s.Create(ctx, lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.0.1"), BackendType: "vxlan"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.5.2.0/24", "10.5.3.0/24"} {
		ttl := time.Hour
		if p == "10.5.3.0/24" {
			ttl = 0 // a reservation
		}
		if _, err := s.Create(ctx, lease.Lease{Subnet: netip.MustParsePrefix(p), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.0.9")}}, ttl); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), "subnet.env")
	if err := subnetenv.Write(file, subnetenv.Env{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix("10.5.1.1/24"), MTU: 1450}); err != nil {
		t.Fatal(err)
	}
	o := status.Options{SubnetFile: file}

	st := status.Collect(ctx, o, store{s}, nil, links{"flannel.1": {Name: "flannel.1", Up: true, MTU: 1450}})
	if len(st.Problems) != 0 || st.Backend != "vxlan" || st.Peers != 2 || st.Reservations != 1 ||
		st.Lease == nil || st.Lease.Subnet != "10.5.1.0/24" || st.Lease.Expires == nil || st.Lease.Key != "/coreos.com/network/subnets/10.5.1.0-24" ||
		st.Device == nil || st.Device.State != "up" {
		t.Fatalf("healthy host: %+v", st)
	}
	var out bytes.Buffer
	if err := status.Print(&out, st); err != nil || !strings.Contains(out.String(), "flannel.1 up, MTU 1450") || !strings.Contains(out.String(), "2 (1 of them reservations)") {
		t.Errorf("table:\n%s", out.String())
	}

	if err := s.Revoke(ctx, own); err != nil {
		t.Fatal(err)
	}
	st = status.Collect(ctx, o, store{s}, nil, links{})
	if want := []string{"no lease for 10.5.1.0/24", "flannel.1 does not exist"}; len(st.Problems) != 2 ||
		!strings.Contains(st.Problems[0], want[0]) || !strings.Contains(st.Problems[1], want[1]) {
		t.Errorf("lost lease, no device: problems %q, want %q", st.Problems, want)
	}

	st = status.Collect(ctx, status.Options{SubnetFile: filepath.Join(t.TempDir(), "none")}, nil, errors.New("connection refused"), links{})
	if len(st.Problems) != 2 || !strings.Contains(st.Problems[1], "etcd: connection refused") || st.SubnetEnvError == "" {
		t.Errorf("nothing there: %+v", st)
	}
}

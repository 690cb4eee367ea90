package alloc

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
)

func TestAlloc(t *testing.T) {
	ext := iface.ExtIface{Name: "eth0", Index: 2, MTU: 9001,
		IfaceAddr: netip.MustParseAddr("10.0.0.5"), ExtAddr: netip.MustParseAddr("203.0.113.5")}
	b, err := New(backend.Config{Options: json.RawMessage(`{"Type":"alloc"}`), Ext: ext})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	attrs, err := b.Init(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// On the wire: the public IP and nothing else, as upstream writes it.
	if got, err := json.Marshal(attrs); err != nil || string(got) != `{"PublicIP":"203.0.113.5","PublicIPv6":null}` {
		t.Errorf("lease value %s, %v", got, err)
	}
	mtu, err := b.Configure(ctx, lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: attrs})
	if err != nil || mtu != 9001 {
		t.Errorf("Configure = %d, %v; want the interface's 9001", mtu, err)
	}
	if err := b.Sync(ctx, []lease.Lease{{Subnet: netip.MustParsePrefix("10.5.2.0/24")}}); err != nil {
		t.Error(err)
	}
	if err := b.Repair(ctx); err != nil {
		t.Error(err)
	}
	if err := b.Close(); err != nil {
		t.Error(err)
	}
}

func TestAllocRejectsMalformedOptions(t *testing.T) {
	if _, err := New(backend.Config{Options: json.RawMessage(`"alloc"`)}); err == nil {
		t.Error("New accepted a string as the Backend object")
	}
	if _, err := New(backend.Config{}); err != nil {
		t.Errorf("New without options: %v", err)
	}
}

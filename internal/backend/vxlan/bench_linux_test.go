package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/netnstest"
	"github.com/flannel-go/flannel/internal/route"
	"github.com/flannel-go/flannel/internal/route/routetest"
)

// benchBackend is a backend on a host of its own in a 10.0.0.0/8 network
// (room for thousands of /24 subnets), with n peer leases ready.
func benchBackend(b *testing.B, n int) (*Backend, []lease.Lease) {
	netnstest.SkipUnlessModule(b, "vxlan")
	lab := routetest.NewLab(b, "fbk")
	h := lab.AddHost(netip.MustParsePrefix("172.16.0.1/12"))
	cfg := &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 24, BackendType: Type}
	bb, err := New(backend.Config{Options: json.RawMessage(`{"Type":"vxlan"}`), Network: cfg, Ext: h.Ext})
	if err != nil {
		b.Fatal(err)
	}
	bk := bb.(*Backend)
	b.Cleanup(func() { _ = bk.Close() })
	own := lease.Lease{Subnet: netip.MustParsePrefix("10.255.0.0/24")}
	if err := h.NS.Do(func() error {
		if _, err := bk.Init(context.Background()); err != nil {
			return err
		}
		_, err := bk.Configure(context.Background(), own)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	peers := make([]lease.Lease, n)
	for i := range peers {
		j := i + 1
		mac := route.MAC{2, 0, 0, byte(j >> 16), byte(j >> 8), byte(j)}
		peers[i] = lease.Lease{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(j >> 8), byte(j), 0}), 24),
			Attrs: lease.Attrs{
				PublicIP:    netip.AddrFrom4([4]byte{172, 17, byte(j >> 8), byte(j)}),
				BackendType: Type,
				BackendData: encodeBackendData(1, mac),
			},
		}
	}
	return bk, peers
}

func syncOrFatal(b *testing.B, bk *Backend, peers []lease.Lease) {
	if err := bk.Sync(context.Background(), peers); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSync measures a Sync that installs 5,000 peers from nothing
// (15,000 kernel entries) and one that adds a single peer to 5,000.
func BenchmarkSync(b *testing.B) {
	const n = 5000
	bk, peers := benchBackend(b, n+1)

	b.Run("5000 new peers", func(b *testing.B) {
		for range b.N {
			syncOrFatal(b, bk, peers[:n])
			b.StopTimer()
			syncOrFatal(b, bk, nil)
			b.StartTimer()
		}
	})
	b.Run("1 new peer on 5000", func(b *testing.B) {
		syncOrFatal(b, bk, peers[:n])
		b.ResetTimer()
		for range b.N {
			syncOrFatal(b, bk, peers[:n+1])
			b.StopTimer()
			syncOrFatal(b, bk, peers[:n])
			b.StartTimer()
		}
	})
	b.Run("5000 unchanged peers", func(b *testing.B) {
		syncOrFatal(b, bk, peers[:n])
		b.ResetTimer()
		for range b.N {
			syncOrFatal(b, bk, peers[:n])
		}
	})
	b.Run("repair of 5000 peers", func(b *testing.B) {
		syncOrFatal(b, bk, peers[:n])
		b.ResetTimer()
		for range b.N {
			if err := bk.Repair(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkUpdate measures, at 1,000, 10,000 and 65,000 peers, what one
// new peer costs through Update (flat in N) and through Sync (linear), and
// what a Repair pass costs (its dumps and diff are linear in N).
func BenchmarkUpdate(b *testing.B) {
	for _, n := range []int{1000, 10000, 65000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			bk, peers := benchBackend(b, n+1)
			syncOrFatal(b, bk, peers[:n])
			add := []backend.Change{{Lease: peers[n]}}
			del := []backend.Change{{Lease: lease.Lease{Subnet: peers[n].Subnet}, Removed: true}}
			b.Run("1 new peer by Update", func(b *testing.B) {
				for range b.N {
					updateOrFatal(b, bk, add)
					b.StopTimer()
					updateOrFatal(b, bk, del)
					b.StartTimer()
				}
			})
			b.Run("1 new peer by Sync", func(b *testing.B) {
				for range b.N {
					syncOrFatal(b, bk, peers[:n+1])
					b.StopTimer()
					syncOrFatal(b, bk, peers[:n])
					b.StartTimer()
				}
			})
			b.Run("repair", func(b *testing.B) {
				for range b.N {
					if err := bk.Repair(context.Background()); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

func updateOrFatal(b *testing.B, bk *Backend, changes []backend.Change) {
	if err := bk.Update(context.Background(), changes); err != nil {
		b.Fatal(err)
	}
}

package doctor

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/backend/wireguard"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

// wgSys is a fakeSys with WireGuard devices.
type wgSys struct {
	*fakeSys
	devs map[string]WGDevice
}

func (s *wgSys) WireGuard(dev string) (WGDevice, error) {
	d, ok := s.devs[dev]
	if !ok {
		return WGDevice{}, ErrNoLink
	}
	return d, nil
}

func wgKey(t *testing.T) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

// healthyWG is a wireguard host with two peers on which nothing is wrong.
func healthyWG(t *testing.T) (*wgSys, Input, []wgtypes.Key) {
	fs, in := healthy(t)
	cfg, err := netconf.Parse([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`))
	if err != nil {
		t.Fatal(err)
	}
	in.Config = cfg
	in.Env.MTU = 1420
	keys := []wgtypes.Key{wgKey(t), wgKey(t), wgKey(t)}
	in.Leases = nil
	dev := WGDevice{PublicKey: keys[0].String(), ListenPort: 51820}
	for i, sn := range []netip.Prefix{own, peer2, peer3} {
		ip := netip.AddrFrom4([4]byte{192, 168, 1, byte(i + 1)})
		in.Leases = append(in.Leases, lease.Lease{Subnet: sn, ID: 7, Expires: time.Now().Add(23 * time.Hour), Attrs: lease.Attrs{
			PublicIP: ip, BackendType: wireguard.Type,
			BackendData: wireguard.LeaseData{PublicKey: keys[i], Port: 51820}.Encode(),
		}})
		if i > 0 {
			dev.Peers = append(dev.Peers, WGPeer{PublicKey: keys[i].String(), Endpoint: netip.AddrPortFrom(ip, 51820),
				AllowedIPs: []netip.Prefix{sn}, LastHandshake: time.Now().Add(-10 * time.Second)})
		}
	}
	delete(fs.links, "flannel.1")
	fs.links["flannel-wg"] = Link{Name: "flannel-wg", Index: 5, Up: true, MTU: 1420, Addrs: []netip.Prefix{netip.MustParsePrefix("10.5.1.0/32")}}
	fs.links["docker0"] = Link{Name: "docker0", Index: 6, Up: true, MTU: 1420, Addrs: []netip.Prefix{netip.MustParsePrefix("10.5.1.1/24")}}
	return &wgSys{fakeSys: fs, devs: map[string]WGDevice{"flannel-wg": dev}}, in, keys
}

func TestWireGuardFindings(t *testing.T) {
	sys, in, _ := healthyWG(t)
	fs := Run(context.Background(), sys, in)
	var wg []Finding
	for _, f := range fs {
		if f.Level != OK && f.Level != Skip {
			t.Errorf("healthy wireguard host: %s", f)
		}
		if f.Check == "wireguard" {
			wg = append(wg, f)
		}
	}
	if len(wg) != 1 || !strings.Contains(wg[0].Message, "2 of 2 peers") {
		t.Errorf("wireguard findings %v, want one OK about 2 of 2 peers", wg)
	}

	for _, tc := range []struct {
		name   string
		mutate func(*wgSys, *Input, []wgtypes.Key)
		level  Level
		want   []string
	}{
		{"no handshake", func(s *wgSys, _ *Input, _ []wgtypes.Key) {
			d := s.devs["flannel-wg"]
			d.Peers[0].LastHandshake = time.Time{}
			s.devs["flannel-wg"] = d
		}, Fail, []string{"10.5.2.0/24", "no handshake", "PSK"}},
		{"old handshake", func(s *wgSys, _ *Input, _ []wgtypes.Key) {
			d := s.devs["flannel-wg"]
			d.Peers[1].LastHandshake = time.Now().Add(-10 * time.Minute)
			s.devs["flannel-wg"] = d
		}, Warn, []string{"10.5.3.0/24", "last handshake 10m ago"}},
		{"port", func(s *wgSys, _ *Input, _ []wgtypes.Key) {
			d := s.devs["flannel-wg"]
			d.ListenPort = 51821
			s.devs["flannel-wg"] = d
		}, Fail, []string{"listens on port 51821", "announces port 51820"}},
		{"key", func(s *wgSys, _ *Input, _ []wgtypes.Key) {
			d := s.devs["flannel-wg"]
			d.PublicKey = wgKey(t).String()
			s.devs["flannel-wg"] = d
		}, Fail, []string{"but this host's lease announces"}},
		{"stale", func(s *wgSys, _ *Input, _ []wgtypes.Key) {
			d := s.devs["flannel-wg"]
			d.Peers = append(d.Peers, WGPeer{PublicKey: "c3RhbGVzdGFsZXN0YWxlc3RhbGVzdGFsZXN0YWxlMDA="})
			s.devs["flannel-wg"] = d
		}, Warn, []string{"1 stale peer", "c3RhbGVzdGFs"}},
		{"missing peer", func(s *wgSys, _ *Input, _ []wgtypes.Key) {
			d := s.devs["flannel-wg"]
			d.Peers = d.Peers[1:]
			s.devs["flannel-wg"] = d
		}, Fail, []string{"10.5.2.0/24", "has no peer with its key"}},
		{"advertised port not the one used", func(s *wgSys, in *Input, keys []wgtypes.Key) {
			in.Leases[1].Attrs.BackendData = json.RawMessage(`{"PublicKey":"` + keys[1].String() + `","Port":51821}`)
		}, Warn, []string{"announces port 51821", ":51820"}},
		{"psk", func(s *wgSys, in *Input, _ []wgtypes.Key) {
			in.Config.Backend = json.RawMessage(`{"Type":"wireguard","PSK":"GGZ+XEaV7qd6tdx+rCTgUG56ldO6CLnbvtx0n9lE8Ds="}`)
		}, Fail, []string{"2 of 2 peers", "PSK other than the one in the network config"}},
		{"no device", func(s *wgSys, _ *Input, _ []wgtypes.Key) { delete(s.devs, "flannel-wg") }, Fail, []string{"cannot read WireGuard device flannel-wg"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys, in, keys := healthyWG(t)
			tc.mutate(sys, &in, keys)
			fs := Run(context.Background(), sys, in)
			for _, f := range fs {
				if f.Check != "wireguard" || f.Level != tc.level {
					continue
				}
				if !containsAll(f.Message, tc.want) {
					continue
				}
				if f.Fix == "" {
					t.Errorf("no fix: %s", f)
				}
				return
			}
			t.Errorf("no %s wireguard finding with %q in:\n%v", tc.level, tc.want, fs)
		})
	}
}

func containsAll(s string, subs []string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}

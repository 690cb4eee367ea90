package wireguard

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
)

const testPSK = "GGZ+XEaV7qd6tdx+rCTgUG56ldO6CLnbvtx0n9lE8Ds="

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig(json.RawMessage(`{"Type":"wireguard"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{ListenPort: 51820, ListenPortV6: 51821, Mode: ModeSeparate}
	if c != want {
		t.Errorf("defaults = %+v, want %+v", c, want)
	}
	c, err = ParseConfig(json.RawMessage(`{"listenport":1000,"ListenPortV6":1001,"PSK":"` + testPSK + `","MTU":1400,"Mode":"auto","PersistentKeepaliveInterval":25}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.ListenPort != 1000 || c.ListenPortV6 != 1001 || c.MTU != 1400 || c.Mode != ModeAuto || c.Keepalive != 25*time.Second || c.PSK == nil || c.PSK.String() != testPSK {
		t.Errorf("got %+v", c)
	}
	for _, tc := range []struct{ in, want string }{
		{`{"ListenPort":0}`, "ListenPort: 0"},
		{`{"ListenPort":70000}`, "ListenPort: 70000"},
		{`{"ListenPortV6":-1}`, "ListenPortV6"},
		{`{"ListenPort":"51820"}`, "ListenPort"},
		{`{"MTU":100}`, "MTU: 100"},
		{`{"MTU":-1}`, "MTU"},
		{`{"Mode":"both"}`, `Mode: "both"`},
		{`{"Mode":"Auto"}`, `Mode: "Auto"`},
		{`{"PSK":"c2VjcmV0"}`, "PSK"},
		{`{"PersistentKeepaliveInterval":"25s"}`, "PersistentKeepaliveInterval"},
		{`{"PersistentKeepaliveInterval":-5}`, "PersistentKeepaliveInterval"},
		{`{"PersistentKeepaliveInterval":70000}`, "PersistentKeepaliveInterval"},
		{`[1]`, "backend options"},
	} {
		_, err := ParseConfig(json.RawMessage(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfig(%s) = %v, want an error naming %q", tc.in, err, tc.want)
		}
	}
	// A bad PSK's value is a secret: never in the message.
	if _, err := ParseConfig(json.RawMessage(`{"PSK":"notsosecretbutstill"}`)); err == nil || strings.Contains(err.Error(), "notsosecret") {
		t.Errorf("PSK error %v must not print the value", err)
	}
}

func TestLeaseData(t *testing.T) {
	k := mustKey(t).PublicKey()
	d := LeaseData{PublicKey: k, Port: 51820}
	raw := d.Encode()
	if want := `{"PublicKey":"` + k.String() + `","Port":51820}`; string(raw) != want {
		t.Errorf("Encode = %s, want upstream's %s", raw, want)
	}
	got, err := DecodeLeaseData(raw)
	if err != nil || got != d {
		t.Errorf("round trip: %+v, %v", got, err)
	}
	if got, err := DecodeLeaseData(json.RawMessage(`{"PublicKey":"` + k.String() + `"}`)); err != nil || got.Port != 0 {
		t.Errorf("no Port (older upstream): %+v, %v", got, err)
	}
	for _, tc := range []struct{ in, want string }{
		{``, "no BackendData"},
		{`null`, "no BackendData"},
		{`{}`, "no PublicKey"},
		{`{"PublicKey":""}`, "no PublicKey"},
		{`{"PublicKey":"abc"}`, "not a WireGuard key"},
		{`{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`, "all zeros"},
		{`{"PublicKey":"` + k.String() + `","Port":70000}`, "Port"},
		{`{"PublicKey":1}`, "BackendData"},
		{`"x"`, "BackendData"},
	} {
		if _, err := DecodeLeaseData(json.RawMessage(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("DecodeLeaseData(%s) = %v, want an error about %q", tc.in, err, tc.want)
		}
	}
}

func TestValidatePeer(t *testing.T) {
	k := mustKey(t).PublicKey()
	good := LeaseData{PublicKey: k, Port: 51820}.Encode()
	l := func(d4, d6 string) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{BackendType: Type, BackendData: json.RawMessage(d4), BackendV6Data: json.RawMessage(d6)}}
	}
	if err := Info.CheckPeer(l(string(good), "")); err != nil {
		t.Errorf("good lease: %v", err)
	}
	if err := Info.CheckPeer(l("", string(good))); err != nil {
		t.Errorf("v6-only lease: %v", err)
	}
	for _, tc := range []struct{ d4, d6, want string }{
		{"", "", "PublicKey"},
		{`{"Port":51820}`, "", "PublicKey"},
		{`{"PublicKey":"bad"}`, "", "not a WireGuard key"},
		{string(good), `{"PublicKey":"bad"}`, "BackendV6Data"},
	} {
		if err := Info.CheckPeer(l(tc.d4, tc.d6)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckPeer(%s, %s) = %v, want an error about %q", tc.d4, tc.d6, err, tc.want)
		}
	}
	other := l(string(good), "")
	other.Attrs.BackendType = "vxlan"
	if err := Info.CheckPeer(other); err == nil {
		t.Error("a vxlan lease passed the wireguard backend's check")
	}
}

func TestNewValidates(t *testing.T) {
	good := func() backend.Config {
		return backend.Config{
			Options: json.RawMessage(`{"Type":"wireguard"}`),
			Network: &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24},
			Ext:     iface.ExtIface{Name: "eth0", MTU: 1500, IfaceAddr: netip.MustParseAddr("192.168.1.5")},
		}
	}
	if _, err := (Options{}).New(good()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*backend.Config)
		want   string
	}{
		{"mode", func(c *backend.Config) { c.Options = json.RawMessage(`{"Mode":"x"}`) }, "Mode"},
		{"psk", func(c *backend.Config) { c.Options = json.RawMessage(`{"PSK":"x"}`) }, "PSK"},
		{"no network", func(c *backend.Config) { c.Network = nil }, "network"},
		{"ipv6 mode without v6", func(c *backend.Config) { c.Options = json.RawMessage(`{"Mode":"ipv6"}`) }, "EnableIPv6"},
	} {
		c := good()
		tc.mutate(&c)
		if _, err := (Options{}).New(c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v; want an error about %s", tc.name, err, tc.want)
		}
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "wgkey")
	k1, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("first: %v, created %v", err, created)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o400 {
		t.Errorf("key file mode %v (%v), want 0400", st.Mode().Perm(), err)
	}
	k2, created, err := LoadOrCreateKey(path)
	if err != nil || created || k2 != k1 {
		t.Errorf("second: %v, created %v, same key %v: a restart must keep the key", err, created, k2 == k1)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d files, want only the key (no temporary left)", len(entries))
	}
	// `wg genkey > file` works too.
	own := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(own, []byte(k1.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, _, err := LoadOrCreateKey(own); err != nil || k != k1 {
		t.Errorf("wg genkey file: %v", err)
	}
	for _, bad := range []string{"", "garbage\n", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", strings.Repeat("x", 5000)} {
		p := filepath.Join(t.TempDir(), "k")
		if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := LoadOrCreateKey(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("key file %q: %v, want an error naming the file", bad, err)
		}
		if b, _ := os.ReadFile(p); string(b) != bad {
			t.Errorf("a malformed key file was overwritten")
		}
	}
}

func TestKeyFileRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wgkey")
	other := mustKey(t)
	// Another process links its key in between our read and our link.
	if err := writeKey(path, other); err != nil {
		t.Fatal(err)
	}
	err := writeKey(path, mustKey(t))
	var r errRaced
	if !errors.As(err, &r) || r.k != other {
		t.Errorf("writeKey over an existing file = %v, want the other key back", err)
	}
}

func mustKey(t testing.TB) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The doctor and status look for the device Info.Device names: on an
// IPv6-only network in separate mode that is flannel-wg-v6, the only
// device flanneld creates there.
func TestInfoDevice(t *testing.T) {
	for _, tc := range []struct {
		opts string
		ipv4 bool
		want string
	}{
		{``, true, DeviceV4},
		{`{}`, false, DeviceV6},
		{`{"Mode":"separate"}`, false, DeviceV6},
		{`{"Mode":"auto"}`, false, DeviceV4},
		{`{"Mode":"ipv6"}`, false, DeviceV4},
		{`{"Mode":"bogus"}`, false, DeviceV6},
		{`{"Mode":"auto"}`, true, DeviceV4},
	} {
		if got := Info.Device(json.RawMessage(tc.opts), nil, tc.ipv4); got != tc.want {
			t.Errorf("Device(%s, ipv4=%v) = %q, want %q", tc.opts, tc.ipv4, got, tc.want)
		}
	}
}

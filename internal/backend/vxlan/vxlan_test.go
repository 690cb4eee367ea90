package vxlan

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/iface"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/netconf"
	"github.com/flannel-go/flannel/internal/route"
)

func netConf() *netconf.Config {
	return &netconf.Config{EnableIPv4: true, Network: netip.MustParsePrefix("10.5.0.0/16"), SubnetLen: 24, BackendType: Type}
}

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Options
		// wantErr lists what the error must mention: the key and the value.
		wantErr []string
	}{
		{in: ``, want: Options{VNI: 1}},
		{in: `null`, want: Options{VNI: 1}},
		{in: `{"Type":"vxlan"}`, want: Options{VNI: 1}},
		{in: `{"Type":"vxlan","VNI":null}`, want: Options{VNI: 1}},
		{
			in:   `{"type":"vxlan","vni":42,"port":4789,"gbp":true,"learning":true,"directrouting":true,"mtu":9000}`,
			want: Options{VNI: 42, Port: 4789, GBP: true, Learning: true, DirectRouting: true, MTU: 9000},
		},
		{in: `{"VNI":16777215,"Port":65535,"MTU":118}`, want: Options{VNI: 16777215, Port: 65535, MTU: 118}},
		{in: `{"MacPrefix":"0E-2A","Name":"vxlan0"}`, want: Options{VNI: 1}},
		{in: `{"VNI":0}`, wantErr: []string{"VNI", "0"}},
		{in: `{"VNI":-3}`, wantErr: []string{"VNI", "-3"}},
		{in: `{"VNI":16777216}`, wantErr: []string{"VNI", "16777216"}},
		{in: `{"Port":65536}`, wantErr: []string{"Port", "65536"}},
		{in: `{"Port":-1}`, wantErr: []string{"Port", "-1"}},
		{in: `{"MTU":117}`, wantErr: []string{"MTU", "117"}},
		{in: `{"MTU":-1}`, wantErr: []string{"MTU", "-1"}},
		{in: `{"MTU":70000}`, wantErr: []string{"MTU", "70000"}},
		{in: `{"VNI":"1"}`, wantErr: []string{"VNI", "string"}},
		{in: `{"VNI":1.5}`, wantErr: []string{"VNI", "1.5"}},
		{in: `{"GBP":"yes"}`, wantErr: []string{"GBP", "string"}},
		{in: `{"DirectRouting":1}`, wantErr: []string{"DirectRouting", "number"}},
		{in: `[1]`, wantErr: []string{"vxlan"}},
		{in: `{"VNI":`, wantErr: []string{"vxlan"}},
	} {
		got, err := ParseOptions(json.RawMessage(tc.in))
		if tc.wantErr != nil {
			if err == nil {
				t.Errorf("ParseOptions(%s) = %+v, want an error", tc.in, got)
				continue
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ParseOptions(%s) error %q does not mention %q", tc.in, err, w)
				}
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseOptions(%s) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestNewValidates(t *testing.T) {
	ext := iface.ExtIface{Name: "eth0", Index: 2, MTU: 1500}
	if _, err := New(backend.Config{Options: json.RawMessage(`{"VNI":0}`), Network: netConf(), Ext: ext}); err == nil {
		t.Error("New accepted VNI 0")
	}
	v6only := &netconf.Config{EnableIPv6: true, IPv6Network: netip.MustParsePrefix("fc00::/48")}
	if _, err := New(backend.Config{Network: v6only, Ext: ext}); err == nil || !strings.Contains(err.Error(), "IPv4") {
		t.Errorf("New on an IPv6-only network: %v, want an error about IPv4", err)
	}
	if _, err := New(backend.Config{Options: json.RawMessage(`{"Type":"vxlan"}`), Network: netConf(), Ext: ext}); err != nil {
		t.Errorf("New: %v", err)
	}
}

func TestBackendDataWireFormat(t *testing.T) {
	mac, _ := route.ParseMAC("c6:d2:32:6f:8f:44")
	if got, want := string(encodeBackendData(1, mac)), `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`; got != want {
		t.Errorf("encoded %s, want %s", got, want)
	}
	// What upstream writes, including key case variations a hand edit
	// could produce.
	for _, in := range []string{
		`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`,
		`{"VtepMAC":"C6:D2:32:6F:8F:44","VNI":1}`,
		`{"vni":1,"vtepmac":"c6:d2:32:6f:8f:44"}`,
	} {
		vni, m, err := decodeBackendData(json.RawMessage(in))
		if err != nil || vni != 1 || m != mac {
			t.Errorf("decode %s = %d, %v, %v", in, vni, m, err)
		}
	}
	for _, in := range []string{
		``, `null`, `{}`, `{"VNI":1}`, `{"VNI":0,"VtepMAC":"c6:d2:32:6f:8f:44"}`,
		`{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`, `{"VNI":1,"VtepMAC":"33:33:00:00:00:01"}`,
		`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44:00:01"}`, `{"VNI":"1","VtepMAC":"c6:d2:32:6f:8f:44"}`,
	} {
		if vni, m, err := decodeBackendData(json.RawMessage(in)); err == nil {
			t.Errorf("decode %s = %d, %v; want an error", in, vni, m)
		}
	}
}

func FuzzParseOptions(f *testing.F) {
	for _, s := range []string{
		`{"Type":"vxlan"}`, `{"VNI":4096,"Port":4789,"GBP":true,"MTU":1400}`, `{"vni":0}`,
		`{"DirectRouting":true,"Learning":false}`, `null`, `{"VNI":1e3}`, `{"MTU":"1400"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		o, err := ParseOptions(in)
		if err != nil {
			return
		}
		if o.VNI < 1 || o.VNI > maxVNI || o.Port < 0 || o.Port > 65535 || (o.MTU != 0 && o.MTU-overhead < minMTU) {
			t.Fatalf("ParseOptions(%q) accepted %+v", in, o)
		}
		// What it accepted means the same when written back.
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		o2, err := ParseOptions(b)
		if err != nil || o2 != o {
			t.Fatalf("round trip of %+v: %+v, %v", o, o2, err)
		}
	})
}

func FuzzDecodeBackendData(f *testing.F) {
	for _, s := range []string{
		`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, `{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`,
		`{"VNI":16777216,"VtepMAC":"c6:d2:32:6f:8f:44"}`, `{"VtepMAC":"c6d2.326f.8f44","VNI":7}`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		vni, mac, err := decodeBackendData(in)
		if err != nil {
			return
		}
		if vni < 1 || vni > maxVNI || !mac.IsUnicast() {
			t.Fatalf("decode(%q) accepted VNI %d MAC %v", in, vni, mac)
		}
		vni2, mac2, err := decodeBackendData(encodeBackendData(vni, mac))
		if err != nil || vni2 != vni || mac2 != mac {
			t.Fatalf("round trip of %d %v: %d %v %v", vni, mac, vni2, mac2, err)
		}
	})
}

// encodeBackendData and decodeBackendData are the codec in the shape the
// tests above were written against.
func encodeBackendData(vni int, mac route.MAC) json.RawMessage {
	return LeaseData{VNI: vni, VtepMAC: mac}.Encode()
}

func decodeBackendData(raw json.RawMessage) (int, route.MAC, error) {
	d, err := DecodeLeaseData(raw)
	return d.VNI, d.VtepMAC, err
}

func TestInfo(t *testing.T) {
	l := func(typ, data string) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{
			PublicIP: netip.MustParseAddr("192.168.100.9"), BackendType: typ, BackendData: json.RawMessage(data)}}
	}
	good := `{"VNI":1,"VtepMAC":"02:00:00:00:00:09"}`
	if err := Info.CheckPeer(l(Type, good)); err != nil {
		t.Errorf("CheckPeer(good lease) = %v", err)
	}
	for _, bad := range []lease.Lease{l("host-gw", good), l(Type, ""), l(Type, `{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`)} {
		if err := Info.CheckPeer(bad); err == nil {
			t.Errorf("CheckPeer accepted %s %s", bad.Attrs.BackendType, bad.Attrs.BackendData)
		}
	}
	for _, tc := range []struct{ opts, own, want string }{
		{``, ``, "flannel.1"},
		{`{"Type":"vxlan","VNI":7}`, ``, "flannel.7"},
		{`{"VNI":7,"Port":"bad"}`, ``, "flannel.7"},
		{`{"VNI":7}`, `{"VNI":9,"VtepMAC":"02:00:00:00:00:09"}`, "flannel.9"},
		{`[`, `{"VNI":0}`, "flannel.1"},
	} {
		if got := Info.Device(json.RawMessage(tc.opts), json.RawMessage(tc.own), true); got != tc.want {
			t.Errorf("Device(%s, %s) = %q, want %q", tc.opts, tc.own, got, tc.want)
		}
	}
	if Info.Overhead != 50 || !Info.TypedLeases {
		t.Errorf("Info = %+v: want overhead 50 and typed leases", Info)
	}
}

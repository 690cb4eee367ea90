package lease_test

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

func TestMakeKey(t *testing.T) {
	tests := []struct {
		sn, sn6 string
		want    string
	}{
		{"10.5.34.0/24", "", "10.5.34.0-24"},
		{"10.5.0.128/25", "", "10.5.0.128-25"},
		{"10.5.52.0/24", "fc00:0:0:1::/64", "10.5.52.0-24&fc00:0:0:1::-64"},
		{"10.42.3.0/24", "2001:cafe:42:3::/64", "10.42.3.0-24&2001:cafe:42:3::-64"},
		{"192.168.7.20/30", "fc00::40/122", "192.168.7.20-30&fc00::40-122"},
	}
	for _, tt := range tests {
		var sn6 = invalidOr(tt.sn6)
		if got := lease.MakeKey(pfx(tt.sn), sn6); got != tt.want {
			t.Errorf("MakeKey(%s, %s) = %q, want %q", tt.sn, tt.sn6, got, tt.want)
		}
		l := lease.Lease{Subnet: pfx(tt.sn), Subnet6: sn6}
		if l.Key() != tt.want || l.String() != tt.want {
			t.Errorf("Lease.Key() = %q, String() = %q, want %q", l.Key(), l.String(), tt.want)
		}
	}
}

func invalidOr(s string) (p netip.Prefix) {
	if s != "" {
		p = pfx(s)
	}
	return p
}

func TestParseKey(t *testing.T) {
	tests := []struct {
		key     string
		sn, sn6 string // empty sn: an error is expected
	}{
		{"10.5.34.0-24", "10.5.34.0/24", ""},
		{"10.5.52.0-24&fc00:0:0:1::-64", "10.5.52.0/24", "fc00:0:0:1::/64"},
		{"10.5.52.0-24&FC00:0:0:1::-64", "10.5.52.0/24", "fc00:0:0:1::/64"},
		{"10.5.52.0-24&fc00:0000:0000:0001:0000:0000:0000:0000-64", "10.5.52.0/24", "fc00:0:0:1::/64"},
		{"10.5.34.0-024", "10.5.34.0/24", ""},
		{"0.0.0.0-0", "0.0.0.0/0", ""},

		{"10.5.34.7-24", "", ""},                   // host bits
		{"10.5.34.0-33", "", ""},                   // too long
		{"10.5.34.0-99999999999999999999", "", ""}, // overflows
		{"10.5.34.0/24", "", ""},                   // CIDR, not a key
		{"10.5.34.0-24 ", "", ""},
		{" 10.5.34.0-24", "", ""},
		{"10.5.34.0--24", "", ""},
		{"10.5.34.0-+24", "", ""},
		{"010.5.34.0-24", "", ""}, // leading zero: ambiguous (octal?)
		{"256.5.34.0-24", "", ""},
		{"10.5.34-24", "", ""},
		{"١٠.5.34.0-24", "", ""}, // non-ASCII digits
		{"fc00::-64", "", ""},    // IPv6-only keys do not exist upstream
		{"10.5.34.0-24&", "", ""},
		{"10.5.34.0-24&fc00::1-64", "", ""},                  // v6 host bits
		{"10.5.34.0-24&fc00::-129", "", ""},                  // v6 too long
		{"10.5.34.0-24&::ffff:a05:2200-120", "", ""},         // v4-mapped
		{"10.5.34.0-24&10.5.35.0-24", "", ""},                // v4 in the v6 part
		{"10.5.34.0-24&fc00::-64&fd00::-64", "", ""},         // two v6 parts
		{"10.5.34.0-24&fe80::%eth0-64", "", ""},              // zone
		{"10.5.34.0-24&fc00:::-64", "", ""},                  // not an address
		{"/coreos.com/network/subnets/10.5.34.0-24", "", ""}, // full etcd key
		{"", "", ""},
	}
	for _, tt := range tests {
		sn, sn6, err := lease.ParseKey(tt.key)
		if tt.sn == "" {
			if err == nil {
				t.Errorf("ParseKey(%q) = %s, %s; want an error", tt.key, sn, sn6)
			}
			continue
		}
		if err != nil || sn != pfx(tt.sn) || sn6 != invalidOr(tt.sn6) {
			t.Errorf("ParseKey(%q) = %s, %s, %v; want %s, %s", tt.key, sn, sn6, err, tt.sn, tt.sn6)
		}
	}
}

func TestAttrsMarshalExactBytes(t *testing.T) {
	tests := []struct {
		name string
		in   lease.Attrs
		want string
	}{{
		name: "vxlan, as upstream writes it",
		in: lease.Attrs{
			PublicIP: addr("192.168.64.3"), BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`),
		},
		want: `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`,
	}, {
		name: "udp leases carry no BackendType",
		in:   lease.Attrs{PublicIP: addr("10.0.0.2")},
		want: `{"PublicIP":"10.0.0.2","PublicIPv6":null}`,
	}, {
		name: "dual stack vxlan",
		in: lease.Attrs{
			PublicIP: addr("192.168.64.3"), PublicIPv6: addr("2001:db8::3"), BackendType: "vxlan",
			BackendData:   json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`),
			BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"9a:1b:2c:3d:4e:5f"}`),
		},
		want: `{"PublicIP":"192.168.64.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"9a:1b:2c:3d:4e:5f"}}`,
	}, {
		name: "IPv6 only: PublicIP is 0.0.0.0",
		in:   lease.Attrs{PublicIPv6: addr("fc00::2"), BackendType: "host-gw"},
		want: `{"PublicIP":"0.0.0.0","PublicIPv6":"fc00::2","BackendType":"host-gw"}`,
	}, {
		name: "backend data is compacted; null data omitted",
		in: lease.Attrs{
			PublicIP: addr("10.0.0.2"), BackendType: "wireguard",
			BackendData: json.RawMessage("{ \"PublicKey\": \"k=\" ,\n \"Port\": 51820 }"), BackendV6Data: json.RawMessage(`null`),
		},
		want: `{"PublicIP":"10.0.0.2","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"k=","Port":51820}}`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Errorf("Marshal:\n got %s\nwant %s", b, tt.want)
			}
			var back lease.Attrs
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("Unmarshal(%s): %v", b, err)
			}
			if !back.Equal(tt.in) {
				t.Errorf("round trip: %+v, want %+v", back, tt.in)
			}
		})
	}
}

func TestAttrsUnmarshal(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *lease.Attrs // nil: an error is expected
	}{
		{"upstream vxlan", `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`,
			&lease.Attrs{PublicIP: addr("192.168.64.3"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)}},
		{"upstream udp", `{"PublicIP":"10.0.0.2","PublicIPv6":null}`, &lease.Attrs{PublicIP: addr("10.0.0.2")}},
		{"no PublicIPv6 key", `{"PublicIP":"10.0.0.2"}`, &lease.Attrs{PublicIP: addr("10.0.0.2")}},
		{"0.0.0.0 means unset", `{"PublicIP":"0.0.0.0","PublicIPv6":"fc00::2"}`, &lease.Attrs{PublicIPv6: addr("fc00::2")}},
		{"keys fold case, as encoding/json", `{"publicip":"10.0.0.2","backendtype":"host-gw"}`, &lease.Attrs{PublicIP: addr("10.0.0.2"), BackendType: "host-gw"}},
		{"unknown keys ignored", `{"PublicIP":"10.0.0.2","Extra":[1,2]}`, &lease.Attrs{PublicIP: addr("10.0.0.2")}},
		{"PublicIP is IPv6", `{"PublicIP":"fc00::1"}`, nil},
		{"PublicIP is junk", `{"PublicIP":"banana"}`, nil},
		{"PublicIP is a number", `{"PublicIP":167772162}`, nil},
		{"PublicIP with port", `{"PublicIP":"10.0.0.2:8285"}`, nil},
		{"PublicIPv6 is IPv4", `{"PublicIP":"10.0.0.2","PublicIPv6":"10.0.0.3"}`, nil},
		{"PublicIPv6 is v4-mapped", `{"PublicIP":"10.0.0.2","PublicIPv6":"::ffff:10.0.0.3"}`, nil},
		{"PublicIPv6 with zone", `{"PublicIP":"10.0.0.2","PublicIPv6":"fe80::1%eth0"}`, nil},
		{"BackendData broken", `{"PublicIP":"10.0.0.2","BackendData":{"VNI":}}`, nil},
		{"not an object", `["10.0.0.2"]`, nil},
		{"truncated", `{"PublicIP":"10.0.0.2"`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got lease.Attrs
			err := json.Unmarshal([]byte(tt.in), &got)
			switch {
			case tt.want == nil && err == nil:
				t.Errorf("Unmarshal(%s) = %+v, want an error", tt.in, got)
			case tt.want != nil && err != nil:
				t.Errorf("Unmarshal(%s): %v", tt.in, err)
			case tt.want != nil && !got.Equal(*tt.want):
				t.Errorf("Unmarshal(%s) = %+v, want %+v", tt.in, got, *tt.want)
			}
		})
	}
}

// Decoding must not alias the input: etcd client buffers are reused.
func TestAttrsUnmarshalCopiesBackendData(t *testing.T) {
	in := []byte(`{"PublicIP":"10.0.0.2","BackendType":"vxlan","BackendData":{"VNI":1}}`)
	var a lease.Attrs
	if err := json.Unmarshal(in, &a); err != nil {
		t.Fatal(err)
	}
	for i := range in {
		in[i] = 'x'
	}
	if string(a.BackendData) != `{"VNI":1}` {
		t.Errorf("BackendData changed with the input buffer: %s", a.BackendData)
	}
}

func TestAttrsEqual(t *testing.T) {
	a := lease.Attrs{PublicIP: addr("10.0.0.2"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1, "VtepMAC":"c6:d2:32:6f:8f:44"}`)}
	b := a
	b.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)
	if !a.Equal(b) {
		t.Error("attrs differing only in JSON whitespace are not Equal")
	}
	b.BackendV6Data = json.RawMessage(`null`) // written as absent, so equal to absent
	if !a.Equal(b) || !b.Equal(a) {
		t.Error("null BackendV6Data is not Equal to none")
	}
	for _, c := range []lease.Attrs{
		{PublicIP: addr("10.0.0.3"), BackendType: "vxlan", BackendData: b.BackendData},
		{PublicIP: addr("10.0.0.2"), PublicIPv6: addr("fc00::2"), BackendType: "vxlan", BackendData: b.BackendData},
		{PublicIP: addr("10.0.0.2"), BackendType: "host-gw", BackendData: b.BackendData},
		{PublicIP: addr("10.0.0.2"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":2,"VtepMAC":"c6:d2:32:6f:8f:44"}`)},
		{PublicIP: addr("10.0.0.2"), BackendType: "vxlan", BackendData: b.BackendData, BackendV6Data: json.RawMessage(`{}`)},
	} {
		if a.Equal(c) {
			t.Errorf("%+v Equal %+v", a, c)
		}
	}
}

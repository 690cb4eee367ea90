package lease_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"10.5.34.0-24", "10.5.52.0-24&fc00:0:0:1::-64", "10.5.52.0-24&FC00:0000::-64",
		"10.5.34.7-24", "10.5.34.0-33", "0.0.0.0-0", "10.5.34.0-24&::ffff:a05:2200-120",
		"10.5.34.0-0024", "fc00::-64", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		sn, sn6, err := lease.ParseKey(key)
		if err != nil {
			return
		}
		if !sn.Addr().Is4() || sn.Masked() != sn {
			t.Fatalf("ParseKey(%q) IPv4 subnet %s is not a canonical IPv4 prefix", key, sn)
		}
		if sn6.IsValid() && (!sn6.Addr().Is6() || sn6.Addr().Is4In6() || sn6.Masked() != sn6) {
			t.Fatalf("ParseKey(%q) IPv6 subnet %s is not a canonical IPv6 prefix", key, sn6)
		}
		// The key we would write for it parses back to the same subnets
		// and is its own canonical form.
		k := lease.MakeKey(sn, sn6)
		sn2, sn62, err := lease.ParseKey(k)
		if err != nil || sn2 != sn || sn62 != sn6 {
			t.Fatalf("ParseKey(%q) = %s, %s; MakeKey gives %q which parses to %s, %s, %v", key, sn, sn6, k, sn2, sn62, err)
		}
		if k2 := lease.MakeKey(sn2, sn62); k2 != k {
			t.Fatalf("MakeKey not stable: %q then %q", k, k2)
		}
	})
}

func FuzzAttrs(f *testing.F) {
	for _, s := range []string{
		`{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`,
		`{"PublicIP":"10.0.0.2","PublicIPv6":null}`,
		`{"PublicIP":"0.0.0.0","PublicIPv6":"fc00::2","BackendType":"host-gw","BackendV6Data":{"a":[1,2,{"b":null}]}}`,
		`{"publicip":"10.0.0.2","BackendData":null,"BackendV6Data":"x"}`,
		`{"PublicIP":"10.0.0.2","BackendData":{"k":"<>&\u2028"}}`,
		`null`, `{}`, `{"PublicIPv6":"::"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var a lease.Attrs
		if err := json.Unmarshal(data, &a); err != nil {
			return
		}
		if a.PublicIP.IsValid() && (!a.PublicIP.Is4() || a.PublicIP.IsUnspecified()) {
			t.Fatalf("PublicIP %s accepted", a.PublicIP)
		}
		if a.PublicIPv6.IsValid() && (!a.PublicIPv6.Is6() || a.PublicIPv6.Is4In6() || a.PublicIPv6.Zone() != "") {
			t.Fatalf("PublicIPv6 %s accepted", a.PublicIPv6)
		}
		b, err := json.Marshal(a)
		if err != nil {
			t.Fatalf("Marshal(%+v) after Unmarshal(%q): %v", a, data, err)
		}
		var back lease.Attrs
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("re-Unmarshal(%s): %v", b, err)
		}
		if !back.Equal(a) {
			t.Fatalf("round trip changed attrs:\n%+v\n%+v", a, back)
		}
		b2, err := json.Marshal(back)
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("encoding not stable: %s then %s (%v)", b, b2, err)
		}
	})
}

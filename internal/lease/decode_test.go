package lease_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name, key, value string
		// wantErr is a substring of the error, "" for success.
		wantErr string
		// badValue: the key is good, so the subnets come back with a
		// *BadValueError.
		badValue bool
		sn, sn6  string
		ip, ip6  string
	}{
		{name: "upstream vxlan value", key: "10.5.34.0-24",
			value: `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`,
			sn:    "10.5.34.0/24", ip: "192.168.64.3"},
		{name: "dual stack", key: "10.5.52.0-24&fc00:0:0:1::-64",
			value: `{"PublicIP":"192.168.64.4","PublicIPv6":"2001:db8::4"}`,
			sn:    "10.5.52.0/24", sn6: "fc00:0:0:1::/64", ip: "192.168.64.4", ip6: "2001:db8::4"},
		{name: "IPv6 public address only", key: "10.5.53.0-24&fc00:0:0:2::-64",
			value: `{"PublicIPv6":"2001:db8::5"}`,
			sn:    "10.5.53.0/24", sn6: "fc00:0:0:2::/64", ip6: "2001:db8::5"},
		{name: "not a key", key: "10.5.34.0/24", value: `{"PublicIP":"192.168.64.3"}`, wantErr: "not of the form"},
		{name: "host bits", key: "10.5.34.7-24", value: `{"PublicIP":"192.168.64.3"}`, wantErr: "host bits"},
		{name: "non-canonical IPv6", key: "10.5.52.0-24&fc00:0:0:1:0:0:0:0-64", value: `{"PublicIP":"192.168.64.3"}`, wantErr: "not in canonical form"},
		{name: "upper-case IPv6", key: "10.5.52.0-24&FC00::-64", value: `{"PublicIP":"192.168.64.3"}`, wantErr: "not in canonical form"},
		{name: "value not JSON", key: "10.5.34.0-24", value: `{`, badValue: true, wantErr: "subnet 10.5.34.0-24: bad value", sn: "10.5.34.0/24"},
		{name: "no public IP", key: "10.5.34.0-24", value: `{"BackendType":"vxlan"}`, badValue: true, wantErr: "no public IP", sn: "10.5.34.0/24"},
		{name: "empty value", key: "10.5.34.0-24&fc00::-64", value: ``, badValue: true, wantErr: "bad value", sn: "10.5.34.0/24", sn6: "fc00::/64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := lease.Decode(tc.key, []byte(tc.value))
			var bad *lease.BadValueError
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Decode error %v, want one mentioning %q", err, tc.wantErr)
				}
				if errors.As(err, &bad) != tc.badValue {
					t.Fatalf("error %v: is a BadValueError: %v, want %v", err, !tc.badValue, tc.badValue)
				}
				if tc.badValue && bad.Key != tc.key {
					t.Fatalf("BadValueError.Key = %q, want %q", bad.Key, tc.key)
				}
			}
			if tc.wantErr != "" && !tc.badValue {
				if l.Subnet.IsValid() || l.Subnet6.IsValid() || l.Attrs.PublicIP.IsValid() {
					t.Fatalf("bad key gave a lease: %+v", l)
				}
				return
			}
			if l.Subnet != invalidOr(tc.sn) || l.Subnet6 != invalidOr(tc.sn6) {
				t.Fatalf("subnets %s %s, want %s %s", l.Subnet, l.Subnet6, tc.sn, tc.sn6)
			}
			if l.ID != 0 || !l.Expires.IsZero() {
				t.Fatalf("Decode set ID %d / Expires %v: those are the store's", l.ID, l.Expires)
			}
			if tc.badValue {
				if l.Attrs.PublicIP.IsValid() || l.Attrs.PublicIPv6.IsValid() || l.Attrs.BackendType != "" {
					t.Fatalf("bad value gave attributes %+v", l.Attrs)
				}
				return
			}
			if l.Attrs.PublicIP != addrOrZero(tc.ip) || l.Attrs.PublicIPv6 != addrOrZero(tc.ip6) {
				t.Fatalf("public IPs %s %s, want %s %s", l.Attrs.PublicIP, l.Attrs.PublicIPv6, tc.ip, tc.ip6)
			}
			if l.Key() != tc.key {
				t.Fatalf("Key() = %q, want the stored key %q", l.Key(), tc.key)
			}
		})
	}
}

func addrOrZero(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(s)
}

package wireguard

import (
	"encoding/json"
	"testing"
)

// FuzzParseConfig: any Backend object is either refused or yields a config
// within the documented ranges.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{`{"Type":"wireguard"}`, `{"ListenPort":1,"ListenPortV6":65535,"MTU":1500,"Mode":"auto","PersistentKeepaliveInterval":25}`,
		`{"PSK":"` + testPSK + `"}`, `{"Mode":"ipv6"}`, `{"MTU":148}`, `null`, `{"PersistentKeepaliveInterval":1e3}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(json.RawMessage(b))
		if err != nil {
			return
		}
		if c.ListenPort < 1 || c.ListenPort > 65535 || c.ListenPortV6 < 1 || c.ListenPortV6 > 65535 ||
			c.MTU < 0 || (c.MTU != 0 && c.MTU-overhead < minMTU) || c.Keepalive < 0 {
			t.Errorf("ParseConfig(%q) accepted %+v", b, c)
		}
		switch c.Mode {
		case ModeSeparate, ModeAuto, ModeIPv4, ModeIPv6:
		default:
			t.Errorf("mode %q", c.Mode)
		}
	})
}

// FuzzDecodeLeaseData: decoding never panics, and what decodes encodes
// back to something that decodes to the same.
func FuzzDecodeLeaseData(f *testing.F) {
	for _, s := range []string{`{"PublicKey":"` + testPSK + `","Port":51820}`, `{"PublicKey":"` + testPSK + `"}`, `{}`, `null`, `{"PublicKey":"abc","Port":-1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := DecodeLeaseData(b)
		if err != nil {
			return
		}
		d2, err := DecodeLeaseData(d.Encode())
		if err != nil || d2 != d {
			t.Errorf("round trip of %q: %+v, %v", b, d2, err)
		}
	})
}

// FuzzKeyFile: a key file's content is a key or an error naming the file.
func FuzzKeyFile(f *testing.F) {
	for _, s := range []string{testPSK + "\n", "", "  " + testPSK, "x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := parseKeyFile("/k", b)
		if err == nil && k.String() == "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" {
			t.Errorf("accepted an all-zero key from %q", b)
		}
	})
}

package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

func TestMarshalConfig(t *testing.T) {
	b := marshalConfig(Config{
		PublicIP: netip.MustParseAddr("192.168.77.1"), Port: 8285, ExtIndex: 2, TUNIndex: 7,
		Own: netip.MustParsePrefix("10.77.1.9/24"),
	})
	if len(b) != cfgSize {
		t.Fatalf("%d bytes", len(b))
	}
	for _, c := range []struct {
		off  int
		want []byte
	}{
		{cfgPublicIP, []byte{192, 168, 77, 1}},
		{cfgPort, []byte{0x20, 0x5d}},
		{cfgOwnNet, []byte{10, 77, 1, 0}},
		{cfgOwnMask, []byte{255, 255, 255, 0}},
	} {
		if got := b[c.off : c.off+len(c.want)]; !bytes.Equal(got, c.want) {
			t.Errorf("offset %d: % x, want % x", c.off, got, c.want)
		}
	}
	// Without a subnet no inner address matches: a&0 is never all ones.
	b = marshalConfig(Config{PublicIP: netip.MustParseAddr("192.168.77.1")})
	if !bytes.Equal(b[cfgOwnNet:cfgOwnNet+4], []byte{255, 255, 255, 255}) || !bytes.Equal(b[cfgOwnMask:cfgOwnMask+4], []byte{0, 0, 0, 0}) {
		t.Errorf("no subnet: net % x mask % x", b[cfgOwnNet:cfgOwnNet+4], b[cfgOwnMask:cfgOwnMask+4])
	}
}

func TestLPMKey(t *testing.T) {
	for _, s := range []string{"10.77.3.0/24", "0.0.0.0/0", "10.77.3.4/32", "10.0.0.0/8"} {
		p := netip.MustParsePrefix(s)
		got, ok := parseLPMKey(lpmKey(p))
		if !ok || got != p {
			t.Errorf("%s → %v, %v", s, got, ok)
		}
	}
	if got, ok := parseLPMKey(lpmKey(netip.MustParsePrefix("10.77.3.9/24"))); !ok || got.String() != "10.77.3.0/24" {
		t.Errorf("unmasked prefix came back as %v", got)
	}
	if _, ok := parseLPMKey([]byte{1, 2, 3}); ok {
		t.Error("short key accepted")
	}
}

func TestWireConstants(t *testing.T) {
	// A native load of the wire bytes 08 00 must equal ethPIP, whatever
	// the host's byte order.
	if got := int32(binary.NativeEndian.Uint16([]byte{0x08, 0x00})); got != ethPIP {
		t.Errorf("ethPIP %#x, native load %#x", ethPIP, got)
	}
}

func TestOwnFromConfig(t *testing.T) {
	for _, own := range []string{"10.77.1.0/24", "10.0.0.0/8", "10.77.1.4/32", "0.0.0.0/0", ""} {
		var p netip.Prefix
		if own != "" {
			p = netip.MustParsePrefix(own)
		}
		b := marshalConfig(Config{PublicIP: netip.MustParseAddr("192.168.77.1"), Own: p})
		if got := ownFromConfig(b); got != p {
			t.Errorf("%q came back as %v", own, got)
		}
	}
	if got := ownFromConfig([]byte{1}); got.IsValid() {
		t.Errorf("short value gave %v", got)
	}
}

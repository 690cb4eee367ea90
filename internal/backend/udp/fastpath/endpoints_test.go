package fastpath

import (
	"net/netip"
	"testing"
)

func TestDesiredEndpoints(t *testing.T) {
	own := netip.MustParsePrefix("10.5.1.0/24")
	br := bridgeInfo{Index: 3, MAC: [6]byte{2, 0x42, 0, 0, 0, 1}}
	other := bridgeInfo{Index: 9, MAC: [6]byte{2, 0, 0, 0, 0, 9}}
	mac := func(b byte) [6]byte { return [6]byte{0x0a, 0, 0, 0, 0, b} }
	ports := []portInfo{
		{Index: 10, Master: 3, Kind: "veth"},
		{Index: 11, Master: 3, Kind: "veth"},
		{Index: 12, Master: 3, Kind: "tuntap"}, // no peer to redirect to
		{Index: 13, Master: 9, Kind: "veth"},   // another bridge's port
		{Index: 14, Master: 3, Kind: "netkit"},
	}
	ip := netip.MustParseAddr
	neighs := []neighInfo{
		{IP: ip("10.5.1.2"), MAC: mac(2), Link: 3, Valid: true},
		{IP: ip("10.5.1.3"), MAC: mac(3), Link: 3, Valid: false}, // failed
		{IP: ip("10.5.1.4"), MAC: mac(4), Link: 3, Valid: true},  // behind the tap
		{IP: ip("10.5.1.5"), MAC: mac(5), Link: 3, Valid: true},  // MAC not learned
		{IP: ip("10.5.2.6"), MAC: mac(6), Link: 3, Valid: true},  // not our subnet
		{IP: ip("10.5.1.7"), MAC: mac(7), Link: 3, Valid: true},  // learned on the other bridge
		{IP: ip("10.5.1.8"), MAC: mac(8), Link: 2, Valid: true},  // not a bridge's neighbour
		{IP: ip("10.5.1.9"), MAC: mac(9), Link: 3, Valid: true},
	}
	fdb := []fdbInfo{
		{MAC: mac(2), Port: 10}, {MAC: mac(3), Port: 11}, {MAC: mac(4), Port: 12},
		{MAC: mac(6), Port: 11}, {MAC: mac(7), Port: 13}, {MAC: mac(8), Port: 10},
		{MAC: mac(9), Port: 14},
	}
	got := desiredEndpoints(own, []bridgeInfo{br, other}, ports, neighs, fdb)
	want := map[netip.Addr]Endpoint{
		ip("10.5.1.2"): {Port: 10, MAC: mac(2), BridgeMAC: br.MAC},
		ip("10.5.1.9"): {Port: 14, MAC: mac(9), BridgeMAC: br.MAC},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
	if got := desiredEndpoints(netip.Prefix{}, []bridgeInfo{br}, ports, neighs, fdb); len(got) != 0 {
		t.Errorf("without a subnet: %v", got)
	}
}

func TestMarshalEndpoint(t *testing.T) {
	e := Endpoint{Port: 77, MAC: [6]byte{1, 2, 3, 4, 5, 6}, BridgeMAC: [6]byte{7, 8, 9, 10, 11, 12}}
	b := marshalEndpoint(e)
	if len(b) != epSize || b[epMAC] != 1 || b[epSrcMAC+5] != 12 {
		t.Fatalf("% x", b)
	}
	if got, ok := parseEndpoint(b); !ok || got != e {
		t.Errorf("round trip: %v, want %v", got, e)
	}
}

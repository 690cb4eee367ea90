package udp

import (
	"strings"
	"testing"
)

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint16
		err  bool
	}{
		{``, DefaultPort, false},
		{`{"Type":"udp"}`, DefaultPort, false},
		{`{"Type":"udp","Port":9000}`, 9000, false},
		{`{"type":"udp","port":1}`, 1, false},
		{`{"PORT":65535}`, 65535, false},
		{`{"Port":0}`, 0, true},
		{`{"Port":65536}`, 0, true},
		{`{"Port":-1}`, 0, true},
		{`{"Port":"8285"}`, 0, true},
		{`{"Port":8285.5}`, 0, true},
		{`{"Port":8285,"Unknown":true}`, 8285, false},
		{`[1]`, 0, true},
	} {
		got, err := parsePort([]byte(tc.in))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parsePort(%s) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestParseOffloads(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want offloadSet
		err  bool
	}{
		{"", allOffloads, false},
		{"on", allOffloads, false},
		{" OFF ", offloadSet{}, false},
		{"gso,gro", offloadSet{gso: true, gro: true}, false},
		{"tun", offloadSet{tun: true}, false},
		{"tso", offloadSet{}, true},
	} {
		got, err := parseOffloads(tc.in)
		if (err != nil) != tc.err || (err == nil && got != tc.want) {
			t.Errorf("parseOffloads(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestParseDatapath(t *testing.T) {
	for in, want := range map[string]datapathMode{
		"": datapathAuto, "auto": datapathAuto, " eBPF ": datapathEBPF, "userspace": datapathUserspace,
	} {
		if got, err := parseDatapath(in); err != nil || got != want {
			t.Errorf("parseDatapath(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseDatapath("kernel"); err == nil {
		t.Error("parseDatapath(kernel) accepted")
	}
}

func TestParseDeliver(t *testing.T) {
	for _, c := range []struct {
		in         string
		bridgeOnly bool
	}{
		{"", true}, {"auto", true}, {" Auto", true}, {"bridge", true}, {"direct", false}, {"DIRECT ", false},
	} {
		if got, err := parseDeliver(c.in); err != nil || got != c.bridgeOnly {
			t.Errorf("parseDeliver(%q) = %v, %v; want %v", c.in, got, err, c.bridgeOnly)
		}
	}
	if _, err := parseDeliver("peer"); err == nil {
		t.Error("parseDeliver(peer) accepted")
	}
}

func TestParseXDP(t *testing.T) {
	for _, c := range []struct {
		in    string
		noXDP bool
	}{
		{"", false}, {"auto", false}, {" AUTO", false}, {"off", true}, {"Off ", true},
	} {
		if got, err := parseXDP(c.in); err != nil || got != c.noXDP {
			t.Errorf("parseXDP(%q) = %v, %v; want %v", c.in, got, err, c.noXDP)
		}
	}
	if _, err := parseXDP("on"); err == nil || !strings.Contains(err.Error(), XDPEnv) {
		t.Errorf("parseXDP(on): err %v, want one naming %s", err, XDPEnv)
	}
}

package etcdv2store

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

// FuzzWatchResponse feeds arbitrary replies through the response parser
// and the event mapping: nothing may panic, and an event must name a
// canonical key below the subnets directory and, if Added, a usable value.
func FuzzWatchResponse(f *testing.F) {
	for _, seed := range []string{
		`{"action":"create","node":{"key":"/coreos.com/network/subnets/10.5.1.0-24","value":"{\"PublicIP\":\"192.168.1.1\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1}}","expiration":"2026-11-22T15:39:24.78575328Z","ttl":2,"modifiedIndex":4,"createdIndex":4}}`,
		`{"action":"expire","node":{"key":"/coreos.com/network/subnets/10.5.1.0-24","modifiedIndex":5,"createdIndex":4},"prevNode":{"key":"/coreos.com/network/subnets/10.5.1.0-24","value":"{}","modifiedIndex":4,"createdIndex":4}}`,
		`{"action":"compareAndSwap","node":{"key":"/coreos.com/network/subnets/10.5.2.0-24&fc00:0:0:1::-64","value":"{\"PublicIP\":\"0.0.0.0\",\"PublicIPv6\":\"2001:db8::1\"}","modifiedIndex":8,"createdIndex":6}}`,
		`{"action":"delete","node":{"key":"/coreos.com","dir":true,"modifiedIndex":11,"createdIndex":4}}`,
		`{"action":"set","node":{"key":"/coreos.com/network/subnets/x/y","dir":true}}`,
		`{"action":"set","node":{"key":"/coreos.com/network/subnets/10.5.3.0-24","value":"garbage"}}`,
		`{"action":"get","node":{"key":"/coreos.com/network/subnets","dir":true,"nodes":[]}}`,
		`{"errorCode":401,"message":"The event in requested index is outdated and cleared","cause":"the requested history has been cleared [1008/7]","index":2007}`,
		``,
		`{"node":null}`,
	} {
		f.Add(200, "7", []byte(seed))
	}
	f.Add(400, "2007", []byte(`{"errorCode":401,"message":"The event in requested index is outdated and cleared"}`))
	f.Add(401, "0", []byte(`{"message":"Insufficient credentials"}`))
	s, err := New(Options{Endpoints: []string{"http://127.0.0.1:1"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, status int, index string, body []byte) {
		res, err := parseResponse(status, index, body)
		if err != nil {
			if res.Node != nil {
				t.Fatal("error with a node")
			}
			return
		}
		if res.Node == nil {
			t.Fatal("success without a node")
		}
		ev, ok, err := s.toEvent(res.response)
		if err != nil {
			if !errors.Is(err, lease.ErrCompacted) {
				t.Fatalf("toEvent failed with %v", err)
			}
			return
		}
		if !ok {
			return
		}
		key, below := strings.CutPrefix(res.Node.Key, s.subnets+"/")
		if !below || ev.Lease.Key() != key {
			t.Fatalf("event for %s from node key %q", ev.Lease.Key(), res.Node.Key)
		}
		if ev.Type == lease.Removed {
			if ev.Lease.ID != 0 || ev.Lease.Attrs.PublicIP.IsValid() {
				t.Fatalf("removal carries more than the subnets: %+v", ev.Lease)
			}
			return
		}
		if !ev.Lease.Attrs.PublicIP.IsValid() && !ev.Lease.Attrs.PublicIPv6.IsValid() {
			t.Fatalf("added lease without a public IP: %+v", ev.Lease)
		}
		b, err := json.Marshal(ev.Lease.Attrs)
		if err != nil {
			t.Fatal(err)
		}
		var back lease.Attrs
		if err := json.Unmarshal(b, &back); err != nil || !back.Equal(ev.Lease.Attrs) {
			t.Fatalf("attrs do not survive a round trip: %s → %+v, %v", b, back, err)
		}
	})
}

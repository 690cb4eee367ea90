package etcdstore

import (
	"encoding/json"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel/internal/lease"
)

const subnets = "/coreos.com/network/subnets/"

func TestToEvent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		typ   mvccpb.Event_EventType
		key   string
		value string
		want  lease.EventType
		err   bool // skipped entirely
	}{
		{"put", mvccpb.PUT, "10.5.1.0-24", `{"PublicIP":"192.168.1.1","BackendType":"host-gw"}`, lease.Added, false},
		{"put dual", mvccpb.PUT, "10.5.1.0-24&fc00::-64", `{"PublicIP":"192.168.1.1","PublicIPv6":"2001:db8::1"}`, lease.Added, false},
		{"delete", mvccpb.DELETE, "10.5.1.0-24", "", lease.Removed, false},
		{"garbage value", mvccpb.PUT, "10.5.1.0-24", "{", lease.Removed, false},
		{"no public ip", mvccpb.PUT, "10.5.1.0-24", `{"BackendType":"vxlan"}`, lease.Removed, false},
		{"bad key", mvccpb.PUT, "10.5.1.0/24", `{"PublicIP":"192.168.1.1"}`, 0, true},
		{"bad key delete", mvccpb.DELETE, "junk", "", 0, true},
		{"non-canonical v6", mvccpb.PUT, "10.5.1.0-24&fc00:0::-64", `{"PublicIP":"192.168.1.1"}`, 0, true},
		{"outside prefix", mvccpb.PUT, "", `{}`, 0, true}, // key: /coreos.com/network/config
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := subnets + tc.key
			if tc.key == "" {
				key = "/coreos.com/network/config"
			}
			d, err := toEvent(subnets, &clientv3.Event{Type: tc.typ, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte(tc.value), Lease: 0x42}})
			if tc.err {
				if err == nil {
					t.Fatalf("toEvent = %+v, want an error", d)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Type != tc.want || d.Lease.Key() != tc.key {
				t.Fatalf("event %v %s, want %v %s", d.Type, d.Lease.Key(), tc.want, tc.key)
			}
			if d.Type == lease.Added && d.Lease.ID != 0x42 {
				t.Errorf("ID = %x, want the etcd lease 42", d.Lease.ID)
			}
			if d.Type == lease.Removed && (d.Lease.ID != 0 || d.Lease.Attrs.PublicIP.IsValid()) {
				t.Errorf("removed event carries more than subnets: %+v", d.Lease)
			}
		})
	}
}

// FuzzDecode feeds arbitrary keys and values through the watch decoding
// path: it must never panic, and whatever it accepts must round-trip.
func FuzzDecode(f *testing.F) {
	f.Add("10.5.34.0-24", []byte(`{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`), false)
	f.Add("10.5.52.0-24&fc00:0:0:1::-64", []byte(`{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::1","BackendV6Data":{"VNI":1}}`), false)
	f.Add("10.5.34.0-24", []byte(`{"PublicIP":"::1"}`), false)
	f.Add("10.5.34.7-24", []byte(`{"PublicIP":"1.2.3.4"}`), false)
	f.Add("999.5.34.0-24", []byte(`null`), true)
	f.Add("10.5.34.0-33", []byte(`[]`), false)
	f.Add("1.2.3.4-32&::-0", []byte(`{"PublicIP":"1.2.3.4","BackendData":null}`), false)
	f.Fuzz(func(t *testing.T, key string, value []byte, del bool) {
		typ := mvccpb.PUT
		if del {
			typ = mvccpb.DELETE
		}
		d, err := toEvent(subnets, &clientv3.Event{Type: typ, Kv: &mvccpb.KeyValue{Key: []byte(subnets + key), Value: value, Lease: 7}})
		if err != nil {
			return
		}
		if got := d.Lease.Key(); got != key {
			t.Fatalf("accepted key %q reads back as %q", key, got)
		}
		if d.Type == lease.Removed {
			return
		}
		if del || d.err != nil {
			t.Fatalf("delete or bad value delivered as %v", d.Type)
		}
		b, err := json.Marshal(d.Lease.Attrs)
		if err != nil {
			t.Fatalf("accepted value does not re-encode: %v", err)
		}
		var back lease.Attrs
		if err := json.Unmarshal(b, &back); err != nil || !back.Equal(d.Lease.Attrs) {
			t.Fatalf("value %q → %s → %+v (%v), want %+v", value, b, back, err, d.Lease.Attrs)
		}
	})
}

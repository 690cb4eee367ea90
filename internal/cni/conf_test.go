package cni_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flannel-go/flannel/internal/cni"
)

func TestParseConf(t *testing.T) {
	tests := []struct {
		name, in string
		want     cni.NetConf
	}{
		{"defaults", `{"name": "cni-flannel", "type": "flannel"}`, cni.NetConf{
			Name: "cni-flannel", Type: "flannel",
			SubnetFile: "/run/flannel/subnet.env", DataDir: "/var/lib/cni/flannel",
		}},
		{"empty paths mean the defaults", `{"name": "n", "subnetFile": "", "dataDir": ""}`, cni.NetConf{
			Name: "n", SubnetFile: "/run/flannel/subnet.env", DataDir: "/var/lib/cni/flannel",
		}},
		{"everything", `{"cniVersion": "1.1.0", "name": "cbr0", "type": "flannel",
			"subnetFile": "/x/subnet.env", "dataDir": "/x/data",
			"delegate": {"hairpinMode": true, "mtu": 1400},
			"ipam": {"type": "host-local"},
			"runtimeConfig": {"bandwidth": {"ingressRate": 1000}},
			"prevResult": {"cniVersion": "1.1.0"},
			"unknown": "ignored"}`, cni.NetConf{
			CNIVersion: "1.1.0", Name: "cbr0", Type: "flannel",
			SubnetFile: "/x/subnet.env", DataDir: "/x/data",
			Delegate:      map[string]any{"hairpinMode": true, "mtu": json.Number("1400")},
			IPAM:          map[string]any{"type": "host-local"},
			RuntimeConfig: map[string]any{"bandwidth": map[string]any{"ingressRate": json.Number("1000")}},
			PrevResult:    json.RawMessage(`{"cniVersion": "1.1.0"}`),
		}},
		{"null objects", `{"name": "n", "delegate": null, "ipam": null, "prevResult": null}`, cni.NetConf{
			Name: "n", SubnetFile: "/run/flannel/subnet.env", DataDir: "/var/lib/cni/flannel",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cni.ParseConf([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseConf: %v", err)
			}
			if diff := cmp.Diff(&tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestParseConfErrors(t *testing.T) {
	for _, in := range []string{
		``,
		`[]`,
		`{"name": 1}`,
		`{"delegate": "bridge"}`,
		`{"ipam": []}`,
		`{"runtimeConfig": 1}`,
		`{"name": "n"} {"name": "m"}`,
		`{"name": "n"`,
	} {
		if c, err := cni.ParseConf([]byte(in)); err == nil {
			t.Errorf("ParseConf(%s) = %+v, want an error", in, c)
		}
	}
}

// FuzzParseConf feeds arbitrary configurations through parsing and
// delegate building: no panic, and whatever builds is a JSON object that
// names the network and a delegate type and holds the host's range.
func FuzzParseConf(f *testing.F) {
	for _, s := range []string{confUpstream, confManifest, confOverrides, confPTP,
		`{"name":"n","delegate":{"type":1}}`, `{"ipam":{"routes":[{"dst":"::/0","gw":"::1"}]}}`,
		`{"delegate":{"mtu":1e400}}`} {
		f.Add([]byte(s))
	}
	env := mustEnv(f, envDual)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := cni.ParseConf(b)
		if err != nil {
			return
		}
		d, err := cni.BuildDelegate(c, env)
		if err != nil {
			return
		}
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(d.Conf))
		dec.UseNumber() // numbers pass through as written, even 1e400
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("delegate configuration is not a JSON object: %v\n%s", err, d.Conf)
		}
		if m["name"] != c.Name || m["type"] != d.Type || d.Type == "" && c.Delegate == nil {
			t.Fatalf("delegate name/type wrong: %s", d.Conf)
		}
		ipam, _ := m["ipam"].(map[string]any)
		if ipam == nil || len(ipam["ranges"].([]any)) != 2 {
			t.Fatalf("delegate ipam wrong: %s", d.Conf)
		}
	})
}

package kube

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel/internal/lease"
)

func TestParseAnnotationPrefix(t *testing.T) {
	for _, tc := range []struct {
		prefix, backendType string // backendType "" means an error
	}{
		// Upstream's table (pkg/subnet/kube/annotations_test.go).
		{"flannel.alpha.coreos.com", "flannel.alpha.coreos.com/backend-type"},
		{"flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/backend-type"},
		{"flannel.alpha.coreos.com/prefix", "flannel.alpha.coreos.com/prefix-backend-type"},
		{"flannel.alpha.coreos.com/prefix-", "flannel.alpha.coreos.com/prefix-backend-type"},
		{"org.com", "org.com/backend-type"},
		{"org9.com", "org9.com/backend-type"},
		{"org.com/9", "org.com/9-backend-type"},
		{"org", ""},            // not a FQDN
		{"org/", ""},           // not a FQDN before /
		{"org/prefix", ""},     // not a FQDN before /
		{"org.COM", ""},        // upper case
		{"org.com/PREFIX", ""}, // upper case
		// More of upstream's rules.
		{"org.com/a/b", ""}, // two slashes
		{"", ""},
		{"org.com/pre.fix", ""},
		// Where we are stricter: upstream's unanchored regexp lets these
		// through, and the API server then refuses every patch.
		{"Flannel.alpha.coreos.com", ""},
		{"a..b.com", ""},
		{"under_score.com", ""},
	} {
		k, err := ParseAnnotationPrefix(tc.prefix)
		if tc.backendType == "" {
			if err == nil {
				t.Errorf("ParseAnnotationPrefix(%q) = %q, want an error", tc.prefix, k.BackendType)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseAnnotationPrefix(%q): %v", tc.prefix, err)
			continue
		}
		if k.BackendType != tc.backendType {
			t.Errorf("ParseAnnotationPrefix(%q).BackendType = %q, want %q", tc.prefix, k.BackendType, tc.backendType)
		}
	}
}

func TestKeysNames(t *testing.T) {
	k, err := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	if err != nil {
		t.Fatal(err)
	}
	got := []string{k.SubnetKubeManaged, k.BackendType, k.BackendData, k.BackendV6Data, k.PublicIP, k.PublicIPv6,
		k.PublicIPOverwrite, k.PublicIPv6Overwrite, k.NodePublicIP, k.NodePublicIPv6}
	want := []string{"kube-subnet-manager", "backend-type", "backend-data", "backend-v6-data", "public-ip", "public-ipv6",
		"public-ip-overwrite", "public-ipv6-overwrite", "node-public-ip", "node-public-ipv6"}
	for i := range want {
		if got[i] != "flannel.alpha.coreos.com/"+want[i] {
			t.Errorf("key %d = %q, want flannel.alpha.coreos.com/%s", i, got[i], want[i])
		}
	}
}

var (
	v4only = families{v4: true}
	dual   = families{v4: true, v6: true}
)

// TestPublishedPatch pins the exact bytes sent for each backend: these are
// the values upstream's nodes read.
func TestPublishedPatch(t *testing.T) {
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	ip := netip.MustParseAddr("192.0.2.10")
	ip6 := netip.MustParseAddr("2001:db8::10")
	for _, tc := range []struct {
		name  string
		cur   map[string]string
		fam   families
		attrs lease.Attrs
		patch string // "" means no patch
		pubIP string
	}{{
		name:  "vxlan",
		fam:   v4only,
		attrs: lease.Attrs{PublicIP: ip, BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`)},
		patch: `{"metadata":{"annotations":{` +
			`"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"0a:58:0a:f4:01:00\"}",` +
			`"flannel.alpha.coreos.com/backend-type":"vxlan",` +
			`"flannel.alpha.coreos.com/kube-subnet-manager":"true",` +
			`"flannel.alpha.coreos.com/public-ip":"192.0.2.10"}}}`,
		pubIP: "192.0.2.10",
	}, {
		name:  "host-gw",
		fam:   v4only,
		attrs: lease.Attrs{PublicIP: ip, BackendType: "host-gw"},
		patch: `{"metadata":{"annotations":{` +
			`"flannel.alpha.coreos.com/backend-data":"null",` +
			`"flannel.alpha.coreos.com/backend-type":"host-gw",` +
			`"flannel.alpha.coreos.com/kube-subnet-manager":"true",` +
			`"flannel.alpha.coreos.com/public-ip":"192.0.2.10"}}}`,
		pubIP: "192.0.2.10",
	}, {
		name:  "udp",
		fam:   v4only,
		attrs: lease.Attrs{PublicIP: ip, BackendType: "udp"},
		patch: `{"metadata":{"annotations":{` +
			`"flannel.alpha.coreos.com/backend-data":"null",` +
			`"flannel.alpha.coreos.com/backend-type":"udp",` +
			`"flannel.alpha.coreos.com/kube-subnet-manager":"true",` +
			`"flannel.alpha.coreos.com/public-ip":"192.0.2.10"}}}`,
		pubIP: "192.0.2.10",
	}, {
		name: "vxlan dual stack",
		fam:  dual,
		attrs: lease.Attrs{PublicIP: ip, PublicIPv6: ip6, BackendType: "vxlan",
			BackendData:   json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}`),
			BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:01"}`)},
		patch: `{"metadata":{"annotations":{` +
			`"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"0a:58:0a:f4:01:00\"}",` +
			`"flannel.alpha.coreos.com/backend-type":"vxlan",` +
			`"flannel.alpha.coreos.com/backend-v6-data":"{\"VNI\":1,\"VtepMAC\":\"0a:58:0a:f4:01:01\"}",` +
			`"flannel.alpha.coreos.com/kube-subnet-manager":"true",` +
			`"flannel.alpha.coreos.com/public-ip":"192.0.2.10",` +
			`"flannel.alpha.coreos.com/public-ipv6":"2001:db8::10"}}}`,
		pubIP: "192.0.2.10",
	}, {
		name:  "public-ip-overwrite wins",
		cur:   map[string]string{k.PublicIPOverwrite: "198.51.100.7"},
		fam:   v4only,
		attrs: lease.Attrs{PublicIP: ip, BackendType: "host-gw"},
		patch: `{"metadata":{"annotations":{` +
			`"flannel.alpha.coreos.com/backend-data":"null",` +
			`"flannel.alpha.coreos.com/backend-type":"host-gw",` +
			`"flannel.alpha.coreos.com/kube-subnet-manager":"true",` +
			`"flannel.alpha.coreos.com/public-ip":"198.51.100.7"}}}`,
		pubIP: "198.51.100.7",
	}, {
		name: "only what changed",
		cur: map[string]string{k.SubnetKubeManaged: "true", k.BackendType: "host-gw",
			k.BackendData: "null", k.PublicIP: "192.0.2.9", "other/annotation": "x"},
		fam:   v4only,
		attrs: lease.Attrs{PublicIP: ip, BackendType: "host-gw"},
		patch: `{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"192.0.2.10"}}}`,
		pubIP: "192.0.2.10",
	}, {
		name: "nothing changed",
		cur: map[string]string{k.SubnetKubeManaged: "true", k.BackendType: "host-gw",
			k.BackendData: "null", k.PublicIP: "192.0.2.10"},
		fam:   v4only,
		attrs: lease.Attrs{PublicIP: ip, BackendType: "host-gw"},
		pubIP: "192.0.2.10",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			set, pub, err := k.published(tc.cur, tc.fam, tc.attrs)
			if err != nil {
				t.Fatal(err)
			}
			var got string
			if set != nil {
				got = string(annotationPatch(set))
			}
			if got != tc.patch {
				t.Errorf("patch\n got %s\nwant %s", got, tc.patch)
			}
			if pub.PublicIP.String() != tc.pubIP {
				t.Errorf("published PublicIP = %s, want %s", pub.PublicIP, tc.pubIP)
			}
		})
	}
}

func TestPublishedBadOverwrite(t *testing.T) {
	k, _ := ParseAnnotationPrefix(DefaultAnnotationPrefix)
	_, _, err := k.published(map[string]string{k.PublicIPOverwrite: "not-an-ip"}, v4only,
		lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.1"), BackendType: "host-gw"})
	if err == nil || !strings.Contains(err.Error(), k.PublicIPOverwrite) {
		t.Fatalf("err = %v, want one naming %s", err, k.PublicIPOverwrite)
	}
}

package kube

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"strings"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/flannel-go/flannel/internal/lease"
)

// DefaultAnnotationPrefix is upstream's --kube-annotation-prefix default.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// prefixRE is upstream's check of a normalised prefix. Upstream leaves it
// unanchored at the start; we anchor it, which rejects only prefixes whose
// keys the API server would refuse anyway.
var prefixRE = regexp.MustCompile(`^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// Keys are the node annotation names flanneld reads and writes, all under
// one prefix.
type Keys struct {
	Prefix string // normalised: ends in "/" or "-"

	SubnetKubeManaged   string // "true" on every node flanneld runs on
	BackendType         string
	BackendData         string // raw JSON, "null" for host-gw
	BackendV6Data       string
	PublicIP            string
	PublicIPv6          string
	PublicIPOverwrite   string // set by users: advertised instead of PublicIP
	PublicIPv6Overwrite string
	NodePublicIP        string // set by users: used as --public-ip at start
	NodePublicIPv6      string
}

// ParseAnnotationPrefix applies upstream's rules to --kube-annotation-prefix:
// no slash gets "/" appended, a path part ending in neither "/" nor "-" gets
// "-" appended (org.com/x → org.com/x-backend-type), and the result must be
// a domain, one slash and an optional dash-terminated name prefix.
func ParseAnnotationPrefix(prefix string) (Keys, error) {
	switch strings.Count(prefix, "/") {
	case 0:
		prefix += "/"
	case 1:
	default:
		return Keys{}, fmt.Errorf("kube: annotation prefix %q: it may contain at most one \"/\"", prefix)
	}
	if !strings.HasSuffix(prefix, "/") && !strings.HasSuffix(prefix, "-") {
		prefix += "-"
	}
	if !prefixRE.MatchString(prefix) {
		return Keys{}, fmt.Errorf("kube: annotation prefix %q: it must match %s", prefix, prefixRE)
	}
	k := Keys{
		Prefix:              prefix,
		SubnetKubeManaged:   prefix + "kube-subnet-manager",
		BackendType:         prefix + "backend-type",
		BackendData:         prefix + "backend-data",
		BackendV6Data:       prefix + "backend-v6-data",
		PublicIP:            prefix + "public-ip",
		PublicIPv6:          prefix + "public-ipv6",
		PublicIPOverwrite:   prefix + "public-ip-overwrite",
		PublicIPv6Overwrite: prefix + "public-ipv6-overwrite",
		NodePublicIP:        prefix + "node-public-ip",
		NodePublicIPv6:      prefix + "node-public-ipv6",
	}
	// The regexp lets through what Kubernetes refuses in a key (a domain
	// with "_" or over 253 bytes, a name over 63): say so now, not at the
	// first patch.
	all := map[string]string{k.PublicIPv6Overwrite: ""}
	if errs := apivalidation.ValidateAnnotations(all, field.NewPath("metadata", "annotations")); len(errs) > 0 {
		return Keys{}, fmt.Errorf("kube: annotation prefix %q: %v", prefix, errs.ToAggregate())
	}
	return k, nil
}

// mine reports whether an annotation key is under our prefix; the informer
// keeps only those.
func (k Keys) mine(key string) bool { return strings.HasPrefix(key, k.Prefix) }

// families says which address families the network has.
type families struct{ v4, v6 bool }

// published computes the annotations this node must carry for attrs, as
// upstream writes them, given the node's current annotations (which hold
// the user's overwrites). It returns the keys whose value must change (nil
// when none) and the attributes peers will read back.
func (k Keys) published(cur map[string]string, fam families, attrs lease.Attrs) (map[string]string, lease.Attrs, error) {
	want := map[string]string{
		k.SubnetKubeManaged: "true",
		k.BackendType:       attrs.BackendType,
	}
	pub := lease.Attrs{BackendType: attrs.BackendType}
	if fam.v4 {
		ip := attrs.PublicIP
		if ov := cur[k.PublicIPOverwrite]; ov != "" {
			a, err := netip.ParseAddr(ov)
			if err != nil || !a.Is4() {
				return nil, lease.Attrs{}, fmt.Errorf("annotation %s: %q is not an IPv4 address", k.PublicIPOverwrite, ov)
			}
			ip = a
		}
		if !ip.IsValid() {
			return nil, lease.Attrs{}, fmt.Errorf("no public IPv4 address to publish in %s", k.PublicIP)
		}
		want[k.BackendData] = rawString(attrs.BackendData)
		want[k.PublicIP] = ip.String()
		pub.PublicIP, pub.BackendData = ip, cloneRaw(attrs.BackendData)
	}
	if fam.v6 && attrs.PublicIPv6.IsValid() {
		ip := attrs.PublicIPv6
		if ov := cur[k.PublicIPv6Overwrite]; ov != "" {
			a, err := netip.ParseAddr(ov)
			if err != nil || !a.Is6() || a.Is4In6() {
				return nil, lease.Attrs{}, fmt.Errorf("annotation %s: %q is not an IPv6 address", k.PublicIPv6Overwrite, ov)
			}
			ip = a
		}
		want[k.BackendV6Data] = rawString(attrs.BackendV6Data)
		want[k.PublicIPv6] = ip.String()
		pub.PublicIPv6, pub.BackendV6Data = ip, cloneRaw(attrs.BackendV6Data)
	}
	maps.DeleteFunc(want, func(key, v string) bool {
		got, ok := cur[key]
		return ok && got == v
	})
	if len(want) == 0 {
		return nil, pub, nil
	}
	return want, pub, nil
}

// rawString is a BackendData annotation value: the JSON itself, or "null"
// when the backend has none (host-gw), as upstream's RawMessage marshals.
func rawString(r json.RawMessage) string {
	if len(r) == 0 {
		return "null"
	}
	return string(r)
}

func cloneRaw(r json.RawMessage) json.RawMessage {
	if len(r) == 0 || string(r) == "null" {
		return nil
	}
	return append(json.RawMessage(nil), r...)
}

// annotationPatch is the strategic-merge patch that sets the given
// annotations and leaves every other one alone. encoding/json sorts map
// keys, so equal changes give equal bytes.
func annotationPatch(set map[string]string) []byte {
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": set}})
	if err != nil {
		panic(err) // strings always marshal
	}
	return b
}

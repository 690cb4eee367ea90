package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/flannel-go/flannel/internal/subnetenv"
)

// Delegate is a rendered delegate configuration.
type Delegate struct {
	Type string // the plugin to run, e.g. "bridge"
	// Conf is what the delegate gets on stdin and what is saved for DEL:
	// encoding/json's rendering of the configuration object (keys sorted,
	// no spaces), the same bytes upstream's plugin produces.
	Conf []byte
}

// BuildDelegate builds the delegate configuration for ADD from the plugin's
// configuration and the host's subnet.env, as upstream's plugin does:
//
//   - the "delegate" object is the base; it must not set "name" or "ipam",
//     and its "type" (default "bridge") must be a string;
//   - "name" is the network's name; "cniVersion" the network's, if set;
//   - "ipMasq" defaults to !FLANNEL_IPMASQ (masquerade here only if flanneld
//     does not), "mtu" to FLANNEL_MTU, and a bridge's "isGateway" to true;
//   - "runtimeConfig" is the plugin's, if it has one;
//   - "ipam" is the plugin's "ipam" with "type" defaulting to host-local,
//     "ranges" set to the host's subnets (IPv4, then IPv6) and "routes"
//     to the configured routes followed by one per flannel network.
//
// It does not change c.
func BuildDelegate(c *NetConf, env subnetenv.Full) (Delegate, error) {
	if len(env.Missing) > 0 {
		return Delegate{}, fmt.Errorf("subnet.env lacks %v", env.Missing)
	}
	d := maps.Clone(c.Delegate)
	if d == nil {
		d = map[string]any{}
	}
	if t, ok := d["type"]; ok {
		if _, ok := t.(string); !ok {
			return Delegate{}, errors.New("flannel: 'delegate' dictionary, if present, must have (string) 'type' field")
		}
	}
	if _, ok := d["name"]; ok {
		return Delegate{}, errors.New("flannel: 'delegate' dictionary must not have 'name' field, it'll be set by flannel")
	}
	if _, ok := d["ipam"]; ok {
		return Delegate{}, errors.New("flannel: 'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
	}
	if c.RuntimeConfig != nil {
		d["runtimeConfig"] = c.RuntimeConfig
	}
	d["name"] = c.Name
	if _, ok := d["type"]; !ok {
		d["type"] = "bridge"
	}
	if _, ok := d["ipMasq"]; !ok {
		d["ipMasq"] = !env.IPMasq
	}
	if _, ok := d["mtu"]; !ok {
		d["mtu"] = env.MTU
	}
	typ := d["type"].(string)
	if typ == "bridge" {
		if _, ok := d["isGateway"]; !ok {
			d["isGateway"] = true
		}
	}
	if c.CNIVersion != "" {
		d["cniVersion"] = c.CNIVersion
	}
	ipam, err := delegateIPAM(c.IPAM, env)
	if err != nil {
		return Delegate{}, err
	}
	d["ipam"] = ipam
	b, err := json.Marshal(d)
	if err != nil {
		return Delegate{}, fmt.Errorf("flannel: render delegate configuration: %w", err)
	}
	return Delegate{Type: typ, Conf: b}, nil
}

type subnetRange struct {
	Subnet string `json:"subnet"`
}

func delegateIPAM(base map[string]any, env subnetenv.Full) (map[string]any, error) {
	ipam := maps.Clone(base)
	if ipam == nil {
		ipam = map[string]any{}
	}
	if _, ok := ipam["type"]; !ok {
		ipam["type"] = "host-local"
	}
	var ranges [][]subnetRange
	for _, sn := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
		if sn.IsValid() {
			ranges = append(ranges, []subnetRange{{Subnet: sn.Masked().String()}})
		}
	}
	ipam["ranges"] = ranges

	// Configured routes go through types.Route, as upstream's do: a
	// malformed one is an error, and unknown keys in it are dropped.
	routes := []types.Route{}
	if r, ok := ipam["routes"]; ok {
		b, err := json.Marshal(r)
		if err == nil {
			err = json.Unmarshal(b, &routes)
		}
		if err != nil {
			return nil, fmt.Errorf("flannel: failed to read IPAM routes: failed to parse ipam.routes: %w", err)
		}
	}
	for _, nw := range append(append([]netip.Prefix{}, env.Networks...), env.IPv6Networks...) {
		routes = append(routes, types.Route{Dst: ipNet(nw)})
	}
	ipam["routes"] = routes
	return ipam, nil
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}

package lab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/flannel-go/flannel/internal/netconf"
)

// ManifestConflist returns the CNI conflist of a kube-flannel manifest:
// the cni-conf.json of its ConfigMap, which the DaemonSet's init step
// installs as /etc/cni/net.d/10-flannel.conflist.
func ManifestConflist(manifest []byte) ([]byte, error) {
	var found []byte
	for doc := range strings.SplitSeq(string(manifest), "\n---") {
		var obj struct {
			Kind string            `json:"kind"`
			Data map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, fmt.Errorf("manifest: %w", err)
		}
		if c, ok := obj.Data["cni-conf.json"]; ok && obj.Kind == "ConfigMap" {
			if found != nil {
				return nil, fmt.Errorf("manifest: more than one ConfigMap holds cni-conf.json")
			}
			found = []byte(c)
		}
	}
	if found == nil {
		return nil, fmt.Errorf("manifest: no ConfigMap holds cni-conf.json")
	}
	return found, nil
}

// hostConflist adapts conflist to one lab host: lab hosts share one
// filesystem, so the flannel plugin's subnet.env, its saved delegate
// configurations and host-local's allocations get per-host paths (a node
// has these at /run/flannel/subnet.env, /var/lib/cni/flannel and
// /var/lib/cni/networks). Everything else is passed on as the manifest
// has it.
func hostConflist(conflist []byte, subnetFile, dataDir, ipamDir string) ([]byte, error) {
	var list map[string]any
	d := json.NewDecoder(bytes.NewReader(conflist))
	d.UseNumber() // numbers pass through as written
	if err := d.Decode(&list); err != nil {
		return nil, fmt.Errorf("cni-conf.json: %w", err)
	}
	plugins, _ := list["plugins"].([]any)
	var flannel map[string]any
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == "flannel" {
			flannel = m
		}
	}
	if flannel == nil {
		return nil, fmt.Errorf("cni-conf.json: no plugin of type flannel in %s", conflist)
	}
	flannel["subnetFile"], flannel["dataDir"] = subnetFile, dataDir
	ipam, _ := flannel["ipam"].(map[string]any)
	if ipam == nil {
		ipam = map[string]any{}
	}
	ipam["dataDir"] = ipamDir
	flannel["ipam"] = ipam
	return json.MarshalIndent(list, "", "  ")
}

// NodeCIDR is the podCIDR the lab gives its n-th node (from 1), as the
// controller-manager's node IPAM hands them out: consecutive subnets of
// SubnetLen bits, here from SubnetMin so they are the subnets etcd mode
// would lease too.
func NodeCIDR(nc *netconf.Config, n int) (netip.Prefix, error) {
	if !nc.EnableIPv4 || !nc.Network.IsValid() {
		return netip.Prefix{}, fmt.Errorf("the lab's Kubernetes mode needs an IPv4 Network")
	}
	if n < 1 {
		return netip.Prefix{}, fmt.Errorf("node %d: nodes count from 1", n)
	}
	base := nc.SubnetMin.As4()
	v := uint64(base[0])<<24 | uint64(base[1])<<16 | uint64(base[2])<<8 | uint64(base[3])
	v += uint64(n-1) << (32 - nc.SubnetLen)
	if v > 0xffffffff {
		return netip.Prefix{}, fmt.Errorf("node %d: Network %s has no room for it", n, nc.Network)
	}
	a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	if nc.SubnetMax.Less(a) {
		return netip.Prefix{}, fmt.Errorf("node %d: no /%d subnet left between SubnetMin %s and SubnetMax %s",
			n, nc.SubnetLen, nc.SubnetMin, nc.SubnetMax)
	}
	return netip.PrefixFrom(a, nc.SubnetLen), nil
}

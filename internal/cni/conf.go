// Package cni is the flannel CNI plugin: a meta-plugin that turns the
// host's subnet.env into a configuration for a real plugin (bridge with
// host-local IPAM unless told otherwise), saves that configuration so DEL
// and CHECK use exactly what ADD used even after subnet.env changes, and
// delegates to it. cmd/flannel only wires Plugin into skel.
//
// The delegate configuration is built as upstream's plugin
// (github.com/flannel-io/cni-plugin) builds it, byte for byte, so a node
// can switch plugins without its pods' configuration changing. What is
// added: CHECK and STATUS work, and a missing or broken subnet.env says
// which file and what to look at.
package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Defaults as upstream's plugin has them.
const (
	DefaultSubnetFile = "/run/flannel/subnet.env"
	DefaultDataDir    = "/var/lib/cni/flannel"
)

// NetConf is the plugin's own configuration: one entry of the conflist,
// as the runtime passes it on stdin.
type NetConf struct {
	CNIVersion string
	Name       string
	Type       string
	// SubnetFile is the subnet.env flanneld writes (--subnet-file).
	SubnetFile string
	// DataDir holds one file per container: the delegate configuration ADD
	// used.
	DataDir string
	// Delegate is the base of the delegate configuration; nil if absent.
	// Numbers are json.Number, so they pass through exactly as written.
	Delegate map[string]any
	// IPAM is the base of the delegate's "ipam"; nil if absent.
	IPAM map[string]any
	// RuntimeConfig is passed on to the delegate; nil if absent.
	RuntimeConfig map[string]any
	// PrevResult is the runtime's cached result for CHECK (and DEL), raw.
	PrevResult json.RawMessage
}

// rawConf is the wire form. Objects are decoded into maps so that keys we
// do not know reach the delegate untouched.
type rawConf struct {
	CNIVersion    string          `json:"cniVersion"`
	Name          string          `json:"name"`
	Type          string          `json:"type"`
	SubnetFile    string          `json:"subnetFile"`
	DataDir       string          `json:"dataDir"`
	Delegate      map[string]any  `json:"delegate"`
	IPAM          map[string]any  `json:"ipam"`
	RuntimeConfig map[string]any  `json:"runtimeConfig"`
	PrevResult    json.RawMessage `json:"prevResult"`
}

// ParseConf parses the plugin configuration from stdin. An empty
// subnetFile or dataDir means the default.
func ParseConf(b []byte) (*NetConf, error) {
	var r rawConf
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&r); err != nil {
		return nil, fmt.Errorf("flannel: parse network configuration: %w", err)
	}
	// A second value after the object means the input is not one JSON
	// document; the runtime never sends that.
	if d.More() {
		return nil, fmt.Errorf("flannel: parse network configuration: data after the JSON object")
	}
	if bytes.Equal(r.PrevResult, []byte("null")) {
		r.PrevResult = nil
	}
	c := &NetConf{
		CNIVersion:    r.CNIVersion,
		Name:          r.Name,
		Type:          r.Type,
		SubnetFile:    r.SubnetFile,
		DataDir:       r.DataDir,
		Delegate:      r.Delegate,
		IPAM:          r.IPAM,
		RuntimeConfig: r.RuntimeConfig,
		PrevResult:    r.PrevResult,
	}
	if c.SubnetFile == "" {
		c.SubnetFile = DefaultSubnetFile
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	return c, nil
}

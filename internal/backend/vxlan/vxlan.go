// Package vxlan is the default backend: an in-kernel VXLAN device
// (flannel.<VNI>) that carries each remote subnet to its host's VTEP.
//
// Design notes.
//
// There is no catch-all route and no miss handling. For every remote
// lease the backend installs three entries, in this order so a packet
// never finds a route without what it needs:
//
//	ip neigh replace 10.5.2.0 lladdr <VtepMAC> dev flannel.1 nud permanent
//	bridge fdb replace <VtepMAC> dev flannel.1 dst <PublicIP> self permanent
//	ip route replace 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink
//
// The remote subnet's network address stands in for the remote VTEP (it
// is also the /32 address each host puts on its own device), so the
// neighbour entry turns the route's gateway into the VTEP MAC and the FDB
// entry turns the MAC into the underlay address. With DirectRouting, a
// peer that is on-link on the external interface gets
// `ip route replace 10.5.2.0/24 via <PublicIP> dev <ext>` instead.
//
// Restarts must not stop traffic: Init adopts a compatible existing device
// (keeping its MAC, which peers have in their FDB) and loads the entries it
// owns from the kernel, so the first Sync removes what belongs to peers
// that left while flanneld was down and leaves everything else alone.
// Owned are: routes in the main table whose destination lies inside the
// flannel network and that either use the device or use the external
// interface with a gateway; permanent neighbour and FDB entries on the
// device. Repair recreates a deleted device with the same MAC and address
// and re-adds whatever was removed by hand.
//
// Only the IPv4 datapath exists for now: IPv6 leases and options are
// accepted and ignored.
package vxlan

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
	"github.com/flannel-go/flannel/internal/route"
)

const (
	// Type is the backend's name in the config and in leases.
	Type = "vxlan"
	// overhead is what VXLAN over IPv4 adds to each packet: outer IPv4
	// (20), UDP (8), VXLAN (8) and the inner Ethernet header (14).
	overhead   = 50
	minMTU     = 68 // the smallest MTU an IPv4 link may have
	maxVNI     = 1<<24 - 1
	kernelPort = 8472 // what Linux uses when no port is given
)

// Options are the vxlan keys of the config's Backend object. Keys match
// case-insensitively, as upstream's encoding/json does; unknown keys
// (Type, the Windows-only MacPrefix and Name) are ignored.
type Options struct {
	VNI           int  // 1..16777215; default 1
	Port          int  // UDP port; 0 leaves the kernel's default 8472
	GBP           bool // VXLAN Group Based Policy extension
	Learning      bool // let the device learn FDB entries from traffic
	DirectRouting bool // route directly to peers on the same L2 segment
	MTU           int  // underlay MTU to subtract the overhead from; 0 = external interface's
}

// ParseOptions decodes and validates the Backend object. Errors name the
// key and the bad value.
func ParseOptions(raw json.RawMessage) (Options, error) {
	o := Options{VNI: 1}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &o); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) && te.Field != "" {
				return Options{}, fmt.Errorf("vxlan: option %s: %s is not a valid %s", te.Field, te.Value, kindOf(te.Type))
			}
			return Options{}, fmt.Errorf("vxlan: backend options: %w", err)
		}
	}
	switch {
	case o.VNI < 1 || o.VNI > maxVNI:
		return Options{}, fmt.Errorf("vxlan: option VNI: %d is out of range 1..%d", o.VNI, maxVNI)
	case o.Port < 0 || o.Port > 65535:
		return Options{}, fmt.Errorf("vxlan: option Port: %d is out of range 0..65535", o.Port)
	case o.MTU < 0 || o.MTU > 65535:
		return Options{}, fmt.Errorf("vxlan: option MTU: %d is out of range 0..65535", o.MTU)
	case o.MTU != 0 && o.MTU-overhead < minMTU:
		return Options{}, fmt.Errorf("vxlan: option MTU: %d leaves %d after the %d-byte VXLAN overhead, less than the IPv4 minimum %d",
			o.MTU, o.MTU-overhead, overhead, minMTU)
	}
	return o, nil
}

func kindOf(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "boolean"
	case reflect.Int:
		return "integer"
	}
	return t.String()
}

// LeaseData is the BackendData of a vxlan lease: the VNI and the MAC of
// the host's VTEP, which peers put in their neighbour and FDB entries.
type LeaseData struct {
	VNI     int
	VtepMAC route.MAC
}

// wireLeaseData is LeaseData on the wire; field names and order are
// upstream's: {"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}.
type wireLeaseData struct {
	VNI     int    `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// Encode returns d in upstream's format.
func (d LeaseData) Encode() json.RawMessage {
	b, err := json.Marshal(wireLeaseData{VNI: d.VNI, VtepMAC: d.VtepMAC.String()})
	if err != nil {
		panic(err) // an int and a string always marshal
	}
	return b
}

// DecodeLeaseData reads a lease's BackendData. The MAC must be a unicast
// Ethernet address: a group or zero MAC in an FDB entry would flood or
// black-hole the peer's traffic.
func DecodeLeaseData(raw json.RawMessage) (LeaseData, error) {
	if len(raw) == 0 {
		return LeaseData{}, errors.New("no BackendData")
	}
	var w wireLeaseData
	if err := json.Unmarshal(raw, &w); err != nil {
		return LeaseData{}, fmt.Errorf("BackendData: %w", err)
	}
	if w.VNI < 1 || w.VNI > maxVNI {
		return LeaseData{}, fmt.Errorf("BackendData: VNI %d is out of range 1..%d", w.VNI, maxVNI)
	}
	mac, err := route.ParseMAC(w.VtepMAC)
	if err != nil {
		return LeaseData{}, fmt.Errorf("BackendData: VtepMAC %q: %w", w.VtepMAC, err)
	}
	if !mac.IsUnicast() {
		return LeaseData{}, fmt.Errorf("BackendData: VtepMAC %s is not a unicast address", mac)
	}
	return LeaseData{VNI: w.VNI, VtepMAC: mac}, nil
}

// Info is what the vxlan backend states about itself.
var Info = backend.Info{
	Type:         Type,
	TypedLeases:  true,
	Overhead:     overhead,
	Device:       device,
	ValidatePeer: func(l lease.Lease) error { _, err := DecodeLeaseData(l.Attrs.BackendData); return err },
}

// DeviceName is the device of VNI vni: flannel.<VNI>, as upstream.
func DeviceName(vni int) string { return fmt.Sprintf("flannel.%d", vni) }

// device is Info.Device: the VNI of our lease, else of the options, else
// the default 1. Options are read leniently: a diagnosis of a config that
// New would refuse still needs the device the config names.
func device(opts, ownData json.RawMessage, _ bool) string {
	var d struct{ VNI int }
	if json.Unmarshal(ownData, &d) == nil && d.VNI > 0 {
		return DeviceName(d.VNI)
	}
	if json.Unmarshal(opts, &d) == nil && d.VNI > 0 {
		return DeviceName(d.VNI)
	}
	return DeviceName(1)
}

// New validates the options; it touches no kernel state.
func New(cfg backend.Config) (backend.Backend, error) {
	o, err := ParseOptions(cfg.Options)
	if err != nil {
		return nil, err
	}
	if cfg.Network == nil || !cfg.Network.Network.IsValid() || !cfg.Network.Network.Addr().Is4() {
		return nil, errors.New("vxlan: an IPv4 Network is required (IPv6-only networks are not supported yet)")
	}
	return newBackend(cfg, o)
}

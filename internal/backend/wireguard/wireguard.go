// Package wireguard is the encrypted backend: each host's subnet is an
// AllowedIPs entry of a WireGuard peer, so container traffic crosses the
// underlay only inside WireGuard's authenticated encryption.
//
// # Design notes
//
// The contract is upstream's (devices flannel-wg and, in separate mode,
// flannel-wg-v6; ports 51820/51821; lease BackendData
// {"PublicKey":"<base64>","Port":<port>}; device MTU = (MTU or external
// MTU) − 80; the private key generated once into /run/flannel/wgkey), so
// our hosts and upstream's form one mesh.
//
// Upstream needs the kernel module. Init first tries to create the device
// as netlink type wireguard; where the kernel refuses, it runs WireGuard in
// this process instead (golang.zx2c4.com/wireguard: a TUN with GSO/GRO
// offloads and a batched UDP bind), behind the same UAPI socket `wg`
// uses. Both are configured through wgctrl, one code path: the kernel
// over generic netlink, userspace over /var/run/wireguard/<dev>.sock.
// Both speak the same protocol. The choice is logged.
//
// Peers are a desired state: Sync computes one peer per public key
// (endpoint, AllowedIPs, PSK, keepalive), diffs it against what it applied
// and sends only the changes, adds and changes before removals, in one
// ConfigureDevice call; unchanged peers are not touched, so their sessions
// carry on. A peer whose key changed (a rebooted host) is removed, unlike
// upstream, which since v0.26 leaves it behind with empty AllowedIPs.
// Repair re-reads the device and removes peers nobody leases.
//
// A restart keeps the key (the key file), so peers need no update. A
// kernel device is adopted with its sessions. A userspace device dies with
// its process; the new one starts a handshake with every peer as soon as
// it is configured (a keepalive, by turning the persistent keepalive on
// for a moment), because a peer that still holds a session with the old
// process would otherwise send into it, unanswered, for up to 15 seconds.
//
// Modes: separate (default) runs one device per address family, each on
// its own port and advertised in that family's BackendData; auto, ipv4
// and ipv6 run one device on ListenPort carrying both families, the
// endpoint chosen by family (auto prefers a public address). Upstream
// advertises ListenPortV6 in BackendV6Data in those modes though its
// one device listens on ListenPort, so a v6 endpoint never handshakes
// unless both ports are equal; we advertise the port we listen on in both,
// and in one-device modes read a peer's port from its v4 BackendData
// first, which upstream fills correctly.
package wireguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/flannel-go/flannel/internal/backend"
	"github.com/flannel-go/flannel/internal/lease"
)

const (
	// Type is the backend's name in the config and in leases.
	Type = "wireguard"
	// DeviceV4 and DeviceV6 are upstream's device names; DeviceV4 is the
	// only device in the one-device modes.
	DeviceV4 = "flannel-wg"
	DeviceV6 = "flannel-wg-v6"
	// DefaultPort and DefaultPortV6 are upstream's listen ports.
	DefaultPort   = 51820
	DefaultPortV6 = 51821
	// DefaultKeyFile keeps the private key, as upstream; KeyFileEnv
	// overrides it (flanneld's main reads it into Options.KeyFile).
	DefaultKeyFile = "/run/flannel/wgkey"
	KeyFileEnv     = "WIREGUARD_KEY_FILE"

	// overhead is upstream's figure for every family: outer IPv6 (40),
	// UDP (8) and WireGuard's header and tag (32).
	overhead = 80
	minMTU   = 68 // the smallest MTU an IPv4 link may have
)

// Mode says how many devices carry which address family.
type Mode string

const (
	ModeSeparate Mode = "separate" // flannel-wg for IPv4, flannel-wg-v6 for IPv6
	ModeAuto     Mode = "auto"     // one device; endpoint family: public address first
	ModeIPv4     Mode = "ipv4"     // one device; endpoints over IPv4
	ModeIPv6     Mode = "ipv6"     // one device; endpoints over IPv6
)

// Config is the wireguard keys of the config's Backend object, decoded.
type Config struct {
	ListenPort   int
	ListenPortV6 int
	PSK          *wgtypes.Key // nil: no preshared key
	MTU          int          // underlay MTU to subtract the overhead from; 0 = external interface's
	Mode         Mode
	Keepalive    time.Duration // PersistentKeepaliveInterval; 0 = off
}

// rawConfig is the Backend object on the wire. Keys match
// case-insensitively, as upstream's encoding/json does; Type and unknown
// keys are ignored.
type rawConfig struct {
	ListenPort                  *int
	ListenPortV6                *int
	PSK                         string
	MTU                         int
	Mode                        string
	PersistentKeepaliveInterval int64 // seconds, as upstream decodes it ("25s" is an error)
}

// ParseConfig decodes and validates the Backend object. Errors name the
// key and the bad value (a PSK's value is never printed: it is a secret).
func ParseConfig(raw json.RawMessage) (Config, error) {
	var r rawConfig
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &r); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) && te.Field != "" {
				return Config{}, fmt.Errorf("wireguard: option %s: %s is not a valid %s", te.Field, te.Value, kindOf(te.Type))
			}
			return Config{}, fmt.Errorf("wireguard: backend options: %w", err)
		}
	}
	c := Config{ListenPort: DefaultPort, ListenPortV6: DefaultPortV6, MTU: r.MTU, Mode: ModeSeparate}
	if r.ListenPort != nil {
		c.ListenPort = *r.ListenPort
	}
	if r.ListenPortV6 != nil {
		c.ListenPortV6 = *r.ListenPortV6
	}
	switch {
	case c.ListenPort < 1 || c.ListenPort > 65535:
		return Config{}, fmt.Errorf("wireguard: option ListenPort: %d is out of range 1..65535", c.ListenPort)
	case c.ListenPortV6 < 1 || c.ListenPortV6 > 65535:
		return Config{}, fmt.Errorf("wireguard: option ListenPortV6: %d is out of range 1..65535", c.ListenPortV6)
	case c.MTU < 0 || c.MTU > 65535:
		return Config{}, fmt.Errorf("wireguard: option MTU: %d is out of range 0..65535", c.MTU)
	case c.MTU != 0 && c.MTU-overhead < minMTU:
		return Config{}, fmt.Errorf("wireguard: option MTU: %d leaves %d after the %d-byte WireGuard overhead, less than the IPv4 minimum %d",
			c.MTU, c.MTU-overhead, overhead, minMTU)
	case r.PersistentKeepaliveInterval < 0 || r.PersistentKeepaliveInterval > 65535:
		return Config{}, fmt.Errorf("wireguard: option PersistentKeepaliveInterval: %d is out of range 0..65535 (seconds)", r.PersistentKeepaliveInterval)
	}
	c.Keepalive = time.Duration(r.PersistentKeepaliveInterval) * time.Second
	switch m := Mode(r.Mode); m {
	case "":
	case ModeSeparate, ModeAuto, ModeIPv4, ModeIPv6:
		c.Mode = m
	default:
		return Config{}, fmt.Errorf("wireguard: option Mode: %q is not one of separate, auto, ipv4, ipv6", r.Mode)
	}
	if r.PSK != "" {
		k, err := wgtypes.ParseKey(r.PSK)
		if err != nil {
			return Config{}, errors.New("wireguard: option PSK: not a WireGuard key (32 bytes in base64, as `wg genpsk` prints)")
		}
		c.PSK = &k
	}
	return c, nil
}

func kindOf(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int64:
		return "integer"
	}
	return t.String()
}

// LeaseData is the BackendData (and BackendV6Data) of a wireguard lease:
// the host's public key and the port its device for that family listens
// on. Port 0 means the lease did not say (older upstream), and a peer
// uses its own port.
type LeaseData struct {
	PublicKey wgtypes.Key
	Port      int
}

// wireLeaseData is LeaseData on the wire, upstream's field names and
// order: {"PublicKey":"…","Port":51820}.
type wireLeaseData struct {
	PublicKey string `json:"PublicKey"`
	Port      int    `json:"Port,omitempty"`
}

// Encode returns d in upstream's format.
func (d LeaseData) Encode() json.RawMessage {
	b, err := json.Marshal(wireLeaseData{PublicKey: d.PublicKey.String(), Port: d.Port})
	if err != nil {
		panic(err) // a string and an int always marshal
	}
	return b
}

// DecodeLeaseData reads a lease's BackendData or BackendV6Data. The key
// must be 32 bytes of base64 and not all zero (an all-zero key is what an
// unset key looks like, and WireGuard refuses it).
func DecodeLeaseData(raw json.RawMessage) (LeaseData, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return LeaseData{}, errors.New("no BackendData")
	}
	var w wireLeaseData
	if err := json.Unmarshal(raw, &w); err != nil {
		return LeaseData{}, fmt.Errorf("BackendData: %w", err)
	}
	if w.PublicKey == "" {
		return LeaseData{}, errors.New("BackendData has no PublicKey")
	}
	k, err := wgtypes.ParseKey(w.PublicKey)
	if err != nil {
		return LeaseData{}, fmt.Errorf("BackendData: PublicKey %q is not a WireGuard key (32 bytes in base64)", w.PublicKey)
	}
	if k == (wgtypes.Key{}) {
		return LeaseData{}, errors.New("BackendData: PublicKey is all zeros")
	}
	if w.Port < 0 || w.Port > 65535 {
		return LeaseData{}, fmt.Errorf("BackendData: Port %d is out of range 1..65535", w.Port)
	}
	return LeaseData{PublicKey: k, Port: w.Port}, nil
}

// validatePeer is Info.ValidatePeer: every BackendData the lease carries
// must decode, and at least one must be there.
func validatePeer(l lease.Lease) error {
	has4, has6 := len(l.Attrs.BackendData) > 0, len(l.Attrs.BackendV6Data) > 0
	if !has4 && !has6 {
		return errors.New("no BackendData: a wireguard lease needs a PublicKey")
	}
	if has4 {
		if _, err := DecodeLeaseData(l.Attrs.BackendData); err != nil {
			return err
		}
	}
	if has6 {
		if _, err := DecodeLeaseData(l.Attrs.BackendV6Data); err != nil {
			return fmt.Errorf("BackendV6Data: %w", err)
		}
	}
	return nil
}

// Info is what the wireguard backend states about itself.
var Info = backend.Info{
	Type:         Type,
	TypedLeases:  true,
	Overhead:     overhead,
	Device:       infoDevice,
	ValidatePeer: validatePeer,
}

// infoDevice is Info.Device: the first of Devices, so flannel-wg-v6 in
// separate mode on an IPv6-only network. Options that do not parse are
// taken as the defaults (separate mode).
func infoDevice(opts, _ json.RawMessage, ipv4 bool) string {
	c, err := ParseConfig(opts)
	if err != nil {
		c.Mode = ModeSeparate
	}
	return Devices(c.Mode, ipv4, !ipv4)[0]
}

// Devices returns the devices a config runs, IPv4's (or the only one)
// first, for the doctor and tests: flannel-wg, plus flannel-wg-v6 in
// separate mode when IPv6 is on.
func Devices(mode Mode, ipv4, ipv6 bool) []string {
	if mode != ModeSeparate && mode != "" {
		return []string{DeviceV4}
	}
	var out []string
	if ipv4 {
		out = append(out, DeviceV4)
	}
	if ipv6 {
		out = append(out, DeviceV6)
	}
	return out
}

// Options are the wireguard backend's settings that flanneld's main
// decides from its environment. The zero value uses DefaultKeyFile.
type Options struct {
	// KeyFile is where the private key is kept (WIREGUARD_KEY_FILE);
	// "" means DefaultKeyFile.
	KeyFile string
}

// New validates the config; it touches no kernel state and reads no key.
// It is a backend.Factory.
func (o Options) New(cfg backend.Config) (backend.Backend, error) {
	c, err := ParseConfig(cfg.Options)
	if err != nil {
		return nil, err
	}
	if cfg.Network == nil {
		return nil, errors.New("wireguard: no network config")
	}
	v4 := cfg.Network.Network.IsValid() // netconf sets it only when EnableIPv4
	v6 := cfg.Network.EnableIPv6 && cfg.Network.IPv6Network.IsValid()
	if !v4 && !v6 {
		return nil, errors.New("wireguard: the network config enables no address family")
	}
	if c.Mode == ModeIPv6 && !v6 {
		return nil, errors.New("wireguard: option Mode: \"ipv6\" needs EnableIPv6 and an IPv6Network (the endpoints are IPv6 addresses)")
	}
	if c.Mode == ModeIPv4 && !v4 {
		return nil, errors.New("wireguard: option Mode: \"ipv4\" needs an IPv4 Network (the endpoints are IPv4 addresses)")
	}
	keyFile := o.KeyFile
	if keyFile == "" {
		keyFile = DefaultKeyFile
	}
	return newBackend(cfg, c, keyFile, v4, v6)
}

// networks returns the config's networks, by family.
func networks(v4, v6 bool, n4, n6 netip.Prefix) (out []netip.Prefix) {
	if v4 {
		out = append(out, n4.Masked())
	}
	if v6 {
		out = append(out, n6.Masked())
	}
	return out
}

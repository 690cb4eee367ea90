package udp

import (
	"encoding/json"
	"fmt"
	"strings"
)

// DefaultPort is upstream's default UDP port for the udp backend.
const DefaultPort = 8285

// offloadEnv names the environment variable that switches offloads off.
const offloadEnv = "FLANNEL_UDP_OFFLOAD"

type offloadSet struct {
	tun, gso, gro bool
}

var allOffloads = offloadSet{tun: true, gso: true, gro: true}

// parsePort reads the backend's one option, Port, from the Backend object
// of the network config. Keys match case-insensitively and unknown keys are
// ignored, as upstream.
func parsePort(raw json.RawMessage) (uint16, error) {
	if len(raw) == 0 {
		return DefaultPort, nil
	}
	// encoding/json matches field names case-insensitively.
	var o struct{ Port *int64 }
	if err := json.Unmarshal(raw, &o); err != nil {
		return 0, fmt.Errorf("udp: backend options: %w", err)
	}
	if o.Port == nil {
		return DefaultPort, nil
	}
	if p := *o.Port; p < 1 || p > 65535 {
		return 0, fmt.Errorf("udp: option Port: %d is not a port number (1..65535)", p)
	}
	return uint16(*o.Port), nil
}

// parseOffloads reads FLANNEL_UDP_OFFLOAD (see the package doc).
func parseOffloads(v string) (offloadSet, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "on":
		return allOffloads, nil
	case "off":
		return offloadSet{}, nil
	}
	var s offloadSet
	for _, f := range strings.Split(v, ",") {
		switch strings.ToLower(strings.TrimSpace(f)) {
		case "tun":
			s.tun = true
		case "gso":
			s.gso = true
		case "gro":
			s.gro = true
		default:
			return s, fmt.Errorf("udp: %s=%q: unknown offload %q (want on, off or a list of tun, gso, gro)", offloadEnv, v, f)
		}
	}
	return s, nil
}

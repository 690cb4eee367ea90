// Package confine reproduces, without systemd, the confinement a systemd
// unit file asks for, so tests run flanneld the way dist/flanneld.service
// runs it and follow that file when it changes. It reads the [Service]
// section and builds a command line of util-linux tools: unshare for a
// mount (and UTS) namespace, mount for the read-only and hidden paths,
// setpriv for the capability bounding set and no_new_privs.
package confine

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Unit is the confinement of one unit's [Service] section.
type Unit struct {
	// Caps is CapabilityBoundingSet: capability names as setpriv spells
	// them ("net_admin"); nil when the unit does not restrict them.
	Caps                  []string
	NoNewPrivileges       bool
	ProtectKernelTunables bool
	ProtectKernelModules  bool
	ProtectControlGroups  bool
	ProtectHostname       bool
	PrivateTmp            bool
	ProtectSystem         string // "", "yes", "full" ("strict" is refused)
	ProtectHome           string // "", "yes", "read-only", "tmpfs"
	// AddressFamilies is RestrictAddressFamilies ("AF_INET", ...): nil
	// when unrestricted, empty for "none". Reproduced only when Helper
	// names a built afexec (internal/lab/confine/afexec), which needs a
	// seccomp filter no util-linux tool sets up.
	AddressFamilies []string
	Helper          string

	// NotEmulated lists the confining directives that were read but are
	// not reproduced (most need a seccomp filter), as "Name=value".
	NotEmulated []string
}

// notEmulated are confining directives Parse accepts without reproducing
// them: systemd implements them with seccomp filters, the cgroup device
// controller or kernel log access rules that util-linux tools cannot set
// up. None of them is what a backend trips over (the e2e tests would
// show it): capabilities and read-only paths are.
var notEmulated = []string{
	"RestrictNamespaces", "RestrictRealtime",
	"RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute",
	"SystemCallArchitectures", "SystemCallFilter", "ProtectClock",
	"ProtectKernelLogs", "DevicePolicy", "DeviceAllow",
}

// plain are [Service] directives that do not confine the program.
var plain = []string{
	"Type", "Environment", "EnvironmentFile", "ExecStart", "ExecStartPre",
	"ExecStartPost", "ExecStop", "ExecReload", "Restart", "RestartSec",
	"TimeoutStartSec", "TimeoutStopSec", "KillMode", "NotifyAccess",
	"LimitNOFILE", "WatchdogSec",
}

// Parse reads a unit file. A [Service] directive it does not know is an
// error, so a new hardening line in the unit cannot be silently skipped
// by the tests: teach this package whether it confines.
func Parse(r io.Reader) (Unit, error) {
	var u Unit
	section := ""
	sc := bufio.NewScanner(r)
	line := ""
	n := 0
	for sc.Scan() {
		n++
		text := strings.TrimSpace(sc.Text())
		if line == "" && (text == "" || text[0] == '#' || text[0] == ';') {
			continue
		}
		if cont, ok := strings.CutSuffix(text, "\\"); ok {
			line += cont + " "
			continue
		}
		line += text
		text, line = line, ""
		if strings.HasPrefix(text, "[") {
			if !strings.HasSuffix(text, "]") {
				return Unit{}, fmt.Errorf("line %d: bad section header %q", n, text)
			}
			section = text[1 : len(text)-1]
			continue
		}
		key, val, ok := strings.Cut(text, "=")
		if !ok {
			return Unit{}, fmt.Errorf("line %d: not a Key=value line: %q", n, text)
		}
		if section != "Service" {
			continue
		}
		if err := u.set(strings.TrimSpace(key), strings.TrimSpace(val)); err != nil {
			return Unit{}, fmt.Errorf("line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return Unit{}, err
	}
	return u, nil
}

func (u *Unit) set(key, val string) error {
	var err error
	switch key {
	case "CapabilityBoundingSet":
		u.Caps, err = parseCaps(u.Caps, val)
	case "NoNewPrivileges":
		u.NoNewPrivileges, err = parseBool(key, val)
	case "ProtectKernelTunables":
		u.ProtectKernelTunables, err = parseBool(key, val)
	case "ProtectKernelModules":
		u.ProtectKernelModules, err = parseBool(key, val)
	case "ProtectControlGroups":
		u.ProtectControlGroups, err = parseBool(key, val)
	case "ProtectHostname":
		u.ProtectHostname, err = parseBool(key, val)
	case "PrivateTmp":
		u.PrivateTmp, err = parseBool(key, val)
	case "ProtectSystem":
		u.ProtectSystem, err = parseChoice(key, val, "yes", "full")
	case "RestrictAddressFamilies":
		switch {
		case val == "none":
			u.AddressFamilies = []string{}
		case strings.HasPrefix(val, "~"):
			u.NotEmulated = append(u.NotEmulated, key+"="+val)
		default:
			u.AddressFamilies = append(u.AddressFamilies, strings.Fields(val)...)
		}
	case "ProtectHome":
		u.ProtectHome, err = parseChoice(key, val, "yes", "read-only", "tmpfs")
	default:
		switch {
		case slices.Contains(notEmulated, key):
			u.NotEmulated = append(u.NotEmulated, key+"="+val)
		case slices.Contains(plain, key):
		default:
			return fmt.Errorf("unknown [Service] directive %s: say in internal/lab/confine whether and how it confines", key)
		}
	}
	return err
}

// parseCaps applies one CapabilityBoundingSet line to the set so far
// (nil: everything). "CAP_A CAP_B" keeps only those (lines add up);
// "~CAP_A" removes them.
func parseCaps(have []string, val string) ([]string, error) {
	invert := strings.HasPrefix(val, "~")
	var caps []string
	for _, f := range strings.Fields(strings.TrimPrefix(val, "~")) {
		c, ok := strings.CutPrefix(strings.ToUpper(f), "CAP_")
		if !ok || c == "" {
			return nil, fmt.Errorf("CapabilityBoundingSet: %q is not a capability", f)
		}
		caps = append(caps, strings.ToLower(c))
	}
	if invert {
		// Only the removal of named capabilities from the full set can
		// be told to setpriv, and only as long as nothing was kept yet.
		if have != nil {
			return nil, fmt.Errorf("CapabilityBoundingSet: ~ after a positive list is not supported")
		}
		out := []string{}
		for _, c := range caps {
			out = append(out, "-"+c)
		}
		return out, nil
	}
	if val == "" {
		return []string{}, nil
	}
	return append(slices.Clone(have), caps...), nil
}

func parseBool(key, val string) (bool, error) {
	switch strings.ToLower(val) {
	case "1", "yes", "true", "on":
		return true, nil
	case "0", "no", "false", "off", "":
		return false, nil
	}
	return false, fmt.Errorf("%s=%s: not a boolean", key, val)
}

// parseChoice returns "" for false, "yes" for true, or one of choices.
func parseChoice(key, val string, choices ...string) (string, error) {
	if slices.Contains(choices, val) {
		return val, nil
	}
	b, err := parseBool(key, val)
	if err != nil {
		return "", fmt.Errorf("%s=%s: not one of yes, no, %s (others are not emulated)", key, val, strings.Join(choices[1:], ", "))
	}
	if b {
		return "yes", nil
	}
	return "", nil
}

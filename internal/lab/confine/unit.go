// Package confine reproduces, without systemd, the confinement a systemd
// unit file asks for, so tests run flanneld the way dist/flanneld.service
// runs it and follow that file when it changes. It reads the [Service]
// section (of the unit and of its drop-ins, merged as systemd merges them)
// and builds a command line of util-linux tools: unshare for a
// mount (and UTS) namespace, mount for the read-only and hidden paths,
// setpriv for the capability bounding set and no_new_privs.
package confine

import (
	"bufio"
	"fmt"
	"io"
	"path/filepath"
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
	// ReadWritePaths are made writable again after the read-only mounts
	// (systemd mounts the more specific path last, so a path under a
	// read-only one wins). A leading "-" means "if it exists".
	ReadWritePaths []string
	// Env is what Environment= lines set ("NAME=value"), in order.
	Env []string

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
	"Type", "EnvironmentFile", "ExecStart", "ExecStartPre",
	"ExecStartPost", "ExecStop", "ExecReload", "Restart", "RestartSec",
	"TimeoutStartSec", "TimeoutStopSec", "KillMode", "NotifyAccess",
	"LimitNOFILE", "WatchdogSec",
}

// Parse reads a unit file and then its drop-ins, in the order given
// (systemd's: by file name), applying each drop-in on top as systemd
// merges them: a later scalar setting wins, list-valued directives
// (CapabilityBoundingSet, RestrictAddressFamilies, ReadWritePaths,
// Environment) add up, and an empty assignment resets a list. A [Service]
// directive it does not know is an error, so a new hardening line in the
// unit cannot be silently skipped by the tests: teach this package
// whether it confines.
func Parse(unit io.Reader, dropIns ...io.Reader) (Unit, error) {
	var u Unit
	if err := u.apply(unit); err != nil {
		return Unit{}, err
	}
	for i, d := range dropIns {
		if err := u.apply(d); err != nil {
			return Unit{}, fmt.Errorf("drop-in %d: %w", i+1, err)
		}
	}
	return u, nil
}

// apply reads one unit file or drop-in into u.
func (u *Unit) apply(r io.Reader) error {
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
				return fmt.Errorf("line %d: bad section header %q", n, text)
			}
			section = text[1 : len(text)-1]
			continue
		}
		key, val, ok := strings.Cut(text, "=")
		if !ok {
			return fmt.Errorf("line %d: not a Key=value line: %q", n, text)
		}
		if section != "Service" {
			continue
		}
		if err := u.set(strings.TrimSpace(key), strings.TrimSpace(val)); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
	}
	return sc.Err()
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
		case val == "":
			u.AddressFamilies = nil
		case val == "none":
			u.AddressFamilies = []string{}
		case strings.HasPrefix(val, "~"):
			u.NotEmulated = append(u.NotEmulated, key+"="+val)
		default:
			u.AddressFamilies = append(u.AddressFamilies, strings.Fields(val)...)
		}
	case "ReadWritePaths":
		if val == "" {
			u.ReadWritePaths = nil
			break
		}
		for _, p := range strings.Fields(val) {
			if !filepath.IsAbs(strings.TrimLeft(p, "-+")) {
				return fmt.Errorf("ReadWritePaths: %q is not an absolute path", p)
			}
			if strings.HasPrefix(p, "+") {
				return fmt.Errorf("ReadWritePaths: %q: \"+\" (outside RootDirectory=) is not emulated", p)
			}
		}
		u.ReadWritePaths = append(u.ReadWritePaths, strings.Fields(val)...)
	case "Environment":
		if val == "" {
			u.Env = nil
			break
		}
		words, err := splitQuoted(val)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		for _, w := range words {
			if name, _, ok := strings.Cut(w, "="); !ok || name == "" {
				return fmt.Errorf("%s: %q is not NAME=value", key, w)
			}
		}
		u.Env = append(u.Env, words...)
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
		if len(have) > 0 && strings.HasPrefix(have[0], "-") {
			for _, c := range caps {
				if !slices.Contains(have, "-"+c) {
					have = append(have, "-"+c)
				}
			}
			return have, nil
		}
		if have != nil {
			// A kept list minus the named capabilities.
			return slices.DeleteFunc(slices.Clone(have), func(c string) bool { return slices.Contains(caps, c) }), nil
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
	if len(have) > 0 && strings.HasPrefix(have[0], "-") {
		// Everything but some, plus some: everything but the rest.
		out := slices.DeleteFunc(slices.Clone(have), func(c string) bool { return slices.Contains(caps, c[1:]) })
		if len(out) == 0 {
			return nil, nil // nothing dropped any more
		}
		return out, nil
	}
	out := slices.Clone(have)
	for _, c := range caps {
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// splitQuoted splits an Environment= value into its assignments: words
// separated by spaces, where double or single quotes keep spaces in and a
// backslash escapes the next character inside double quotes or outside
// quotes (systemd.syntax(7), without C escapes like \n).
func splitQuoted(val string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	escaped := false
	for _, r := range val {
		switch {
		case escaped:
			w.WriteRune(r)
			escaped = false
		case r == '\\' && quote != '\'':
			escaped, inWord = true, true
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || escaped {
		return nil, fmt.Errorf("unterminated quote or escape in %q", val)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
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

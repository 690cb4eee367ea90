package confine

import (
	"fmt"
	"path/filepath"
	"strings"
)

// What systemd makes read-only or hides for each directive (systemd.exec(5)),
// as far as it matters here.
var (
	tunablePaths = []string{"/proc/sys", "/sys", "/proc/sysrq-trigger", "/proc/latency_stats",
		"/proc/acpi", "/proc/timer_stats", "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq"}
	modulePaths = []string{"/usr/lib/modules", "/lib/modules"}
	homePaths   = []string{"/home", "/root", "/run/user"}
	tmpPaths    = []string{"/tmp", "/var/tmp"}
)

// shellLib defines ro (make paths and every mount below them read-only)
// and hide (cover directories with an empty, inaccessible tmpfs).
const shellLib = `set -e
ro() {
	for p; do
		[ -e "$p" ] || continue
		mountpoint -q "$p" || mount --rbind "$p" "$p"
		findmnt -R -n -r -o TARGET --mountpoint "$p" | while read -r m; do
			mount -o remount,bind,ro "$m"
		done
	done
}
rw() {
	for p; do
		case $p in
		-*) p=${p#-}; [ -e "$p" ] || continue ;;
		*) [ -e "$p" ] || { echo "confine: ReadWritePaths: $p does not exist" >&2; exit 1; } ;;
		esac
		mountpoint -q "$p" || mount --rbind "$p" "$p"
		findmnt -R -n -r -o TARGET --mountpoint "$p" | while read -r m; do
			mount -o remount,bind,rw "$m"
		done
	done
}
hide() {
	for p; do
		[ -d "$p" ] && ! [ -L "$p" ] || continue
		mount -t tmpfs -o ro,mode=000 confine-hidden "$p"
	done
}
`

// Command returns the command line that runs argv under the confinement:
//
//	unshare -m [-u] -- sh -c '<mounts>; exec setpriv ... -- "$@"' confine argv...
//
// It must run as root, in the network namespace flanneld is to use.
// argv[0] must be an absolute path the confinement leaves visible (not
// under /tmp with PrivateTmp, as flanneld is not when installed).
func (u Unit) Command(argv []string) ([]string, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("confine: no program")
	}
	pre, err := u.Prefix(argv[0])
	if err != nil {
		return nil, err
	}
	return append(pre, argv...), nil
}

// Prefix is Command's result without the program's own command line, to
// put in front of it (lab.Options.FlanneldWrap). program is checked as
// Command checks argv[0].
func (u Unit) Prefix(program string) ([]string, error) {
	if !filepath.IsAbs(program) {
		return nil, fmt.Errorf("confine: the program must be an absolute path, got %q", program)
	}
	if u.PrivateTmp && under(program, tmpPaths) {
		return nil, fmt.Errorf("confine: %s would be hidden by PrivateTmp; install it elsewhere", program)
	}
	if u.ProtectHome != "" && u.ProtectHome != "read-only" && under(program, homePaths) {
		return nil, fmt.Errorf("confine: %s would be hidden by ProtectHome=%s", program, u.ProtectHome)
	}
	if u.AddressFamilies != nil && u.Helper != "" {
		if !filepath.IsAbs(u.Helper) || (u.PrivateTmp && under(u.Helper, tmpPaths)) {
			return nil, fmt.Errorf("confine: the helper %q must be an absolute path outside /tmp", u.Helper)
		}
		if _, err := FamilyNumbers(u.AddressFamilies); err != nil {
			return nil, fmt.Errorf("confine: RestrictAddressFamilies: %w", err)
		}
	}
	var sh strings.Builder
	sh.WriteString(shellLib)
	line := func(cmd string, paths []string) {
		fmt.Fprintf(&sh, "%s %s\n", cmd, strings.Join(paths, " "))
	}
	if u.PrivateTmp {
		for _, p := range tmpPaths {
			fmt.Fprintf(&sh, "mount -t tmpfs -o mode=1777 confine-tmp %s\n", p)
		}
	}
	switch u.ProtectHome {
	case "read-only":
		line("ro", homePaths)
	case "yes", "tmpfs":
		line("hide", homePaths)
	}
	switch u.ProtectSystem {
	case "yes":
		line("ro", []string{"/usr", "/boot", "/efi"})
	case "full":
		line("ro", []string{"/usr", "/boot", "/efi", "/etc"})
	}
	if u.ProtectKernelModules {
		line("hide", modulePaths)
	}
	if u.ProtectKernelTunables {
		line("ro", tunablePaths)
	}
	if u.ProtectControlGroups {
		line("ro", []string{"/sys/fs/cgroup"})
	}
	if len(u.ReadWritePaths) > 0 {
		// Last, as systemd mounts the more specific paths last.
		line("rw", u.ReadWritePaths)
	}
	for _, e := range u.Env {
		fmt.Fprintf(&sh, "export %s\n", shellQuote(e))
	}
	sh.WriteString("exec setpriv")
	if u.Caps != nil {
		fmt.Fprintf(&sh, " --bounding-set %s", u.boundingSet())
	}
	if u.NoNewPrivileges {
		sh.WriteString(" --no-new-privs")
	}
	sh.WriteString(" --")
	if u.AddressFamilies != nil && u.Helper != "" {
		fams := strings.Join(u.AddressFamilies, ",")
		if fams == "" {
			fams = "none"
		}
		fmt.Fprintf(&sh, " %s %s", u.Helper, fams)
	}
	sh.WriteString(` "$@"` + "\n")

	cmd := []string{"unshare", "-m"}
	if u.ProtectHostname {
		cmd = append(cmd, "-u")
	}
	return append(cmd, "--", "sh", "-c", sh.String(), "confine"), nil
}

// boundingSet is setpriv's --bounding-set argument: "-all,+net_admin,..."
// for a list of capabilities to keep, "-sys_admin,..." for a list to drop.
func (u Unit) boundingSet() string {
	if len(u.Caps) > 0 && strings.HasPrefix(u.Caps[0], "-") {
		return strings.Join(u.Caps, ",")
	}
	parts := []string{"-all"}
	for _, c := range u.Caps {
		parts = append(parts, "+"+c)
	}
	return strings.Join(parts, ",")
}

// shellQuote quotes s as one sh word.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func under(path string, dirs []string) bool {
	for _, d := range dirs {
		if path == d || strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
}

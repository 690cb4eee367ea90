package confine

import (
	"fmt"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// families are the address family names RestrictAddressFamilies takes,
// as far as flanneld's tests need them.
var families = map[string]uint32{
	"AF_UNIX": unix.AF_UNIX, "AF_LOCAL": unix.AF_UNIX, "AF_INET": unix.AF_INET,
	"AF_INET6": unix.AF_INET6, "AF_NETLINK": unix.AF_NETLINK, "AF_PACKET": unix.AF_PACKET,
	"AF_ALG": unix.AF_ALG, "AF_XDP": unix.AF_XDP, "AF_VSOCK": unix.AF_VSOCK,
}

// FamilyNumbers turns names ("AF_INET") into numbers.
func FamilyNumbers(names []string) ([]uint32, error) {
	out := make([]uint32, 0, len(names))
	for _, n := range names {
		f, ok := families[strings.ToUpper(n)]
		if !ok {
			return nil, fmt.Errorf("unknown address family %q", n)
		}
		out = append(out, f)
	}
	return out, nil
}

// auditArch is the AUDIT_ARCH_* of the architecture this runs on.
func auditArch() (uint32, error) {
	switch runtime.GOARCH {
	case "amd64":
		return unix.AUDIT_ARCH_X86_64, nil
	case "arm64":
		return unix.AUDIT_ARCH_AARCH64, nil
	}
	return 0, fmt.Errorf("no seccomp architecture known for %s", runtime.GOARCH)
}

// familyFilter is a seccomp program that makes socket(2) fail with
// EAFNOSUPPORT for a family not in allow, as systemd's
// RestrictAddressFamilies= does, and lets every other call through.
func familyFilter(allow []uint32) ([]unix.SockFilter, error) {
	arch, err := auditArch()
	if err != nil {
		return nil, err
	}
	const (
		allowRet = unix.SECCOMP_RET_ALLOW
		deny     = unix.SECCOMP_RET_ERRNO | uint32(unix.EAFNOSUPPORT)
	)
	// struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low
	// 32 bits on a little-endian machine, which both arches above are).
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: arch, SkipTrue: 1},
		bpf.RetConstant{Val: allowRet},
		bpf.LoadAbsolute{Off: 0, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_SOCKET, SkipTrue: 1},
		bpf.RetConstant{Val: allowRet},
		bpf.LoadAbsolute{Off: 16, Size: 4},
	}
	for _, f := range allow {
		prog = append(prog,
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: f, SkipTrue: 1},
			bpf.RetConstant{Val: allowRet})
	}
	prog = append(prog, bpf.RetConstant{Val: deny})
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, err
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// ExecRestricted sets no_new_privs, installs the family filter on the
// calling thread and replaces the process with argv (looked up as given:
// an absolute path), which inherits the filter. It returns only on error.
func ExecRestricted(allow []uint32, argv []string, env []string) error {
	filter, err := familyFilter(allow)
	if err != nil {
		return err
	}
	// The filter is per thread until exec; exec from the same thread.
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		return fmt.Errorf("seccomp filter: %w", err)
	}
	return unix.Exec(argv[0], argv, env)
}

package backend

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// NeedPermission turns a refusal by the kernel into one line that says
// which backend wanted what, e.g.
//
//	udp backend needs CAP_NET_ADMIN and /dev/net/tun: open /dev/net/tun: operation not permitted
//
// so that a confined flanneld (systemd's CapabilityBoundingSet and
// ProtectKernelTunables, a container without privileges) tells the
// operator what to grant instead of a bare errno. Other errors, and nil,
// come back unchanged; the result still matches the original with
// errors.Is.
func NeedPermission(backendType, what string, err error) error {
	if !IsPermission(err) {
		return err
	}
	return fmt.Errorf("%s backend needs %s: %w", backendType, what, err)
}

// IsPermission says whether err is the kernel refusing for lack of a
// capability or of write access: EPERM, EACCES or EROFS.
func IsPermission(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) ||
		errors.Is(err, syscall.EROFS) || errors.Is(err, fs.ErrPermission)
}

package backend

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"testing"
)

func TestNeedPermission(t *testing.T) {
	open := &fs.PathError{Op: "open", Path: "/dev/net/tun", Err: syscall.EPERM}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"EPERM", fmt.Errorf("udp: %w", open), "udp backend needs CAP_NET_ADMIN and /dev/net/tun: udp: open /dev/net/tun: operation not permitted"},
		{"EACCES", syscall.EACCES, "udp backend needs CAP_NET_ADMIN and /dev/net/tun: permission denied"},
		{"EROFS", syscall.EROFS, "udp backend needs CAP_NET_ADMIN and /dev/net/tun: read-only file system"},
		{"other", syscall.ENODEV, "no such device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NeedPermission("udp", "CAP_NET_ADMIN and /dev/net/tun", tc.err)
			if got.Error() != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			if !errors.Is(got, tc.err) {
				t.Error("the result no longer matches the original error")
			}
		})
	}
	if NeedPermission("udp", "x", nil) != nil {
		t.Error("nil became an error")
	}
}

package proc

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// StopPinned signals pid and waits for it to exit, escalating to SIGKILL
// after timeout, but only if owned(pid) still holds once a pidfd pins the
// process. PIDs wrap quickly here (pid_max 32768, tests start thousands of
// short `ip` commands), so a number read from /proc a moment ago may name
// someone else's process by now; a pidfd cannot change its process, and the
// check made after opening it tells whether it is the one we meant.
func StopPinned(pid int, owned func(int) bool, sig syscall.Signal, timeout time.Duration) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone
	}
	defer unix.Close(fd)
	if !owned(pid) {
		return
	}
	if unix.PidfdSendSignal(fd, sig, nil, 0) != nil {
		return
	}
	for !exited(fd, timeout) {
		_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	}
}

// exited waits up to timeout for the pidfd's process to exit.
func exited(fd int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return false
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		return err != nil || n > 0
	}
}

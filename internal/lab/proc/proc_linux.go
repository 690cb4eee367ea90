// Package proc reads and signals the lab's processes by /proc and pidfds,
// so a PID that was reused since it was read is never signalled.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Stat returns the fields of /proc/PID/stat that follow the command
// name: [0] state, [1] ppid, [11] utime, [12] stime, [19] starttime (see
// proc(5), whose numbering starts 3 higher). The name is skipped by its last
// ')' since it may hold spaces and parentheses.
func Stat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return nil, fmt.Errorf("%d fields", len(f))
	}
	return f, nil
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	f, err := Stat(pid)
	return err == nil && f[0] != "Z" && f[0] != "X"
}

// StartTime is when pid started, in clock ticks since boot: with the PID,
// it names one process for good. "" if pid is gone.
func StartTime(pid int) string {
	f, err := Stat(pid)
	if err != nil {
		return ""
	}
	return f[19]
}

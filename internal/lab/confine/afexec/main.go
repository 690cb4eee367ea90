// Command afexec runs a program with socket(2) restricted to some address
// families, as systemd's RestrictAddressFamilies= does, for the tests that
// run flanneld under dist/flanneld.service's confinement:
//
//	afexec AF_UNIX,AF_INET,AF_INET6,AF_NETLINK /usr/local/bin/flanneld -iface=eth0
//	afexec none PROGRAM    (no socket at all)
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/flannel-go/flannel/internal/lab/confine"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: afexec FAMILY[,FAMILY...] PROGRAM [ARG...]")
		os.Exit(2)
	}
	var names []string
	if os.Args[1] != "none" {
		names = strings.Split(os.Args[1], ",")
	}
	fams, err := confine.FamilyNumbers(names)
	if err == nil {
		err = confine.ExecRestricted(fams, os.Args[2:], os.Environ())
	}
	fmt.Fprintf(os.Stderr, "afexec: %v\n", err)
	os.Exit(1)
}
